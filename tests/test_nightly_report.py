"""Gates and comparison of the nightly report, on figures shaped as the database gives them."""

import dataclasses

from pipeline import history
from pipeline.nightly_report import breaches, compare, render_chart
from pipeline.params import load_params
from tests.conftest import REPO

GATES = dataclasses.replace(load_params(REPO / "params.toml").nightly,
                            min_accuracy_float32=0.95, min_accuracy_int8=0.94,
                            max_int8_drift_pt=1.0, max_latency_regression_pct=50.0)


def figures(p50: float, int8_acc: float = 0.975, board_ok: bool = True, case_ok: bool = True):
    accuracy = [{"build": "b", "variant": "keras", "accuracy": 0.98, "drift_pt": 0.0,
                 "bytes": 100},
                {"build": "b", "variant": "float32", "accuracy": 0.98, "drift_pt": 0.0,
                 "bytes": 40},
                {"build": "b", "variant": "int8", "accuracy": int8_acc,
                 "drift_pt": (int8_acc - 0.98) * 100, "bytes": 10}]
    latency = [{"build": "b", "variant": "int8", "board": "k1", "threads": 1,
                "p50_us": p50 if case_ok else None, "status": "ok" if case_ok else "failed",
                "error": None if case_ok else "invoke failed"}]
    boards = [{"board": "k1", "status": "ok" if board_ok else "failed",
               "error": None if board_ok else "unreachable"}]
    return history.as_figures(accuracy, boards, latency)


def gate(current, past):
    return breaches(compare(current, past[-1], past, GATES), GATES)


def test_latency_within_the_threshold_of_the_median_passes():
    past = [figures(100.0), figures(300.0), figures(110.0)]  # median 110: one outlier ignored
    assert gate(figures(164.0), past) == []


def test_latency_beyond_the_threshold_of_the_median_is_a_breach_naming_the_case():
    past = [figures(100.0), figures(300.0), figures(110.0)]
    [found] = gate(figures(166.0), past)
    assert (found["build"], found["variant"], found["board"], found["figure"]) == (
        "b", "int8", "k1", "p50_us")
    assert "50.9 % above the median 110.0 µs of the last 3 run(s)" in found["message"]
    assert "max_latency_regression_pct = 50.0" in found["message"]


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
