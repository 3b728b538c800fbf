"""report.py: rows, states, ratios, the per-op reports, the chart and the manual rebuild."""

import json
import shutil

import pytest

from pipeline.bench import report
from pipeline.core.boards import Board
from pipeline.core.layout import Layout
from tests.conftest import REPO


def doc(board="b", status="ok", measured="2026-01-01T00:00:00Z", **extra):
    return {"board": board, "status": status, "measured_utc": measured,
            "runtimes": {"tflite": {"name": "r", "version": "1"}}, "results": [], **extra}


def test_int8_ratio_stale_and_old_rows():
    d = doc(results=[
        {"build": "m", "variant": "float32", "threads": 1, "p50_us": 40.0, "sha256": "f"},
        {"build": "m", "variant": "int8", "threads": 1, "p50_us": 10.0, "sha256": "old"}],
        measured=report.utc_now())
    rows = report.latency_rows([d], {"m/float32": "f", "m/int8": "new"}, max_age_hours=24)
    assert rows[1]["int8_over_float32"] == 0.25
    assert [r["fresh"] for r in rows] == [True, False] and not rows[0]["old"]
    assert "STALE" in report.render_table(rows, "github")
    old = report.latency_rows([{**d, "measured_utc": "2020-01-01T00:00:00Z"}],
                              {"m/float32": "f", "m/int8": "old"}, max_age_hours=24)
    assert all(r["old"] for r in old)
    assert report.row_state(old[0]) == "OLD (measured 2020-01-01T00:00:00Z)"
    # just inside the limit is not old
    assert not report.latency_rows([d], {}, max_age_hours=0.01)[0]["old"]


def test_disagreement_and_partial_boards_are_loud():
    d = doc(board="k1", status="partial", errors=["m_int8.tflite x2: killed by SIGILL"],
            results=[{"build": "m", "variant": "int8", "threads": 1, "p50_us": 1.0,
                      "sha256": "s", "agreement": 0.9, "disagreements": [3, 7]}])
    rows = report.latency_rows([d], {"m/int8": "s"})
    table = report.render_table(rows, "github")
    assert "DISAGREES with host on 2 sample(s)" in table
    assert "ERROR m\\_int8.tflite x2: killed by SIGILL" in table
    assert "PARTIAL" in report.board_line({**d, "machine": {"cpu_model": "c", "cores": 1,
                                                            "uname": "u"}})


def test_running_and_failed_boards_show_no_numbers():
    running = {"board": "k1", "status": "running", "started_utc": "2026-01-01T00:00:00Z"}
    failed = {"board": "k2", "status": "failed", "error": "boom",
              "measured_utc": "2026-01-01T00:00:00Z", "results": [{"p50_us": 1.0}]}
    assert report.latency_rows([running, failed], {}) == []
    assert "INCOMPLETE" in report.board_line(running)
    assert "FAILED at 2026-01-01T00:00:00Z - boom" in report.board_line(failed)


HOSTILE = "<img src=x onerror=alert(1)> [click](http://evil) | \x1b[31mred\x1b[0m \x1b]8;;http://evil\x07link\x1b]8;;\x07 \x07"


def test_board_strings_are_escaped_in_markdown_and_stripped_on_the_terminal(capsys, tmp_path):
    machine = {"cpu_model": HOSTILE, "cores": 8, "uname": "Linux k1"}
    d = doc(board="k1", machine=machine, runtimes={"tflite": {"name": HOSTILE, "version": "1"}},
            measured=report.utc_now(), results=[
                {"build": "m", "variant": "int8", "threads": 1, "p50_us": 1.0, "sha256": "s",
                 "agreement": 1.0, "disagreements": []}],
            errors=[HOSTILE], status="partial")
    (tmp_path / "reports" / "latency").mkdir(parents=True)
    (tmp_path / "reports" / "latency" / "k1.json").write_text(json.dumps(d))
    report.write_latency_report(Layout(tmp_path), [Board(name="k1", host="k1")], {})
    markdown = (tmp_path / "reports" / "latency.md").read_text()
    for raw in ("<img", "[click](http", "\x1b", "\x07"):
        assert raw not in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown and "\\[click\\]" in markdown
    console = capsys.readouterr().out
    assert "\x1b" not in console and "\x07" not in console
    assert "red" in console and "ERROR" in console


def test_chart_and_report_carry_time_and_model_hashes(tmp_path):
    d = doc(board="b", machine={"cpu_model": "c", "cores": 2, "uname": "u"},
            measured=report.utc_now(), results=[
                {"build": "m", "variant": v, "threads": t, "p10_us": p * 0.9, "p50_us": p,
                 "p90_us": p * 1.2, "sha256": "ab" * 32, "agreement": 1.0, "disagreements": []}
                for v, p in (("float32", 60.0), ("int8", 20.0)) for t in (1, 2)])
    (tmp_path / "reports" / "latency").mkdir(parents=True)
    (tmp_path / "reports" / "latency" / "b.json").write_text(json.dumps(d))
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(b"model")
    report.write_latency_report(Layout(tmp_path), [Board(name="b")], {"m/int8": model}, 24)
    latency = json.loads((tmp_path / "reports" / "latency.json").read_text())
    assert latency["made_utc"] and latency["boards"][0]["measured_utc"] == d["measured_utc"]
    assert latency["models"]["m/int8"] == report.sha256_file(model)
    md = (tmp_path / "reports" / "latency.md").read_text()
    assert f"`m/int8` {report.sha256_file(model)[:12]}" in md and "measured 20" in md
    assert (tmp_path / "reports" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rebuilds_wait_for_each_other(tmp_path):
    """With doit -n each board's task rebuilds the report; they must not interleave."""
    import fcntl
    import threading

    (tmp_path / "reports" / "latency").mkdir(parents=True)
    (tmp_path / "reports" / "latency" / "b.json").write_text(json.dumps(doc(
        machine={"cpu_model": "c", "cores": 1, "uname": "u"})))
    with open(tmp_path / "reports" / ".latency.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rebuild = threading.Thread(target=report.write_latency_report,
                                   args=(Layout(tmp_path), [Board(name="b")], {}))
        rebuild.start()
        rebuild.join(timeout=1.0)
        assert rebuild.is_alive() and not (tmp_path / "reports" / "latency.md").exists()
    rebuild.join(timeout=60)
    assert not rebuild.is_alive() and (tmp_path / "reports" / "latency.md").exists()


def test_rows_carry_the_cpus_and_the_floor_of_their_own_variant():
    peak = [{"variant": "float32", "threads": 1, "min_us": 1000.0, "macs": 10**7},
            {"variant": "int8", "threads": 1, "min_us": 100.0, "macs": 10**7}]
    d = doc(peak=peak, measured=report.utc_now(), results=[
        {"build": "m", "variant": v, "threads": 1, "p50_us": 50.0, "sha256": "s",
         "macs": 10**5, "cpus": [3], "agreement": 1.0, "disagreements": []}
        for v in ("float32", "int8")])
    rows = {r["variant"]: r for r in report.latency_rows([d], {})}
    assert rows["float32"]["floor_us"] == pytest.approx(10**5 / 1e10 * 1e6)
    assert rows["int8"]["floor_us"] == pytest.approx(10**5 / 1e11 * 1e6)
    table = report.render_table(list(rows.values()), "github")
    assert "| 3 " in table.replace("  ", " ")


def test_the_board_line_says_where_more_threads_were_slower():
    peak = [{"variant": "int8", "threads": 1, "min_us": 100.0, "macs": 10**7},
            {"variant": "int8", "threads": 2, "min_us": 125.0, "macs": 10**7},
            {"variant": "float32", "threads": 1, "min_us": 1000.0, "macs": 10**7},
            {"variant": "float32", "threads": 2, "min_us": 500.0, "macs": 10**7}]
    line = report.board_line(doc(peak=peak, measured=report.utc_now(),
                                 machine={"cpu_model": "c", "cores": 2, "uname": "u"}))
    # 10^7 MACs in 100 µs = 100 GMAC/s at x1; in 125 µs = 80 at x2, 0.80x
    assert "int8 x1: 100.0, int8 x2: 80.0" in line
    assert "SLOWER WITH MORE THREADS: int8 x2 is 0.80x the rate of x1" in line
    assert "float32 x2" not in line.split("SLOWER")[1]  # 2 threads doubled float32's rate


def test_a_future_measurement_is_not_fresh():
    future = "2999-01-01T00:00:00Z"
    d = doc(measured=future, results=[{"build": "m", "variant": "int8", "threads": 1,
                                       "p50_us": 1.0, "sha256": "s"}])
    (row,) = report.latency_rows([d], {"m/int8": "s"}, max_age_hours=24)
    assert row["old"] and report.row_state(row) == f"OLD (measured {future})"
    assert not report.is_old(report.utc_now(), 24)  # now is fresh


def test_a_future_measurement_does_not_skip_the_bench_task(tmp_path):
    from pipeline.core.uptodate import measured_within

    result = tmp_path / "b.json"
    for stamp, fresh in (("2999-01-01T00:00:00Z", False), (report.utc_now(), True)):
        result.write_text(json.dumps({"status": "ok", "measured_utc": stamp}))
        assert measured_within(result, 24) is fresh


def onnx_doc(**extra):
    """A board with both runtimes: int8 .tflite, and the QDQ ONNX model with a profile."""
    profile = {"runs": 50, "node_sum_us": 30.0, "model_run_us": 34.0,
               "nodes_per_provider": {"SpaceMITExecutionProvider": 2, "CPUExecutionProvider": 1},
               "nodes": [
                   {"node": "conv1", "op": "Conv", "provider": "SpaceMITExecutionProvider",
                    "median_us": 18.0, "share": 0.6},
                   {"node": "conv2", "op": "Conv", "provider": "SpaceMITExecutionProvider",
                    "median_us": 9.0, "share": 0.3},
                   {"node": "softmax", "op": "Softmax", "provider": "CPUExecutionProvider",
                    "median_us": 3.0, "share": 0.1}]}
    results = [
        {"build": "m", "variant": "int8", "threads": 1, "p50_us": 20.0, "sha256": "a",
         "runtime": {"name": "ai_edge_litert", "version": "2.1"}, "agreement": 1.0,
         "disagreements": []},
        {"build": "m", "variant": "onnx_int8", "threads": 1, "p50_us": 50.0, "sha256": "b",
         "runtime": {"name": "onnxruntime", "version": "1.21.0"}, "agreement": 1.0,
         "disagreements": [], "providers": ["SpaceMITExecutionProvider", "CPUExecutionProvider"],
         "profile": profile}]
    return doc(board="k1", measured=report.utc_now(), results=results,
               machine={"cpu_model": "Spacemit(R) X60", "cores": 8, "uname": "Linux k1"},
               runtimes={"tflite": {"name": "ai_edge_litert", "version": "2.1"},
                         "onnx": {"name": "onnxruntime", "version": "1.21.0",
                                  "providers_available": ["SpaceMITExecutionProvider",
                                                          "CPUExecutionProvider"],
                                  "spacemit_ort": True}}, **extra)


def test_rows_name_their_runtime_and_the_ort_over_tflite_ratio():
    rows = {r["variant"]: r for r in report.latency_rows([onnx_doc()], {})}
    assert rows["int8"]["runtime"] == "ai_edge_litert 2.1"
    assert rows["onnx_int8"]["runtime"] == "onnxruntime 1.21.0 SpaceMIT+CPU"
    assert rows["onnx_int8"]["ort_over_tflite"] == pytest.approx(50.0 / 20.0)
    assert "ort_over_tflite" not in rows["int8"]
    table = report.ratio_table(list(rows.values()))
    assert "| m       | k1      | 1     | 20.0" in table and "| 2.50" in table
    console = report.render_table(list(rows.values()), "simple", full=False)
    assert "onnxruntime 1.21.0 SpaceMIT+CPU" in console and "2.50" in console


def test_rows_a_board_has_no_runtime_for_say_so():
    missing = [{"build": "m", "variant": "int8", "threads": 1, "model": "m_int8.tflite",
                "error": "NO RUNTIME: no TFLite runtime on this board - install ..."}]
    d = doc(status="partial", missing=missing, runtimes={"tflite": {"missing": "x"}},
            machine={"cpu_model": "c", "cores": 1, "uname": "u"}, measured=report.utc_now())
    (row,) = report.latency_rows([d], {})
    assert (row["build"], row["variant"], row["threads"]) == ("m", "int8", 1)
    assert report.row_state(row).startswith("NO RUNTIME: no TFLite runtime on this board")
    line = report.board_line(d)
    assert "PARTIAL - 1 row(s) not timed for lack of a runtime" in line and "TFLite: none" in line


def test_per_op_report_is_written_linked_and_computed_from_the_profile(tmp_path):
    layout = Layout(tmp_path)
    layout.latency_dir().mkdir(parents=True)
    layout.board_result("k1").write_text(json.dumps(onnx_doc()))
    report.write_latency_report(layout, [Board(name="k1", host="k1")], {})
    md = layout.latency_report("md").read_text()
    assert "[m/ops\\_k1.md](m/ops_k1.md)" in md
    ops = json.loads(layout.op_profile("m", "k1", "json").read_text())
    (case,) = ops["cases"]
    assert case["variant"] == "onnx_int8" and case["p50_us"] == 50.0
    assert [o["op"] for o in case["by_op"]] == ["Conv", "Softmax"]
    assert case["by_op"][0]["median_us"] == pytest.approx(27.0)
    assert case["by_op"][0]["share"] == pytest.approx(0.9)
    text = layout.op_profile("m", "k1", "md").read_text()
    # conv1: 18 µs profiled, 60 % of the nodes, so 0.6 x 50 = 30 µs of the timed p50
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| 1 ") or line.startswith("| 3 ")]
    assert rows == [["1", "conv1", "Conv", "SpaceMIT", "18.0", "30.0", "60.0", "60.0"],
                    ["3", "softmax", "Softmax", "CPU", "3.0", "5.0", "10.0", "100.0"]]
    assert "nodes per provider: SpaceMIT 2, CPU 1" in text


def test_manual_rebuild_honours_max_age_hours(tmp_path, capsys):
    layout = Layout(tmp_path / "artifacts")
    layout.latency_dir().mkdir(parents=True)
    model = layout.variant_path("m", "int8")
    model.parent.mkdir(parents=True)
    model.write_bytes(b"the model, unchanged since it was timed")
    layout.board_result("local").write_text(json.dumps(doc(
        board="local", measured="2020-01-01T00:00:00Z",
        machine={"cpu_model": "c", "cores": 1, "uname": "u"}, results=[
            {"build": "m", "variant": "int8", "threads": 1, "p50_us": 1.0,
             "sha256": report.sha256_file(model)}])))
    params = tmp_path / "params.toml"
    shutil.copy(REPO / "params" / "smoke.toml", params)
    report.main(["--artifacts", str(layout.root), "--boards",
                 str(REPO / "board" / "boards.toml"), "--params", str(params)])
    assert "OLD (measured 2020-01-01T00:00:00Z)" in layout.latency_report("md").read_text()
    assert json.loads(layout.latency_report("json").read_text())["max_age_hours"] == 24.0


def test_the_chart_shows_both_runtimes_with_the_board_and_date(tmp_path):
    layout = Layout(tmp_path)
    layout.latency_dir().mkdir(parents=True)
    layout.board_result("k1").write_text(json.dumps(onnx_doc()))
    report.write_latency_report(layout, [Board(name="k1", host="k1")], {})
    assert layout.latency_report("png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_emulated_boards_figures_are_marked_everywhere(tmp_path, capsys):
    machine = {"cpu_model": "riscv64 emulated by qemu-user", "cores": 2, "uname": "Linux v riscv64"}
    results = [{"build": "m", "variant": "int8", "threads": 1, "p50_us": 7000.0, "sha256": "s",
                "agreement": 1.0, "disagreements": []}]
    real = doc(board="k1", machine=machine, measured=report.utc_now(), results=results)
    virtual = {**real, "board": "virtual-k1", "emulated": True}
    (tmp_path / "reports" / "latency").mkdir(parents=True)
    for d in (real, virtual):
        (tmp_path / "reports" / "latency" / f"{d['board']}.json").write_text(json.dumps(d))
    report.write_latency_report(Layout(tmp_path), [Board(name="k1", host="k1"),
                                                   Board(name="virtual-k1", host="v")], {})
    latency = json.loads((tmp_path / "reports" / "latency.json").read_text())
    assert [(r["board"], r["emulated"]) for r in latency["rows"]] == [
        ("k1", False), ("virtual-k1", True)]
    assert [b["emulated"] for b in latency["boards"]] == [False, True]
    md = (tmp_path / "reports" / "latency.md").read_text()
    boards = [[c.strip() for c in line.split("|")][3] for line in md.splitlines()
              if line.startswith("| m ")]
    assert boards == ["k1", "virtual-k1 (EMULATED)"]
    lines = {line.split(":")[0]: line for line in md.splitlines() if line.startswith("- **")}
    assert "EMULATED (qemu-user)" in lines["- **virtual-k1**"]
    assert "EMULATED" not in lines["- **k1**"]
    assert "virtual-k1 (EMULATED)" in capsys.readouterr().out


def test_latency_md_after_a_failed_first_run_says_what_happened(tmp_path):
    """No model built, the only board failed: every sentence ends in something, no table
    is a header without rows, and nothing refers to console text the file does not hold."""
    layout = Layout(tmp_path)
    layout.latency_dir().mkdir(parents=True)
    error = ("board 'local' (this machine): no model to time: no build has its dataset, so no "
             "model was built; give the pipeline a copy of the data")
    layout.board_result("local").write_text(json.dumps(
        {"board": "local", "status": "failed", "measured_utc": "2026-12-06T06:00:00Z",
         "error": error}))
    report.write_latency_report(layout, [Board(name="local")], {}, table=False, failures=False)
    text = layout.latency_report("md").read_text()
    assert "(SHA-256 prefix): ." not in text and "no model file exists yet" in text
    assert "above)" not in text.replace("line above says why)", "")
    assert f"- **local**: FAILED at 2026-12-06T06:00:00Z - {error}" in text
    assert "No row: no board returned any result" in text
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("|")
               and i + 1 < len(lines) and lines[i + 1].startswith("|-")]
    assert all(i + 2 < len(lines) and lines[i + 2].startswith("|") for i in headers), text
    assert "## ONNX Runtime against TFLite" not in text  # no ONNX int8 row was timed


def test_each_thread_counts_ratios_divide_by_the_same_thread_counts_rows():
    """Multi-thread rows and ONNX rows: every ratio is this row's p50 over the p50 of its
    reference variant at the same build, board and thread count (numpy divides the same
    figures independently; exact, the same two floats)."""
    import numpy as np

    p50 = {("float32", 1): 400.0, ("float32", 2): 250.0, ("float32", 4): 160.0,
           ("int8", 1): 100.0, ("int8", 2): 70.0, ("int8", 4): 40.0,
           ("onnx_int8", 1): 300.0, ("onnx_int8", 2): 210.0, ("onnx_int8", 4): 130.0}
    results = [{"build": "m", "variant": v, "threads": t, "p50_us": us, "sha256": v}
               for (v, t), us in p50.items()]
    rows = report.latency_rows([doc(results=results, measured=report.utc_now())], {})
    by = {(r["variant"], r["threads"]): r for r in rows}
    for threads in (1, 2, 4):
        assert by["int8", threads]["int8_over_float32"] == float(
            np.float64(p50["int8", threads]) / np.float64(p50["float32", threads]))
        assert by["onnx_int8", threads]["ort_over_tflite"] == float(
            np.float64(p50["onnx_int8", threads]) / np.float64(p50["int8", threads]))
        assert "int8_over_float32" not in by["float32", threads]
        assert "ort_over_tflite" not in by["int8", threads]
    # A thread count the reference lacks has no ratio (never another count's).
    lonely = results + [{"build": "m", "variant": "int8", "threads": 8, "p50_us": 30.0,
                         "sha256": "int8"}]
    rows = report.latency_rows([doc(results=lonely, measured=report.utc_now())], {})
    [eight] = [r for r in rows if r["threads"] == 8]
    assert "int8_over_float32" not in eight


# --- every cell against a hand-made board document, written out by hand -----------------


def table_cells(table: str) -> list[dict[str, str]]:
    """A github table as one dict per row, header -> cell text."""
    lines = [line.strip().strip("|") for line in table.splitlines()]
    headers = [h.strip() for h in lines[0].split("|")]
    return [dict(zip(headers, (c.strip() for c in line.split("|")))) for line in lines[2:]]


def two_thread_doc() -> dict:
    """float32 and int8 .tflite at 1 and 2 threads, onnx_int8 at 2, with peaks at both."""
    def case(variant, threads, p50, **extra):
        return {"build": "m", "variant": variant, "threads": threads, "p50_us": p50,
                "sha256": f"sha-{variant}", "runtime": {"name": "rt", "version": "9"},
                "init_ms": 1.234, "first_us": 55.55, "mean_us": 12.25, "p10_us": 9.0,
                "p90_us": 20.0, "p99_us": 30.0, "std_us": 1.0, "model_rss_mb": 1.254,
                "peak_rss_mb": 99.94, "bytes": 12345, "accuracy": 0.9, "agreement": 1.0,
                "samples": 20, "disagreements": [], "macs": 1000, "cpus": [0, 1], **extra}
    results = [case("float32", 1, 40.0), case("int8", 1, 10.0),
               case("float32", 2, 25.0), case("int8", 2, 20.0),
               case("onnx_int8", 2, 30.0, providers=["CPUExecutionProvider"],
                    verdict={"ratio": 1.5, "low": 1.25, "high": 1.75, "p": 0.001,
                             "word": "slower"}, reference_sha256="abcdef0123456789")]
    peak = [{"variant": "int8", "threads": 1, "min_us": 100.0, "macs": 10**6},
            {"variant": "int8", "threads": 2, "min_us": 50.0, "macs": 10**6},
            {"variant": "float32", "threads": 1, "min_us": 400.0, "macs": 10**6}]
    return doc(board="k1", results=results, peak=peak, measured=report.utc_now(),
               machine={"cpu_model": "X60", "cores": 8, "uname": "Linux 6"}, cpus=[0, 1],
               pushed=["a", "b", "c"])


def test_each_rows_figures_against_a_hand_computation():
    rows = report.latency_rows([two_thread_doc()], {"m/int8": "sha-int8"}, max_age_hours=24)
    by = {(r["variant"], r["threads"]): r for r in rows}
    assert list(by) == [("float32", 1), ("int8", 1), ("float32", 2), ("int8", 2),
                        ("onnx_int8", 2)]
    # int8 over float32 at the same thread count; ORT int8 over the .tflite int8
    assert by["int8", 1]["int8_over_float32"] == 10.0 / 40.0
    assert by["int8", 2]["int8_over_float32"] == 20.0 / 25.0
    assert by["onnx_int8", 2]["ort_over_tflite"] == 30.0 / 20.0
    assert "int8_over_float32" not in by["float32", 1] and "ort_over_tflite" not in by["int8", 2]
    # floors: 1000 MACs at the variant's own rate at its thread count (MACs / min_us)
    exact = {"rel": 1e-12}
    assert by["int8", 1]["floor_us"] == pytest.approx(0.1, **exact)  # 10^10 MAC/s
    assert by["int8", 2]["floor_us"] == pytest.approx(0.05, **exact)  # 2 x 10^10
    assert by["int8", 2]["p50_over_floor"] == pytest.approx(20.0 / 0.05, **exact)
    assert by["float32", 2]["floor_us"] == pytest.approx(0.4, **exact)  # x2 unmeasured: x1
    r = by["onnx_int8", 2]
    assert {k: r[k] for k in ("build", "board", "runtime", "bytes", "sha256", "fresh", "old",
                              "emulated", "init_ms", "first_us", "mean_us", "std_us",
                              "p10_us", "p50_us", "p90_us", "p99_us", "model_rss_mb",
                              "peak_rss_mb", "accuracy", "agreement", "samples",
                              "disagreements", "macs", "cpus", "providers",
                              "reference_sha256")} == {
        "build": "m", "board": "k1", "runtime": "rt 9 CPU", "bytes": 12345,
        "sha256": "sha-onnx_int8", "fresh": False, "old": False, "emulated": False,
        "init_ms": 1.234, "first_us": 55.55, "mean_us": 12.25, "std_us": 1.0, "p10_us": 9.0,
        "p50_us": 30.0, "p90_us": 20.0, "p99_us": 30.0, "model_rss_mb": 1.254,
        "peak_rss_mb": 99.94, "accuracy": 0.9, "agreement": 1.0, "samples": 20,
        "disagreements": [], "macs": 1000, "cpus": [0, 1],
        "providers": ["CPUExecutionProvider"], "reference_sha256": "abcdef0123456789"}
    assert by["int8", 1]["fresh"] is True and by["int8", 1]["measured_utc"]


def test_every_cell_of_the_full_and_the_console_table():
    rows = report.latency_rows([two_thread_doc()], {"m/int8": "sha-int8"}, max_age_hours=24)
    full = table_cells(report.render_table(rows, "github"))
    assert list(full[0]) == [
        "build", "variant", "board", "thr", "runtime", "init ms", "first µs", "mean µs",
        "p50 µs", "p90 µs", "p99 µs", "model MB", "peak RSS MB", "bytes", "acc %", "agree %",
        "int8/f32", "ORT/TFLite", "MACs", "floor µs", "p50/floor", "vs reference",
        "ran on CPUs", "state"]
    assert full[3] == {
        "build": "m", "variant": "int8", "board": "k1", "thr": "2", "runtime": "rt 9",
        "init ms": "1.23", "first µs": "55.5", "mean µs": "12.2", "p50 µs": "20.0",
        "p90 µs": "20.0", "p99 µs": "30.0", "model MB": "1.25", "peak RSS MB": "99.9",
        "bytes": "12,345", "acc %": "90.00", "agree %": "100.00", "int8/f32": "0.80",
        "ORT/TFLite": "", "MACs": "1,000", "floor µs": "0.05", "p50/floor": "400.0",
        "vs reference": "alone", "ran on CPUs": "0,1", "state": "ok"}
    assert full[4]["vs reference"] == "1.500 \\[1.250, 1.750\\] p=0.001 slower vs abcdef01"
    assert full[4]["ORT/TFLite"] == "1.50" and full[4]["state"] == "STALE (model changed since)"
    console = report.render_table(rows, "github", full=False)
    cells = table_cells(console)
    assert list(cells[0]) == report.CONSOLE_HEADERS == [
        "build", "variant", "board", "thr", "runtime", "p50 µs", "p90 µs", "vs reference",
        "int8/f32", "ORT/TFLite", "agree %", "state"]
    assert cells[3] == {"build": "m", "variant": "int8", "board": "k1", "thr": "2",
                        "runtime": "rt 9", "p50 µs": "20.0", "p90 µs": "20.0",
                        "vs reference": "alone", "int8/f32": "0.80", "ORT/TFLite": "",
                        "agree %": "100.0", "state": "ok"}
    plain = report.render_table(rows, "simple", full=False)
    assert "\\_" not in plain and "1.500 [1.250, 1.750] p=0.001 slower vs abcdef01" in plain


def test_the_board_line_in_full():
    d = two_thread_doc()
    d.update(emulated=True, reference_notes=["m/int8: reference 0123 not compared: gone"])
    line = report.board_line(d)
    assert line.splitlines() == [
        f"- **k1**: measured {d['measured_utc']}; X60, 8 cores, Linux 6; TFLite: r 1; "
        "pinned to CPUs [0, 1]; pushed 3 file(s); EMULATED (qemu-user): its latency is the "
        "emulator's, not the board's; its predictions count fully",
        "  - m/int8: reference 0123 not compared: gone",
        "  - measured peak (GMAC/s, synthetic GEMM): float32 x1: 2.5, int8 x1: 10.0, "
        "int8 x2: 20.0"]
    d = {**two_thread_doc(), "status": "partial", "cpus": [], "pushed": [],
         "errors": ["a", "b"], "missing": [{"error": "NO RUNTIME: x"},
                                           {"error": "NO RUNTIME: x"}], "peak": []}
    assert report.board_line(d) == (
        f"- **k1**: measured {d['measured_utc']}; X60, 8 cores, Linux 6; TFLite: r 1; "
        "not pinned; pushed 0 file(s); PARTIAL - 2 case(s) failed (rows marked ERROR), "
        "2 row(s) not timed for lack of a runtime (rows marked NO RUNTIME): NO RUNTIME: x")
    assert report.board_line({"board": "k2", "status": "running", "started_utc": "T"}) == (
        "- **k2**: INCOMPLETE - a run started T and never finished (killed or still "
        "running); none of its older numbers are shown")


@pytest.mark.parametrize("runtimes, text", [
    ({}, "no runtime reported"),
    ({"tflite": {"missing": "x"}, "onnx": "junk"}, "TFLite: none"),
    ({"onnx": {"name": "onnxruntime", "version": "1.2", "spacemit_ort": True,
               "providers_available": ["CPUExecutionProvider"]},
      "tflite": {"name": "ai_edge_litert", "version": "2"}},
     "TFLite: ai_edge_litert 2; ONNX: onnxruntime 1.2 (providers: CPU) - spacemit_ort "
     "imported but registered no SpaceMIT provider"),
    ({"onnx": {"name": "onnxruntime", "version": "1.2", "spacemit_ort": True,
               "providers_available": ["SpaceMITExecutionProvider", "CPUExecutionProvider"]}},
     "ONNX: onnxruntime 1.2 (providers: SpaceMIT, CPU)"),
    ({"onnx": {"name": "onnxruntime", "version": "1.2"}}, "ONNX: onnxruntime 1.2"),
])
def test_runtimes_text(runtimes, text):
    assert report.runtimes_text(runtimes) == text


def test_states_labels_and_the_reference_cell_one_by_one():
    assert report.short_provider("SpaceMITExecutionProvider") == "SpaceMIT"
    assert report.short_provider("ExecutionProvider") == "ExecutionProvider"
    assert report.short_provider("Other") == "Other"
    assert report.runtime_label({}) == "? ?"
    assert report.runtime_label({"runtime": {"name": "n", "version": "v"},
                                 "providers": ["AExecutionProvider", "B"]}) == "n v A+B"
    assert report.ort_int8_variants() == ["onnx_int8", "onnx_int8_tflite"]
    assert report.missing_state("NO RUNTIME: none here - pip install it - now") == \
        "NO RUNTIME: none here"
    base = {"fresh": True, "p50_us": 1.0}
    assert report.row_state({**base, "missing": "NO RUNTIME: a - b", "error": "e"}) == \
        "NO RUNTIME: a"
    assert report.row_state({**base, "error": "e", "fresh": False}) == "ERROR e"
    assert report.row_state({**base, "fresh": False, "agreement": 0.5}) == \
        "STALE (model changed since)"
    assert report.row_state({**base, "agreement": 0.5, "disagreements": [1, 2, 3],
                             "old": True}) == "DISAGREES with host on 3 sample(s)"
    assert report.row_state({**base, "agreement": 1.0, "old": True}) == \
        "OLD (measured at an unknown time)"
    assert report.row_state({**base, "agreement": None}) == "ok"
    assert report.vs_reference({"p50_us": 1.0}) == "alone"
    assert report.vs_reference({}) == ""
    assert report.vs_reference({"verdict": {"ratio": 1.0, "low": 0.99, "high": 1.01,
                                            "p": 0.5, "word": "environment"},
                                "reference_sha256": "0123456789"}) == \
        "1.000 [0.990, 1.010] p=0.5 environment vs 01234567"


def test_the_ratio_table_in_full():
    rows = report.latency_rows([two_thread_doc()], {})
    cells = table_cells(report.ratio_table(rows))
    assert cells == [{"build": "m", "board": "k1", "thr": "2", "int8 (TFLite) p50 µs": "20.0",
                      "onnx_int8 (ORT) p50 µs": "30.0", "onnx_int8/TFLite": "1.50",
                      "onnx_int8_tflite (ORT) p50 µs": "", "onnx_int8_tflite/TFLite": ""}]
    emulated = report.latency_rows([{**two_thread_doc(), "emulated": True}], {})
    assert table_cells(report.ratio_table(emulated))[0]["board"] == "k1 (EMULATED)"


def test_ops_by_type_sums_per_op_and_provider_largest_first():
    nodes = [{"op": "Conv", "provider": "P", "median_us": 5.0, "share": 0.25},
             {"op": "Relu", "provider": "P", "median_us": 1.0, "share": 0.125},
             {"op": "Conv", "provider": "P", "median_us": 7.0, "share": 0.5},
             {"op": "Conv", "provider": "Q", "median_us": 2.0, "share": 0.125}]
    assert report.ops_by_type(nodes) == [
        {"op": "Conv", "provider": "P", "nodes": 2, "median_us": 12.0, "share": 0.75},
        {"op": "Conv", "provider": "Q", "nodes": 1, "median_us": 2.0, "share": 0.125},
        {"op": "Relu", "provider": "P", "nodes": 1, "median_us": 1.0, "share": 0.125}]


def test_the_per_op_markdown_of_one_case_in_full():
    nodes = [{"node": f"n{i}", "op": "Conv", "provider": "CPUExecutionProvider",
              "median_us": 2.0, "share": 0.0625} for i in range(16)]
    entry = {"build": "m", "board": "k1", "measured_utc": "T", "cpu_model": "X60", "cases": [
        {"variant": "onnx_int8", "threads": 2, "runtime": "ort 1", "p50_us": 40.0,
         "profiled_runs": 50, "node_sum_us": 32.0, "model_run_us": 35.25,
         "nodes_per_provider": {"CPUExecutionProvider": 16},
         "by_op": report.ops_by_type(nodes), "nodes": nodes}]}
    md = report.render_op_markdown(entry)
    lines = md.splitlines()
    assert lines[0] == "# Per-op profile: m on k1"
    assert "## onnx\\_int8, 2 thread(s)" in lines
    assert ("ort 1; nodes per provider: CPU 16; 50 profiled runs; node sum 32.0 µs, "
            "model\\_run 35.2 µs, timed p50 40.0 µs.") in lines
    rows = table_cells("\n".join(lines[lines.index("## onnx\\_int8, 2 thread(s)") + 4:][:17]))
    assert len(rows) == report.TOP_OPS == 15
    assert rows[1] == {"#": "2", "node": "n1", "op": "Conv", "provider": "CPU",
                       "profiled µs": "2.0", "µs at p50": "2.5", "share %": "6.2",
                       "cumulative %": "12.5"}
    assert "1 more node(s) in the JSON." in lines
    by_op = table_cells("\n".join(lines[lines.index("By op type:") + 2:]))
    assert by_op == [{"op": "Conv", "provider": "CPU", "nodes": "16", "profiled µs": "32.0",
                      "µs at p50": "40.0", "share %": "100.0"}]


def test_op_profiles_keep_ok_and_partial_boards_and_sort_cases():
    profile = {"runs": 5, "node_sum_us": 1.0, "model_run_us": 2.0, "nodes_per_provider": {},
               "nodes": [{"node": "a\x1b[31m", "op": "Conv", "provider": "P",
                          "median_us": 1.0, "share": 1.0}]}
    results = [{"build": "m", "variant": v, "threads": t, "p50_us": 3.0, "profile": profile}
               for v, t in (("onnx_int8", 2), ("onnx_float32", 1), ("onnx_int8", 1))]
    results.append({"build": "m", "variant": "int8", "threads": 1, "profile": {"nodes": []}})
    docs = [doc(board="k1", results=results, machine={"cpu_model": "c\x07"}),
            doc(board="k2", status="failed", results=results),
            doc(board="k3", status="partial", results=results[:1])]
    out = report.op_profiles(docs)
    assert sorted(out) == [("m", "k1"), ("m", "k3")]
    entry = out["m", "k1"]
    assert (entry["build"], entry["board"], entry["cpu_model"]) == ("m", "k1", "c")
    assert [(c["variant"], c["threads"]) for c in entry["cases"]] == [
        ("onnx_float32", 1), ("onnx_int8", 1), ("onnx_int8", 2)]
    case = entry["cases"][0]
    assert (case["p50_us"], case["profiled_runs"], case["node_sum_us"], case["model_run_us"]) \
        == (3.0, 5, 1.0, 2.0)
    assert case["nodes"][0]["node"] == "a" and case["by_op"][0]["nodes"] == 1


def test_latency_md_says_what_it_was_made_from_and_links_the_profiles():
    rows = report.latency_rows([two_thread_doc()], {})
    md = report.render_markdown(rows, [two_thread_doc()], {"m/int8": "0123456789abcdef"},
                                "T", [("m", "k1", "m/ops_k1.md")])
    lines = md.splitlines()
    assert lines[0] == "# On-device latency"
    assert lines[2] == "Made T from these models (SHA-256 prefix): `m/int8` 0123456789ab."
    assert "## ONNX Runtime against TFLite, int8" in lines
    assert "- m on k1: [m/ops\\_k1.md](m/ops_k1.md)" in lines
    empty = report.render_markdown([], [], {}, "T").splitlines()
    assert empty[2].startswith("Made T; no model file exists yet")
    assert "No board has results yet." in empty
    assert "No row: no board returned any result (each board's line above says why)." in empty
    tflite_only = [r for r in rows if r["variant"] != "onnx_int8"]
    assert "## ONNX Runtime against TFLite, int8" not in report.render_markdown(
        tflite_only, [], {}, "T")


def test_missing_and_error_rows_in_full_and_boards_past_a_failed_one():
    ok = {**two_thread_doc(), "emulated": True, "status": "partial",
          "missing": [{"build": "m", "variant": "onnx_int8", "threads": 1,
                       "error": "NO RUNTIME: no ONNX runtime - pip install onnxruntime"}, {}],
          "errors": ["m_int8.tflite x4: boom"]}
    ok["results"] = [{**ok["results"][1], "nodes_per_provider": {"CPU": 3},
                      "pair_skipped": "reference not compared: x", "macs": None}]
    failed = {"board": "k0", "status": "failed", "results": [{"p50_us": 1.0}]}
    rows = report.latency_rows([failed, ok], {}, max_age_hours=24)
    assert [r.get("missing", r.get("error", "timed")) for r in rows] == [
        "timed", "NO RUNTIME: no ONNX runtime - pip install onnxruntime", "None",
        "m_int8.tflite x4: boom"]
    timed, missing, empty, error = rows
    assert timed["nodes_per_provider"] == {"CPU": 3}
    assert timed["pair_skipped"] == "reference not compared: x"
    assert "floor_us" not in timed and timed["macs"] is None  # no MACs: no floor
    stamp = ok["measured_utc"]
    assert missing == {"build": "m", "variant": "onnx_int8", "board": "k1", "threads": 1,
                       "runtime": "", "missing": ok["missing"][0]["error"], "fresh": True,
                       "old": False, "measured_utc": stamp, "emulated": True}
    assert empty == {"build": "", "variant": "", "board": "k1", "threads": "", "runtime": "",
                     "missing": "None", "fresh": True, "old": False, "measured_utc": stamp,
                     "emulated": True}
    assert error == {"build": "", "variant": "", "board": "k1", "threads": "", "runtime": "",
                     "error": "m_int8.tflite x4: boom", "fresh": True, "old": False,
                     "measured_utc": stamp, "emulated": True}
