"""changes.py: change points over the nights, named by night, size and what changed, on a
history with a step made on purpose (values from a seeded generator, medians by hand)."""

import json
import statistics

import numpy as np
import pytest

from pipeline.nightly import changes, history
from pipeline.nightly.report import render_markdown


def noisy(rng: np.random.Generator, n: int, level: float) -> list[float]:
    return list(level * np.exp(rng.normal(0, 0.02, n)))


def test_a_step_is_found_at_its_night_and_a_flat_series_has_none():
    rng = np.random.default_rng(11)
    assert changes.change_points(noisy(rng, 12, 100.0) + noisy(rng, 10, 125.0)) == [12]
    assert changes.change_points(noisy(rng, 30, 100.0)) == []
    # too short for two levels of MIN_NIGHTS each, and one bad night is no level
    assert changes.change_points([100.0, 100.0, 100.0, 200.0, 200.0]) == []
    assert changes.change_points([100.0] * 8 + [300.0] + [100.0] * 8) == []


def night(tmp_path, number: int, p50: float, aa: float, packages: dict) -> dict:
    run_dir = tmp_path / f"n{number}"
    (run_dir / "reports" / "latency").mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps(
        {"code_hash": "c", "packages": packages, "machine": {"cores": 2}}))
    (run_dir / "reports" / "latency" / "k1.json").write_text(json.dumps(
        {"runtimes": {"onnx": {"version": packages["onnxruntime"]}}, "machine": {"c": 1}}))
    row = {"id": number, "started_utc": f"2026-11-{number:02}T02:00:00Z", "commit_sha": "abc",
           "params_hash": "p", "inputs_hash": "i", "run_dir": str(run_dir)}
    latency = [{"build": "b", "variant": "int8", "board": "k1", "threads": 1, "p50_us": p50,
                "status": "ok", "error": None, "ratio": aa, "word": "environment"}]
    return row, history.as_figures([], [{"board": "k1", "status": "ok", "error": None}],
                                   latency)


def test_the_morning_report_names_the_night_the_size_and_what_changed(tmp_path):
    rng = np.random.default_rng(5)
    p50 = noisy(rng, 10, 200.0) + noisy(rng, 8, 260.0)   # +30 % from night 11
    aa = [1.0 + d for d in rng.normal(0, 0.003, 18)]     # flat
    runs, figures = [], {}
    for number in range(1, 19):
        packages = {"onnxruntime": "1.31.0" if number <= 10 else "1.32.0", "numpy": "2.4"}
        row, figs = night(tmp_path, number, p50[number - 1], aa[number - 1], packages)
        runs.append(row)
        figures[number] = figs
    [change] = changes.find_changes(runs, figures)
    assert (change["figure"], change["run_id"], change["board"]) == ("p50", 11, "k1")
    assert change["before"] == pytest.approx(statistics.median(p50[:10]))
    assert change["after"] == pytest.approx(statistics.median(p50[10:]))
    assert change["change_pct"] == pytest.approx(
        (statistics.median(p50[10:]) / statistics.median(p50[:10]) - 1) * 100)
    assert (change["nights_before"], change["nights_after"]) == (10, 8)
    assert change["what_changed"] == ["packages: onnxruntime 1.31.0 → 1.32.0",
                                      "board k1's runtime versions"]
    text = "\n".join(changes.render([change]))
    assert ("- b int8 on k1 x1, p50: changed at run 11 (2026-11-11T02:00:00Z) by "
            f"{change['change_pct']:+.1f} %") in text
    assert "that night: packages: onnxruntime 1.31.0 → 1.32.0; board k1's runtime" in text
    md = render_markdown({"id": 18, "status": "ok", "started_utc": "t"}, None, [],
                         {"accuracy": [], "latency": [], "boards": []}, [], None,
                         changes=[change])
    assert "## Change points" in md and "changed at run 11" in md


def test_an_aa_ratio_step_is_a_change_of_the_board_and_a_pruned_manifest_is_said():
    rng = np.random.default_rng(8)
    aa = [1.0 + d for d in rng.normal(0, 0.003, 8)] + [1.08 + d for d in
                                                        rng.normal(0, 0.003, 7)]
    runs = [{"id": i + 1, "started_utc": "t", "run_dir": "/nonexistent"} for i in range(15)]
    figures = {i + 1: history.as_figures([], [], [
        {"build": "b", "variant": "int8", "board": "k1", "threads": 1, "p50_us": 100.0,
         "status": "ok", "error": None, "ratio": aa[i], "word": "environment"}])
        for i in range(15)}
    [change] = changes.find_changes(runs, figures)
    assert (change["figure"], change["run_id"]) == ("A/A ratio", 9)
    assert change["change_pct"] == pytest.approx(
        (statistics.median(aa[8:]) / statistics.median(aa[:8]) - 1) * 100)
    assert change["what_changed"] == ["manifests of those nights pruned (keep_runs)"]


def test_no_change_is_said_in_the_report():
    assert "No series changed level" in "\n".join(changes.render([]))
