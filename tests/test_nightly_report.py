"""Gates and comparison of the nightly report, on figures shaped as the database gives them."""

import dataclasses
import json

from pipeline.nightly import history
from pipeline.nightly.report import assess, breaches, compare, main, render_chart, render_markdown
from pipeline.core.params import load_params
from tests.conftest import REPO

GATES = dataclasses.replace(load_params(REPO / "params.toml").nightly,
                            min_accuracy_float32=0.95, min_accuracy_int8=0.94,
                            max_int8_drift_pt=1.0, max_latency_regression_pct=50.0)


def figures(p50: float, int8_acc: float = 0.975, board_ok: bool = True, case_ok: bool = True,
            emulated: bool = False, verdict: dict | None = None):
    accuracy = [{"build": "b", "variant": "keras", "accuracy": 0.98, "drift_pt": 0.0,
                 "bytes": 100},
                {"build": "b", "variant": "float32", "accuracy": 0.98, "drift_pt": 0.0,
                 "bytes": 40},
                {"build": "b", "variant": "int8", "accuracy": int8_acc,
                 "drift_pt": (int8_acc - 0.98) * 100, "bytes": 10}]
    latency = [{"build": "b", "variant": "int8", "board": "k1", "threads": 1,
                "p50_us": p50 if case_ok else None, "status": "ok" if case_ok else "failed",
                "error": None if case_ok else "invoke failed", **verdict_row(verdict)}]
    boards = [{"board": "k1", "status": "ok" if board_ok else "failed",
               "error": None if board_ok else "unreachable", "emulated": int(emulated)}]
    return history.as_figures(accuracy, boards, latency)


def verdict_row(v: dict | None) -> dict:
    """A verdict as the history database's latency columns give it."""
    if v is None:
        return {}
    return {"ratio": v["ratio"], "ratio_low": v["low"], "ratio_high": v["high"],
            "p_value": v["p"], "word": v["word"], "sha256": "new" * 10,
            "reference_sha256": ("new" if v["word"] == "environment" else "old") * 10}


# Slower, and its interval reaches GATES' 1 + 50 %: a breach.
SLOWER = {"ratio": 1.45, "low": 1.3, "high": 1.6, "p": 1e-5, "word": "slower"}


def gate(current, past):
    return breaches(compare(current, past[-1] if past else None, past, GATES), GATES)


def test_cross_night_p50_is_a_trend_not_a_gate():
    past = [figures(100.0), figures(300.0), figures(110.0)]
    assert gate(figures(1000.0), past) == []  # +809 % vs the median: shown, never gated
    [row] = compare(figures(1000.0), past[-1], past, GATES)["latency"]
    assert row["change_vs_median_pct"] == (1000 / 110 - 1) * 100 and row["mark"] == ""


def test_a_slower_verdict_is_a_breach_naming_the_case_and_its_reference():
    [found] = gate(figures(100.0, verdict=SLOWER), [figures(100.0)])
    assert (found["build"], found["variant"], found["board"], found["figure"]) == (
        "b", "int8", "k1", "latency_ratio")
    assert found["value"] == 1.45
    assert ("b int8 on k1 x1: 1.450x its reference oldoldoldold timed side by side (99 % "
            "interval 1.300-1.600, p=1e-05)") in found["message"]
    assert "nightly.max_latency_regression_pct = 50.0 %" in found["message"]
    # the first night has a verdict too when the reference came from elsewhere
    assert len(breaches(compare(figures(1.0, verdict=SLOWER), None, [], GATES), GATES)) == 1


def test_same_faster_and_environment_verdicts_never_breach():
    for word in ("same", "faster", "environment"):
        assert gate(figures(100.0, verdict={**SLOWER, "word": word, "high": 9.0}),
                    [figures(100.0)]) == [], word


def test_the_first_run_has_no_latency_gate():
    assert breaches(compare(figures(1e6), None, [], GATES), GATES) == []


def test_accuracy_floor_drift_failed_board_and_failed_case_are_each_breaches():
    found = gate(figures(100.0, int8_acc=0.93, board_ok=False, case_ok=False),
                 [figures(100.0)])
    assert {(b["variant"], b["board"], b["figure"]) for b in found} == {
        ("int8", "", "accuracy"), ("int8", "", "drift_pt"), ("", "k1", "board"),
        ("int8", "k1", "case")}
    text = "\n".join(b["message"] for b in found)
    assert "b int8: accuracy 93.00 % is below the minimum 94.00 % (nightly.min_accuracy_int8)" \
        in text
    assert "b int8: 5.00 points below Keras" in text and "board k1: FAILED: unreachable" in text


def test_changes_are_marked_against_previous_and_median():
    before = figures(100.0, int8_acc=0.97)
    rows = compare(figures(100.0, int8_acc=0.95), before, [before], GATES)
    int8 = next(r for r in rows["accuracy"] if r["variant"] == "int8")
    assert abs(int8["accuracy_change_pt"] + 2.0) < 1e-9
    assert "accuracy -2.00 pt vs prev" in int8["mark"]
    assert [r["variant"] for r in rows["accuracy"]] == ["keras", "float32", "int8"]


def test_trend_chart_is_a_png(tmp_path):
    runs = [{"id": i} for i in (1, 2, 3)]
    render_chart(runs, {i: figures(100.0 + i) for i in (1, 2, 3)}, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")


def test_int8_selective_gets_the_int8_floor_at_its_boundary():
    """An integer variant is held to min_accuracy_int8 (it used to get the float32 floor)."""
    gates = dataclasses.replace(GATES, min_accuracy_float32=0.90, min_accuracy_int8=0.95)

    def selective(acc):
        current = figures(100.0, int8_acc=0.98)
        current["accuracy"][("b", "int8_selective")] = {
            "build": "b", "variant": "int8_selective", "accuracy": acc, "drift_pt": -1.5,
            "bytes": 12}
        return breaches(compare(current, None, [], gates), gates)

    assert selective(0.95) == []  # the floor itself passes; drift is not gated for it
    [found] = selective(0.9499)   # above the float32 floor, below the int8 one
    assert (found["variant"], found["figure"]) == ("int8_selective", "accuracy")
    assert "(nightly.min_accuracy_int8)" in found["message"]

# --- every gate at its threshold: equal passes, just beyond breaches --------------------------


def figures_at(int8_acc: float, drift_pt: float, p50: float = 100.0):
    figs = figures(p50, int8_acc=int8_acc)
    figs["accuracy"][("b", "int8")]["drift_pt"] = drift_pt
    return figs


def test_accuracy_exactly_at_the_floor_passes_and_just_below_breaches():
    assert gate(figures_at(0.94, -1.0), [figures(100.0)]) == []
    [found] = gate(figures_at(0.94 - 1e-9, -1.0), [figures(100.0)])
    assert (found["variant"], found["figure"], found["limit"]) == ("int8", "accuracy", ">= 0.94")


def test_float_variants_use_the_float32_floor_and_keras_has_none():
    figs = figures(100.0)
    figs["accuracy"][("b", "float32")]["accuracy"] = 0.949  # floor 0.95
    figs["accuracy"][("b", "keras")]["accuracy"] = 0.10
    [found] = gate(figs, [figures(100.0)])
    assert (found["variant"], found["limit"]) == ("float32", ">= 0.95")
    assert "(nightly.min_accuracy_float32)" in found["message"]


def test_drift_exactly_at_the_limit_passes_and_just_beyond_breaches():
    assert gate(figures_at(0.97, -1.0), [figures(100.0)]) == []
    [found] = gate(figures_at(0.97, -1.0 - 1e-9), [figures(100.0)])
    assert (found["figure"], found["limit"]) == ("drift_pt", ">= -1.0")


def test_the_gate_at_its_interval_boundary():
    import math

    edge = 1 + GATES.max_latency_regression_pct / 100
    at = {**SLOWER, "ratio": 1.3, "low": 1.1, "high": edge}
    assert [b["figure"] for b in gate(figures(100.0, verdict=at), [])] == ["latency_ratio"]
    below = {**at, "high": math.nextafter(edge, 0)}
    assert gate(figures(100.0, verdict=below), []) == []


def test_an_emulated_board_has_no_latency_gate_but_keeps_its_board_and_case_gates():
    past = [figures(100.0, emulated=True), figures(100.0, emulated=True)]
    assert [b["figure"] for b in gate(figures(100.0, verdict=SLOWER), past)] == [
        "latency_ratio"]
    assert gate(figures(100.0, emulated=True, verdict=SLOWER), past) == []
    assert gate(figures(1e6, emulated=True), past) == []
    # A genuinely failed case (a prediction unlike the host's fails it) and a failed board
    # still breach on the emulated board.
    found = gate(figures(100.0, emulated=True, case_ok=False, board_ok=False), past)
    assert {(b["board"], b["figure"]) for b in found} == {("k1", "case"), ("k1", "board")}


def test_nightly_md_and_png_label_an_emulated_board():
    from pipeline.nightly.charts import nightly_figure

    past = [figures(100.0, emulated=True)]
    comparison = compare(figures(300.0, emulated=True, verdict=SLOWER), past[-1], past, GATES)
    text = render_markdown({"id": 2, "status": "ok", "started_utc": "x"}, {"id": 1,
                           "started_utc": "y"}, [1], comparison, [], None)
    assert "| k1 (EMULATED) |" in text
    assert "| 1.450 [1.300, 1.600] p=1e-05 slower | slower than its reference (emulated: " \
        "not gated) |" in text
    assert "- board **k1 (EMULATED)**: its latency is the emulator's" in text
    real = render_markdown({"id": 2, "status": "ok", "started_utc": "x"}, None, [],
                           compare(figures(300.0), None, [], GATES), [], None)
    assert "EMULATED" not in real
    fig = nightly_figure([{"id": 1}, {"id": 2}], {1: past[0], 2: figures(300.0, emulated=True)})
    titles = [ax.get_title() for ax in fig.axes]
    assert "b on k1 (EMULATED): p50 latency" in titles, titles
    fig = nightly_figure([{"id": 1}], {1: figures(100.0)})
    assert "b on k1: p50 latency" in [ax.get_title() for ax in fig.axes]


def test_comparison_values_against_a_direct_computation():
    past = [figures(100.0, int8_acc=0.96), figures(120.0, int8_acc=0.97),
            figures(400.0, int8_acc=0.90)]
    rows = compare(figures(130.0, int8_acc=0.95), past[-1], past, GATES)
    int8 = next(r for r in rows["accuracy"] if r["variant"] == "int8")
    assert int8["accuracy_prev"] == 0.90 and int8["accuracy_median"] == 0.96
    assert abs(int8["accuracy_change_pt"] - 5.0) < 1e-9
    assert abs(int8["accuracy_vs_median_pt"] + 1.0) < 1e-9
    assert "accuracy +5.00 pt vs prev" in int8["mark"]  # a gain is marked too
    [lat] = rows["latency"]
    assert (lat["p50_prev"], lat["p50_median"], lat["runs_in_median"]) == (400.0, 120.0, 3)
    assert abs(lat["change_vs_prev_pct"] - (130 / 400 - 1) * 100) < 1e-9
    assert abs(lat["change_vs_median_pct"] - (130 / 120 - 1) * 100) < 1e-9


# --- boards dropped from the inventory ------------------------------------------------------


def test_a_board_dropped_from_the_inventory_keeps_its_rows_marked_and_is_no_breach():
    before = figures(100.0)
    before["boards"]["k2"] = {"board": "k2", "status": "ok", "error": None}
    before["latency"][("b", "int8", "k2", 1)] = {"build": "b", "variant": "int8", "board": "k2",
                                                 "threads": 1, "p50_us": 55.0, "status": "ok",
                                                 "error": None}
    rows = compare(figures(100.0), before, [before], GATES)
    dropped = [r for r in rows["latency"] if r["board"] == "k2"]
    assert [(r["status"], r["p50_prev"], r["p50_us"], r["mark"]) for r in dropped] == [
        ("dropped", 55.0, None, "board dropped from the inventory")]
    assert {b["board"]: b["status"] for b in rows["boards"]} == {"k1": "ok", "k2": "dropped"}
    assert breaches(rows, GATES) == []
    md = render_markdown({"id": 5, "status": "ok", "started_utc": "t"}, {"id": 4,
                         "started_utc": "s"}, [4], rows, [], None)
    assert "- board **k2** dropped from the inventory since run 4" in md
    table = md.split("## p50 latency per board")[1]
    assert "k2" in table and "board dropped from the inventory" in table


# --- the markdown report -------------------------------------------------------------------


def test_board_error_text_is_escaped_in_nightly_md():
    hostile = "boom <img src=x> | *bold* [link](http://x) `code`\x1b[31mred\nnext"
    figs = figures(100.0, board_ok=False, case_ok=False)
    figs["boards"]["k1"]["error"] = hostile
    figs["latency"][("b", "int8", "k1", 1)]["error"] = hostile
    rows = compare(figs, None, [], GATES)
    found = breaches(rows, GATES)
    md = render_markdown({"id": 1, "status": "breached", "started_utc": "t"}, None, [], rows,
                         found, None)
    for raw in ("<img", "| *bold*", "[link](", "`code`", "\x1b", "\nnext"):
        assert raw not in md, raw
    assert "&lt;img src=x&gt; \\| \\*bold\\* \\[link\\](http://x) \\`code\\`red next" in md
    assert all("\x1b" not in b["message"] for b in found)  # the console gets no escapes


def test_a_failed_run_report_says_this_run_failed_and_why_and_shows_no_old_tables():
    md = render_markdown({"id": 7, "status": "failed", "started_utc": "2026-01-02T02:00:00Z",
                          "message": "terminated by SIGTERM during doit"},
                         {"id": 6, "started_utc": "2026-01-01T02:00:00Z"}, [5, 6],
                         {"accuracy": [], "latency": [], "boards": []}, [], None)
    assert md.startswith("# Nightly run 7 — failed\n")
    assert "**This run FAILED**: terminated by SIGTERM during doit." in md
    assert "The last completed run is run 6 (started 2026-01-01T02:00:00Z)" in md
    assert "--run 6" in md and "## p50" not in md and "all gates pass" not in md


# --- assess over a real database of several runs ---------------------------------------------


def record(db, figs, status="ok"):
    run = history.start_run(db, "t", None, None, "p", "d")
    acc = [dict(r, agreement=None, train_s=None) for r in figs["accuracy"].values()]
    lat = [dict(r, p90_us=None, init_ms=None) for r in figs["latency"].values()]
    history.finish_run(db, run, status, "e", 1.0, acc, list(figs["boards"].values()), lat)
    return run


def test_assess_compares_with_the_latest_run_and_the_median_of_the_last_n(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    ids = [record(db, figures(p50)) for p50 in (1000.0, 100.0, 110.0)]
    record(db, figures(5.0), status="failed")  # a failed run is no comparison
    ids.append(record(db, figures(120.0)))
    current_id = history.start_run(db, "t", None, None, "p", "d")
    params = dataclasses.replace(GATES, history_runs=3)
    result = assess(db, current_id, figures(200.0, verdict=SLOWER), params)
    assert [r["id"] for r in result["earlier"]] == ids[1:]
    [lat] = result["comparison"]["latency"]
    assert (lat["p50_prev"], lat["p50_median"], lat["runs_in_median"]) == (120.0, 110.0, 3)
    [found] = result["breaches"]  # the verdict, not the p50 81.8 % above the median
    assert found["figure"] == "latency_ratio"


def test_a_failed_run_is_neither_compared_nor_gated(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    record(db, figures(100.0))
    run = history.start_run(db, "t", None, None, "p", "d")
    result = assess(db, run, history.as_figures([], [], []), GATES, failed=True)
    assert result["comparison"] == {"accuracy": [], "latency": [], "boards": []}
    assert result["breaches"] == [] and [r["id"] for r in result["earlier"]] == [1]


def test_rebuilding_a_report_never_writes_the_database(tmp_path):
    path = tmp_path / "h.sqlite"
    db = history.connect(path)
    record(db, figures(100.0))
    record(db, figures(100.0, int8_acc=0.5), status="breached")
    db.close()
    before = path.read_bytes()
    out = tmp_path / "reports"
    main(["--db", str(path), "--params", str(REPO / "params.toml"), "--out", str(out)])
    assert path.read_bytes() == before
    assert (out / "nightly.md").read_text().startswith("# Nightly run 2 — breached")
    assert json.loads((out / "nightly.json").read_text())["previous_run"] == 1


# --- the comparison's rows, each figure and mark against a hand computation -----------------


def latency_case(build, variant, board, threads, p50, status="ok", error=None, **verdict):
    return {"build": build, "variant": variant, "board": board, "threads": threads,
            "p50_us": p50, "status": status, "error": error, **verdict}


def test_an_accuracy_change_exactly_at_the_mark_is_not_marked_and_one_step_beyond_is():
    import math

    def marks(limit, now=0.75, then=0.5, now_bytes=10, then_bytes=10):
        params = dataclasses.replace(GATES, mark_accuracy_change_pt=limit)
        cur = history.as_figures([{"build": "b", "variant": "int8", "accuracy": now,
                                   "drift_pt": 0.0, "bytes": now_bytes}], [], [])
        old = history.as_figures([{"build": "b", "variant": "int8", "accuracy": then,
                                   "drift_pt": 0.0, "bytes": then_bytes}], [], [])
        [row] = compare(cur, old, [old], params)["accuracy"]
        return row["mark"]

    # 0.75 - 0.5 is 25 points exactly (binary fractions): the change equals the mark.
    assert marks(25.0) == ""
    assert marks(math.nextafter(25.0, 0)) == ("accuracy +25.00 pt vs prev; "
                                              "accuracy +25.00 pt vs median")
    assert marks(25.0, now=0.5, then=0.75) == ""
    assert marks(math.nextafter(25.0, 0), now=0.5, then=0.75).startswith(
        "accuracy -25.00 pt vs prev")
    assert marks(99.0, now_bytes=2000, then_bytes=766) == "size +1,234 B vs prev"
    assert marks(99.0, now_bytes=764, then_bytes=766) == "size -2 B vs prev"


def test_rows_come_in_build_then_registry_order_and_keep_each_cases_own_figures():
    cases = [latency_case("b", "int8", "k1", 2, 30.0), latency_case("b", "keras", "k1", 1, 90.0),
             latency_case("b", "float32", "k1", 1, 50.0),
             latency_case("a", "int8", "k1", 1, 10.0, status="failed", error="invoke failed"),
             latency_case("b", "int8", "k1", 1, 40.0)]
    boards = [{"board": "k1", "status": "ok", "error": None}]
    rows = compare(history.as_figures([], boards, cases), None, [], GATES)["latency"]
    # keras before float32 although "float32" < "keras": the registry's order, by hand.
    assert [(r["build"], r["variant"], r["threads"], r["p50_us"]) for r in rows] == [
        ("a", "int8", 1, 10.0), ("b", "keras", 1, 90.0), ("b", "float32", 1, 50.0),
        ("b", "int8", 1, 40.0), ("b", "int8", 2, 30.0)]
    assert rows[0]["error"] == "invoke failed" and rows[0]["status"] == "failed"


def test_a_case_missing_from_some_earlier_runs_takes_the_median_of_those_that_have_it():
    old = figures(100.0)
    without = history.as_figures(
        [{"build": "b", "variant": "keras", "accuracy": 0.9, "drift_pt": 0.0, "bytes": 1}],
        [{"board": "k1", "status": "ok", "error": None}], [])
    rows = compare(figures(130.0), without, [old, without, figures(300.0)], GATES)
    [lat] = rows["latency"]
    assert (lat["p50_prev"], lat["p50_median"], lat["runs_in_median"]) == (None, 200.0, 2)
    int8 = next(r for r in rows["accuracy"] if r["variant"] == "int8")
    assert int8["accuracy_prev"] is None and int8["accuracy_median"] == 0.975


def test_the_latency_mark_follows_the_gate_and_says_when_the_board_is_emulated():
    same = {"ratio": 1.0, "low": 0.9, "high": 1.1, "p": 0.5, "word": "same"}

    def mark(verdict, emulated=False):
        [row] = compare(figures(100.0, verdict=verdict, emulated=emulated), None, [],
                        GATES)["latency"]
        return row["mark"]

    assert mark(SLOWER) == "slower than its reference"
    assert mark(SLOWER, emulated=True) == "slower than its reference (emulated: not gated)"
    assert mark(same) == "" and mark(None) == ""


def test_a_dropped_boards_rows_keep_their_keys_in_order_and_count_no_median():
    boards = [{"board": "k1", "status": "ok", "error": None, "emulated": 0},
              {"board": "old", "status": "ok", "error": None, "emulated": 1}]
    before = history.as_figures([], boards, [latency_case("b", "int8", "old", 4, 70.0),
                                             latency_case("b", "keras", "old", 1, 80.0)])
    now = history.as_figures([], boards[:1], [])
    rows = compare(now, before, [before], GATES)["latency"]
    assert [(r["build"], r["variant"], r["board"], r["threads"], r["p50_prev"],
             r["runs_in_median"], r["emulated"], r["status"]) for r in rows] == [
        ("b", "keras", "old", 1, 80.0, 0, True, "dropped"),
        ("b", "int8", "old", 4, 70.0, 0, True, "dropped")]


def test_a_verdict_needs_both_its_word_and_its_ratio():
    from pipeline.nightly.report import _delta, verdict_of

    assert verdict_of({"word": "slower", "ratio": None}) is None
    assert verdict_of({"word": None, "ratio": 1.2}) is None
    assert verdict_of({"word": "slower", "ratio": 1.2})["ratio"] == 1.2
    assert _delta(0.75, 0.5) == 0.25 and _delta(0.75, 0.5, 100) == 25.0


def test_each_breach_carries_its_case_value_and_limit_and_none_stops_the_others():
    """The breach records nightly.json keeps, whole; a dropped, failed or emulated row before
    a breaching one does not end the scan."""
    boards = [{"board": "a_old", "status": "ok", "error": None, "emulated": 0},
              {"board": "b_emu", "status": "ok", "error": None, "emulated": 1},
              {"board": "c_bad", "status": "failed", "error": "unreachable", "emulated": 0},
              {"board": "d_k1", "status": "ok", "error": None, "emulated": 0}]
    verdict = verdict_row(SLOWER)
    before = history.as_figures([], boards, [latency_case("b", "int8", "a_old", 1, 9.0)])
    cases = [latency_case("b", "int8", "b_emu", 1, 50.0, **verdict),
             latency_case("b", "int8", "c_bad", 1, None, status="failed", error="no p50"),
             latency_case("b", "int8", "d_k1", 1, 50.0, **verdict),
             latency_case("b", "int8", "d_k1", 2, None, status="failed", error="timed out")]
    accuracy = [{"build": "b", "variant": "keras", "accuracy": 0.98, "drift_pt": 0.0,
                 "bytes": 1},
                {"build": "b", "variant": "int8", "accuracy": 0.93, "drift_pt": -5.0,
                 "bytes": 1}]
    now = history.as_figures(accuracy, boards[1:], cases)
    found = breaches(compare(now, before, [before], GATES), GATES)
    fields = [{k: v for k, v in b.items() if k != "message"} for b in found]
    assert fields == [
        {"build": "b", "variant": "int8", "board": "", "figure": "accuracy", "value": 0.93,
         "limit": ">= 0.94"},
        {"build": "b", "variant": "int8", "board": "", "figure": "drift_pt", "value": -5.0,
         "limit": ">= -1.0"},
        {"build": "", "variant": "", "board": "c_bad", "figure": "board", "value": "failed",
         "limit": "status ok"},
        {"build": "b", "variant": "int8", "board": "c_bad", "figure": "case",
         "value": "failed", "limit": "status ok"},
        {"build": "b", "variant": "int8", "board": "d_k1", "figure": "latency_ratio",
         "value": 1.45, "limit": "interval below 1 + 50.0 %"},
        {"build": "b", "variant": "int8", "board": "d_k1", "figure": "case",
         "value": "failed", "limit": "status ok"}]
    rows = compare(now, before, [before], GATES)
    dropped = [r for r in rows["latency"] if r["status"] == "dropped"]
    assert [r["error"] for r in dropped] == [None]
    assert [b for b in rows["boards"] if b["status"] == "dropped"] == [
        {"board": "a_old", "status": "dropped", "error": None}]
    from pipeline.nightly.report import emulated

    assert emulated({"accuracy": {}}, "b_emu") is False and emulated(now, "b_emu") is True
