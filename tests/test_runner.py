"""board/runner.py on this host: a real interpreter on tiny converted models."""

import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from pipeline import load_runner
from pipeline.bench import RUNNER, stage_plan
from pipeline.boards import Board
from tests.conftest import synthetic_images, wait_for


def make_plan(directory: Path, models: dict, threads=(1,), runs=20, cpus=(), peak=None,
              **overrides) -> Path:
    """The host's own plan (stage_plan), with optional overrides of its JSON."""
    labels = np.arange(12) % 10
    samples = {key.split("/")[0]: (synthetic_images(labels, 0), labels) for key in models}
    board = Board(name="t", threads=tuple(threads), warmup=3, runs=runs, cpus=tuple(cpus))
    plan_path = stage_plan(models, samples, board, directory, peak)
    if overrides:
        plan = json.loads(plan_path.read_text())
        plan.update(overrides)
        plan_path.write_text(json.dumps(plan))
    return plan_path


def run_runner(plan: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), "--plan", str(plan), *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_runner_times_every_model_thread_count_and_peak(tmp_path, tiny_models, peak_models):
    plan = make_plan(tmp_path, tiny_models, threads=(1, 2), peak=peak_models)
    proc = run_runner(plan)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtime"]["name"] == "ai_edge_litert" and doc["runtime"]["version"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["uname"]
    assert len(doc["results"]) == len(tiny_models) * 2
    assert {(p["variant"], p["threads"]) for p in doc["peak"]} == {
        (v, t) for v in peak_models for t in (1, 2)}
    for p in doc["peak"]:  # a best-of over at least a second, not one busy moment
        assert p["runs"] * p["mean_us"] >= 0.9e6 or p["runs"] == 2000
    for r in doc["results"]:
        assert r["runs"] == 20 and r["samples"] == 12
        assert 0 < r["min_us"] <= r["p10_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] \
            <= r["max_us"]
        assert r["init_ms"] > 0 and r["first_us"] > 0 and r["peak_rss_mb"] > 10
        assert 0 <= r["model_rss_mb"] < r["peak_rss_mb"]
        assert 0 <= r["accuracy"] <= 1 and r["agreement"] == 1.0  # host predicted these
    progress = [json.loads(line[9:]) for line in proc.stderr.splitlines()
                if line.startswith("progress ")]
    assert [p["case"] for p in progress] == list(range(1, len(tiny_models) * 2
                                                       + len(peak_models) * 2 + 1))


def test_cpu_pinning_is_applied_and_reported(tmp_path, tiny_models):
    cpu = max(os.sched_getaffinity(0))
    plan = make_plan(tmp_path, {k: tiny_models[k] for k in ["tiny_mlp/int8"]}, cpus=(cpu,))
    proc = run_runner(plan)
    assert proc.returncode == 0, proc.stderr
    assert [r["cpus"] for r in json.loads(proc.stdout)["results"]] == [[cpu]]


def test_cpus_the_board_lacks_fail_before_timing(tmp_path, tiny_models):
    plan = make_plan(tmp_path, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}, cpus=(0, 4095))
    proc = run_runner(plan)
    assert proc.returncode == 5
    assert "cpus [4095] are not available on this board" in proc.stderr
    assert "progress" not in proc.stderr


@pytest.mark.parametrize("damaged", ["tiny_mlp_int8.tflite", "tiny_mlp_int8_samples.npz"])
def test_a_file_that_does_not_match_the_plan_is_refused(tmp_path, tiny_models, damaged):
    plan = make_plan(tmp_path, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]})
    path = tmp_path / damaged
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    proc = run_runner(plan)
    assert proc.returncode == 5 and "progress" not in proc.stderr
    assert f"{damaged}: SHA-256" in proc.stderr and "does not match the plan" in proc.stderr


def test_each_case_has_its_own_timeout_and_the_plan_a_deadline(tmp_path, tiny_models):
    models = {k: tiny_models[k] for k in ["tiny_cnn/float32", "tiny_mlp/int8"]}
    plan = make_plan(tmp_path, models, runs=10**9, case_timeout_s=3, deadline_s=5)
    started = time.monotonic()
    proc = run_runner(plan, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)["results"]
    assert first["error"] == "timed out after 3 s (case_timeout_s)"
    # the second case got only what was left of the deadline, or nothing
    assert "timed out after 2 s" in second["error"] or "deadline" in second["error"]


def _case_processes(marker: str, runner_pid: int = 0) -> list[int]:
    """Processes whose command line names `marker` (the plan's directory), but the runner."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != runner_pid and \
                    marker in (proc / "cmdline").read_bytes().decode():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_runner_and_its_case_stop_when_stdin_closes(tmp_path, tiny_models):
    plan = make_plan(tmp_path, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}, runs=10**9)
    runner = subprocess.Popen([sys.executable, str(RUNNER), "--plan", str(plan),
                               "--stop-on-eof"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: _case_processes(str(tmp_path), runner.pid), 20), "no case started"
        runner.stdin.close()  # the host went away
        assert runner.wait(timeout=10) == 6
        assert wait_for(lambda: not _case_processes(str(tmp_path)), 5)
    finally:
        runner.kill()
        runner.wait()


def test_the_case_dies_with_a_killed_runner(tmp_path, tiny_models):
    """PR_SET_PDEATHSIG: even a SIGKILLed runner (no handler runs) takes its case with it."""
    plan = make_plan(tmp_path, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}, runs=10**9)
    runner = subprocess.Popen([sys.executable, str(RUNNER), "--plan", str(plan)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _case_processes(str(tmp_path), runner.pid), 20), "no case started"
        runner.kill()
        runner.wait()
        assert wait_for(lambda: not _case_processes(str(tmp_path)), 5)
    finally:
        runner.kill()


def test_runner_predictions_match_the_batched_host_path(tiny_models):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.evaluate import model_predict

    images = synthetic_images(np.arange(30) % 10, 9)
    runner = load_runner()
    for path in tiny_models.values():
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        assert runner.predict(interpreter, images) == model_predict(path, images, 30).tolist()


def test_quantize_divides_by_scale_adds_zero_point_and_rounds():
    quantize = load_runner().quantize
    pixels = np.array([0, 128, 255], np.uint8)
    assert quantize(pixels, {"dtype": np.int8, "quantization": (1.0, -128)}).tolist() == [
        -128, 0, 127]
    # 10 / 0.5 + 3 = 23 (without the division: 13); clipped at 127; below, 2 / 3 = 0.67
    # rounds to 1 (floor would give 0)
    q = quantize(np.array([10, 2, 255], np.uint8), {"dtype": np.int8, "quantization": (0.5, 3)})
    assert q.tolist() == [23, 7, 127]
    q = quantize(np.array([2, 4], np.uint8), {"dtype": np.uint8, "quantization": (3.0, 0)})
    assert q.tolist() == [1, 1]
    assert quantize(pixels, {"dtype": np.float32, "quantization": (0, 0)}).tolist() == [
        0.0, 128.0, 255.0]


def test_runner_statistics():
    stats = load_runner().percentile_stats([float(v) for v in range(1, 101)])
    assert stats["p50_us"] == pytest.approx(50.5) and stats["max_us"] == 100.0
    assert stats["p99_us"] == pytest.approx(99.01) and stats["p10_us"] == pytest.approx(10.9)
    skewed = load_runner().percentile_stats([0.0, 0.0, 0.0, 4.0])
    assert skewed["std_us"] == pytest.approx(np.sqrt(3.0))  # not the variance, 3.0
    assert skewed["mean_us"] == 1.0 and skewed["p50_us"] == 0.0


class SlowStartInterpreter:
    """Stands in for the runtime: the first invokes are slow, as a cold interpreter is."""
    invokes = 0

    def __init__(self, model_path, num_threads):
        pass

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"index": 0, "shape": [1, 2], "dtype": np.float32}]

    def set_tensor(self, index, value):
        pass

    def invoke(self):
        type(self).invokes += 1
        if type(self).invokes <= 6:  # the first invoke and five warm-up invokes
            time.sleep(0.05)


def test_warm_up_invokes_are_not_timed(tmp_path):
    result = load_runner().run_case(tmp_path / "m.tflite", 1, 5, 30, None, None,
                                    SlowStartInterpreter)
    assert SlowStartInterpreter.invokes == 1 + 5 + 30
    assert result["runs"] == 30 and result["warmup"] == 5
    assert result["first_us"] > 40_000 and result["max_us"] < 20_000


def test_no_runtime_and_no_numpy_have_their_own_messages(tmp_path):
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    proc = subprocess.run([str(bare / "bin" / "python"), str(RUNNER), "--plan", "x.json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert "numpy is not importable" in proc.stderr and "pip install numpy" in proc.stderr

    # numpy, and nothing else: a runtime is what is missing now.
    with_numpy = tmp_path / "numpy-only"
    venv.EnvBuilder(with_pip=False).create(with_numpy)
    import numpy

    site = next((with_numpy / "lib").glob("python*/site-packages"))
    source = Path(numpy.__file__).parent
    shutil.copytree(source, site / "numpy", symlinks=True)
    if (source.parent / "numpy.libs").exists():
        shutil.copytree(source.parent / "numpy.libs", site / "numpy.libs")
    proc = subprocess.run([str(with_numpy / "bin" / "python"), str(RUNNER), "--plan", "x.json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no TFLite runtime" in proc.stderr
    assert "pip install ai-edge-litert" in proc.stderr and "riscv64" in proc.stderr
