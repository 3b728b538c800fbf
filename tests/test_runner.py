"""board/runner.py on this host: a real interpreter on tiny converted models."""

import json
import subprocess
import sys
import venv

import numpy as np
import pytest

from pipeline.bench import RUNNER, load_runner
from tests.conftest import synthetic_images


def write_plan(directory, models, threads=(1,), runs=20, cpus=()):
    entries = []
    labels = np.arange(12) % 10
    for key, path in models.items():
        (directory / path.name).write_bytes(path.read_bytes())
        np.savez(directory / f"{path.stem}_samples.npz", x=synthetic_images(labels, 0), y=labels,
                 host=np.zeros(12, np.int64))
        entries.append({"file": path.name, "samples": f"{path.stem}_samples.npz",
                        "host_key": "host", "key": key})
    plan = {"models": entries, "threads": list(threads), "warmup": 3, "runs": runs,
            "cpus": list(cpus)}
    (directory / "plan.json").write_text(json.dumps(plan))
    return directory / "plan.json"


def test_runner_times_every_model_and_thread_count(tmp_path, tiny_models):
    plan = write_plan(tmp_path, tiny_models, threads=(1, 2), cpus=(0,))
    proc = subprocess.run([sys.executable, str(RUNNER), "--plan", str(plan)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtime"]["name"] == "ai_edge_litert" and doc["runtime"]["version"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["uname"]
    assert doc["cpus"] == [0]
    assert len(doc["results"]) == len(tiny_models) * 2
    for r in doc["results"]:
        assert r["runs"] == 20 and r["samples"] == 12
        assert 0 < r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        assert r["init_ms"] > 0 and r["first_us"] > 0 and r["peak_rss_mb"] > 10
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["agreement"] <= 1
        # host predictions were all zeros: every non-zero prediction is a listed disagreement
        assert len(r["disagreements"]) == min(20, round((1 - r["agreement"]) * 12))


def test_runner_predictions_match_the_batched_host_path(tiny_models):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.evaluate import tflite_predict

    images = synthetic_images(np.arange(30) % 10, 9)
    runner = load_runner()
    for path in tiny_models.values():
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        assert runner.predict(interpreter, images) == tflite_predict(path, images, 30).tolist()


def test_quantize_maps_pixels_through_scale_and_zero_point():
    quantize = load_runner().quantize
    pixels = np.array([0, 128, 255], np.uint8)
    q = quantize(pixels, {"dtype": np.int8, "quantization": (1.0, -128)})
    assert q.tolist() == [-128, 0, 127]
    assert quantize(pixels, {"dtype": np.float32, "quantization": (0, 0)}).tolist() == [
        0.0, 128.0, 255.0]


def test_runner_percentiles():
    stats = load_runner().percentile_stats([float(v) for v in range(1, 101)])
    assert stats["p50_us"] == pytest.approx(50.5) and stats["max_us"] == 100.0
    assert stats["p99_us"] == pytest.approx(99.01)


def test_no_runtime_names_what_to_install(tmp_path):
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    proc = subprocess.run([str(env_dir / "bin" / "python"), str(RUNNER), "--plan", "x.json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "no TFLite runtime" in proc.stderr
    assert "pip install ai-edge-litert" in proc.stderr and "riscv64" in proc.stderr
