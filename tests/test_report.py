import json
import subprocess
import sys

import pytest

from pipeline import floor, report
from pipeline.bench import RUNNER, stage_plan
from pipeline.boards import Board
from pipeline.layout import Layout
from tests.conftest import synthetic_images

# The K1 tutorial CNN on 28x28x1, counted by hand:
# conv 26*26*32*(3*3*1) + conv 11*11*64*(3*3*32) + conv 3*3*64*(3*3*64) + 576*64 + 64*10
CNN_MACS = 194_688 + 2_230_272 + 331_776 + 36_864 + 640
MLP_MACS = 784 * 128 + 128 * 10


def test_count_macs_matches_the_hand_count(tiny_models, peak_models):
    for variant in ("float32", "int8"):
        assert floor.count_macs(tiny_models[f"tiny_cnn/{variant}"]) == CNN_MACS
        assert floor.count_macs(tiny_models[f"tiny_mlp/{variant}"]) == MLP_MACS
    for path in peak_models.values():
        assert floor.count_macs(path) == floor.GEMM_MACS


def test_peak_rates_are_best_per_variant_and_monotone_in_threads():
    peak = [{"variant": "int8", "threads": 1, "min_us": 100.0, "macs": 10**6},
            {"variant": "int8", "threads": 1, "min_us": 200.0, "macs": 10**6},
            {"variant": "int8", "threads": 2, "min_us": 400.0, "macs": 10**6},  # noisy
            {"variant": "float32", "threads": 1, "min_us": 1000.0, "macs": 10**6},
            {"variant": "float32", "threads": 2, "error": "timed out"}]
    rates = floor.peak_rates(peak)
    assert rates == {("int8", 1): 1e10, ("int8", 2): 1e10, ("float32", 1): 1e9}
    assert floor.floor_us(10**6, "int8", 2, rates) == pytest.approx(100.0)
    assert floor.floor_us(10**6, "float32", 1, rates) == pytest.approx(1000.0)
    # a variant without its own GEMM gets the fastest rate measured: still a floor
    assert floor.floor_us(10**6, "int8_custom", 1, rates) == pytest.approx(100.0)
    assert floor.floor_us(10**6, "int8", 1, {}) is None


@pytest.fixture(scope="module")
def every_variant(tmp_path_factory):
    """The CNN and MLP in every variant the converter makes, with some training signal."""
    import keras
    import numpy as np

    from pipeline.convert import convert
    from pipeline.train import build_model

    out = tmp_path_factory.mktemp("variants")
    labels = np.arange(300) % 10
    images = synthetic_images(labels, 3)
    paths = {}
    for kind in ("cnn", "mlp"):
        keras.utils.set_random_seed(0)
        model = build_model(kind, (28, 28), 10)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(images[..., None].astype(np.float32), labels, epochs=1, verbose=0)
        for variant in floor.PEAK_VARIANTS:
            path = out / f"v_{kind}_{variant}.tflite"
            path.write_bytes(convert(model, variant, images[:50]))
            paths[f"v_{kind}/{variant}"] = path
    return paths


def test_no_model_runs_faster_than_the_measured_peak(tmp_path, every_variant, peak_models):
    """p50/floor >= 0.9 for every variant: the floor is priced per the kernels really used."""
    import numpy as np

    labels = np.arange(10)
    samples = {k.split("/")[0]: (synthetic_images(labels, 0), labels) for k in every_variant}
    board = Board(name="t", threads=(1, 2), warmup=10, runs=100)
    plan = stage_plan(every_variant, samples, board, tmp_path, peak_models)
    proc = subprocess.run([sys.executable, str(RUNNER), "--plan", str(plan)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rates = floor.peak_rates(doc["peak"])
    assert {v for v, _ in rates} == set(floor.PEAK_VARIANTS)
    by_file = {p.name: (key, p) for key, p in every_variant.items()}
    ratios = {}
    for r in doc["results"]:
        key, path = by_file[r["model"]]
        ratios[key, r["threads"]] = r["p50_us"] / floor.floor_us(
            floor.count_macs(path), key.split("/")[1], r["threads"], rates)
    assert len(ratios) == len(every_variant) * 2
    assert min(ratios.values()) >= 0.9, sorted(ratios.items(), key=lambda kv: kv[1])[:4]


def doc(board="b", status="ok", measured="2026-01-01T00:00:00Z", **extra):
    return {"board": board, "status": status, "measured_utc": measured,
            "runtime": {"name": "r", "version": "1"}, "results": [], **extra}


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
    d = doc(board="k1", machine=machine, runtime={"name": HOSTILE, "version": "1"},
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
