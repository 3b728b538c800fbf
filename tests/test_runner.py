"""board/runner.py on this host: a real interpreter on tiny converted models."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from pipeline import load_runner
from pipeline import RUNNER
from pipeline.bench.plan import plan_deadline_s, stage_plan
from pipeline.core.boards import Board
from tests.conftest import synthetic_images, wait_for


def make_plan(directory: Path, models: dict, threads=(1,), runs=20, cpus=(), peak=None,
              peak_seconds=0.3, **overrides) -> Path:
    """The host's own plan (stage_plan), with optional overrides of its JSON."""
    labels = np.arange(12) % 10
    samples = {key.split("/")[0]: (synthetic_images(labels, 0), labels) for key in models}
    board = Board(name="t", threads=tuple(threads), warmup=3, runs=runs, cpus=tuple(cpus),
                  peak_seconds=peak_seconds)
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
    assert doc["runtimes"]["tflite"]["name"] == "ai_edge_litert"
    assert doc["runtimes"]["tflite"]["version"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["uname"]
    assert len(doc["results"]) == len(tiny_models) * 2
    assert {(p["variant"], p["threads"]) for p in doc["peak"]} == {
        (v, t) for v in peak_models for t in (1, 2)}
    # A best-of over at least the board's peak_seconds (not one busy moment), or the cap of
    # 100 x 20 runs; the plan gives each peak case that much more time.
    written = json.loads(plan.read_text())
    assert written["peak_seconds"] == 0.3
    cases = (len(tiny_models) + len(peak_models)) * 2
    case_s, deadline_s = plan_deadline_s(cases, 3, 20, 12)
    assert (written["case_timeout_s"], written["deadline_s"]) == pytest.approx(
        (case_s + 0.3, deadline_s + 0.3 * len(peak_models) * 2))
    for p in doc["peak"]:
        assert p["runs"] * p["mean_us"] >= 0.3e6 * (1 - 1e-9) or p["runs"] == 2000
        if 20 < p["runs"] < 2000:  # it stopped at the first invoke past the budget, not later
            assert p["runs"] * p["mean_us"] - p["max_us"] < 0.3e6 * (1 + 1e-9), p
    for r in doc["results"]:
        assert r["runs"] == 20 and r["samples"] == 12
        assert 0 < r["min_us"] <= r["p10_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] \
            <= r["max_us"]
        assert r["init_ms"] > 0 and r["first_us"] > 0 and r["peak_rss_mb"] > 10
        assert 0 <= r["model_rss_mb"] < r["peak_rss_mb"]
        assert 0 <= r["accuracy"] <= 1 and r["agreement"] == 1.0  # host predicted these
        assert r["runtime"] == doc["runtimes"]["tflite"] and "profile" not in r
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

    from pipeline.stages.evaluate import model_predict

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
    # below the type's range: clipped at -128 (0 / 1 - 200 = -200 would wrap to 56)
    q = quantize(np.array([0, 100], np.uint8), {"dtype": np.int8, "quantization": (1.0, -200)})
    assert q.tolist() == [-128, -100]
    assert quantize(pixels, {"dtype": np.float32, "quantization": (0, 0)}).tolist() == [
        0.0, 128.0, 255.0]


def test_runner_statistics():
    stats = load_runner().percentile_stats([float(v) for v in range(1, 101)])
    assert stats["p50_us"] == pytest.approx(50.5) and stats["max_us"] == 100.0
    assert stats["p99_us"] == pytest.approx(99.01) and stats["p10_us"] == pytest.approx(10.9)
    skewed = load_runner().percentile_stats([0.0, 0.0, 0.0, 4.0])
    assert skewed["std_us"] == pytest.approx(np.sqrt(3.0))  # not the variance, 3.0
    assert skewed["mean_us"] == 1.0 and skewed["p50_us"] == 0.0


def test_runner_statistics_against_the_statistics_module():
    """Every figure of percentile_stats on skewed random samples, against Python's statistics
    module (inclusive quantiles: the same linear interpolation as numpy's default)."""
    import statistics

    samples = [float(v) for v in np.random.default_rng(3).lognormal(5.0, 0.6, 37)]
    stats = load_runner().percentile_stats(samples)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    assert stats == pytest.approx({
        "mean_us": statistics.fmean(samples), "std_us": statistics.pstdev(samples),
        "min_us": min(samples), "max_us": max(samples), "p10_us": cuts[9],
        "p50_us": statistics.median(samples), "p90_us": cuts[89], "p99_us": cuts[98]},
        rel=1e-12)


def test_scale_and_zero_point_from_the_command_line():
    parse = load_runner().scale_zero_point
    assert parse("0.00390625,-128") == (0.00390625, -128)
    assert isinstance(parse("2,3")[0], float) and isinstance(parse("2,3")[1], int)
    assert parse(None) is None and parse("") is None


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
    SlowStartInterpreter.invokes = 0  # a second run in one process (mutmut's) starts afresh
    result = load_runner().run_case(tmp_path / "m.tflite", 1, 5, 30, None, None,
                                    SlowStartInterpreter)
    assert SlowStartInterpreter.invokes == 1 + 5 + 30
    assert result["runs"] == 30 and result["warmup"] == 5
    assert result["first_us"] > 40_000 and result["max_us"] < 20_000


@pytest.mark.other_python
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


# --- ONNX models and a board python without TFLite ------------------------------------------


def onnx_mlp(integer_input: bool = False, seed: int = 0, hidden: int = 64):
    """A real Flatten -> Dense `hidden` -> ReLU -> Dense 10 -> Softmax ONNX graph with a static batch
    of one, on raw pixels (the 1/255 is a Mul inside, as the pipeline's Rescaling). With
    `integer_input` the graph input is int8 (q = pixel - 128, scale 1) and a DequantizeLinear
    reads it, as in the int8 .tflite translated by tf2onnx."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(a, n) for n, a in (
        ("shape", np.array([1, 784], np.int64)), ("inv255", np.array(1 / 255, np.float32)),
        ("w1", (rng.standard_normal((784, hidden)) * 0.1).astype(np.float32)),
        ("b1", (rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        ("w2", (rng.standard_normal((hidden, 10)) * 0.3).astype(np.float32)),
        ("b2", (rng.standard_normal(10) * 0.1).astype(np.float32)))]
    nodes = [helper.make_node("Reshape", ["pixels", "shape"], ["flat"], name="flatten"),
             helper.make_node("Mul", ["flat", "inv255"], ["scaled"], name="rescale"),
             helper.make_node("MatMul", ["scaled", "w1"], ["h0"], name="dense1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "w2"], ["l0"], name="dense2"),
             helper.make_node("Add", ["l0", "b2"], ["logits"], name="bias2"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax")]
    elem = TensorProto.FLOAT
    if integer_input:
        init += [numpy_helper.from_array(np.array(1.0, np.float32), "in_scale"),
                 numpy_helper.from_array(np.array(-128, np.int8), "in_zp")]
        # (q - zero_point) * scale = q + 128 = the pixel the float graph reads
        nodes.insert(0, helper.make_node("DequantizeLinear", ["q", "in_scale", "in_zp"],
                                         ["pixels"], name="dequantize_input"))
        elem = TensorProto.INT8
    graph = helper.make_graph(
        nodes, "tiny_mlp", [helper.make_tensor_value_info(
            "q" if integer_input else "pixels", elem, [1, 28, 28, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.21 loads
    return model


def write_onnx_models(directory: Path, build: str = "tiny_mlp", hidden: int = 64
                      ) -> dict[str, Path]:
    """<build>_onnx_float32.onnx, <build>_onnx_int8.onnx (QDQ by quantize_static) and
    <build>_onnx_int8_tflite.onnx (int8 graph input), keyed "<build>/<variant>"."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    directory.mkdir(parents=True, exist_ok=True)
    float_path = directory / f"{build}_onnx_float32.onnx"
    onnx.save(onnx_mlp(hidden=hidden), str(float_path))
    images = synthetic_images(np.arange(50) % 10, 3).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"pixels": i[np.newaxis, ..., np.newaxis]} for i in images)

        def get_next(self):
            return next(self.items, None)

    int8_path = directory / f"{build}_onnx_int8.onnx"
    quantize_static(str(float_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    translated = directory / f"{build}_onnx_int8_tflite.onnx"
    onnx.save(onnx_mlp(integer_input=True, hidden=hidden), str(translated))
    return {f"{build}/onnx_float32": float_path, f"{build}/onnx_int8": int8_path,
            f"{build}/onnx_int8_tflite": translated}


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    return write_onnx_models(tmp_path_factory.mktemp("onnx_models"))


def exposing_only(directory: Path, *modules: str) -> Path:
    """A venv whose python can import numpy and exactly `modules` of this interpreter's
    site-packages (a .pth names a directory of symlinks to them), nothing else: a board with
    onnxruntime but no TFLite runtime, or the reverse."""
    import importlib.util

    venv.EnvBuilder(with_pip=False, symlinks=True).create(directory)
    links = directory / "exposed"
    links.mkdir()
    for name in ("numpy", *modules):
        spec = importlib.util.find_spec(name)
        source = Path(spec.origin).parent if spec.submodule_search_locations is not None \
            else Path(spec.origin)
        (links / source.name).symlink_to(source)
        for extra in source.parent.glob(f"{name}.libs"):
            if not (links / extra.name).exists():
                (links / extra.name).symlink_to(extra)
        # distribution metadata, for importlib.metadata.version()
        for meta in source.parent.glob(f"{name.replace('_', '?')}*.dist-info"):
            (links / meta.name).symlink_to(meta)
    site = next((directory / "lib").glob("python*/site-packages"))
    (site / "exposed.pth").write_text(str(links) + "\n")
    return directory / "bin" / "python"


def hand_plan(directory: Path, models: dict, threads=(1,), runs=30, labels=None,
              quantization=None, **extra) -> Path:
    """A plan written here, without the host's predictions (the runner needs none), so the
    runner is tested on its own: `models` maps keys to files copied beside the plan."""
    from pipeline.bench.plan import npz_bytes
    from pipeline.core.files import sha256_file

    directory.mkdir(parents=True, exist_ok=True)
    labels = np.arange(12) % 10 if labels is None else labels
    samples = directory / "samples.npz"
    samples.write_bytes(npz_bytes(x=synthetic_images(labels, 0), y=labels))
    entries = []
    for key, path in models.items():
        shutil.copy(path, directory / Path(path).name)
        entry = {"file": Path(path).name, "sha256": sha256_file(path), "key": key,
                 "samples": samples.name, "samples_sha256": sha256_file(samples)}
        if (quantization or {}).get(key):
            entry["input_quantization"] = quantization[key]
        entries.append(entry)
    plan = {"models": entries, "peak": [], "threads": list(threads), "warmup": 5, "runs": runs,
            "cpus": [], "case_timeout_s": 120, "deadline_s": 600, **extra}
    (directory / "plan.json").write_text(json.dumps(plan))
    return directory / "plan.json"


TRANSLATED_INPUT = {"tiny_mlp/onnx_int8_tflite": [1.0, -128]}  # q = pixel - 128


@pytest.fixture(scope="module")
def wide_onnx_models(tmp_path_factory) -> dict[str, Path]:
    """The same three ONNX models with 2,048 hidden units (50-100 µs here): big enough that
    kernels, not per-run overhead, make most of an invoke."""
    return write_onnx_models(tmp_path_factory.mktemp("wide"), "wide_mlp", hidden=2048)


def test_onnx_models_run_under_onnxruntime_with_a_per_op_profile(tmp_path, wide_onnx_models):
    import onnxruntime

    plan = hand_plan(tmp_path, wide_onnx_models, threads=(1, 2), runs=200,
                     quantization={"wide_mlp/onnx_int8_tflite": [1.0, -128]})
    proc = run_runner(plan)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtimes"]["onnx"]["name"] == "onnxruntime"
    assert doc["runtimes"]["onnx"]["version"] == onnxruntime.__version__
    assert doc["runtimes"]["onnx"]["spacemit_ort"] is False
    assert len(doc["results"]) == 3 * 2
    accuracy = {}
    for r in doc["results"]:
        assert "error" not in r, r
        assert r["runtime"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
        assert r["providers"] == ["CPUExecutionProvider"]
        profile = r["profile"]
        assert profile["runs"] == load_runner().PROFILE_RUNS
        assert r["nodes_per_provider"] == {"CPUExecutionProvider": len(profile["nodes"])}
        assert abs(sum(n["share"] for n in profile["nodes"]) - 1) < 1e-9
        ops = {n["op"] for n in profile["nodes"]}
        assert any("MatMul" in op or "Gemm" in op for op in ops), ops  # as ORT fused them
        # Nodes run one after another inside run() (one inter-op thread): their sum is at
        # most the profiled run, and most of it.
        assert 0.5 * profile["model_run_us"] <= profile["node_sum_us"] \
            <= profile["model_run_us"] + 1, profile
        # Against the timed, unprofiled p50 (one thread): a check of units (ms for µs is
        # 1000x), not of precision. The two are timed in different phases of the case, so
        # a loaded machine moves their ratio (2.67 seen where 1.0-1.75 is usual: ORT's
        # profiler adds bookkeeping to every node, the p50 pays the Python call). Per-op µs
        # are therefore upper bounds; their shares are the figure, and the same-session
        # bound above checks their sum.
        if r["threads"] == 1:
            assert 0.2 <= profile["node_sum_us"] / r["p50_us"] <= 10, (profile, r["p50_us"])
        accuracy[r["model"]] = r["accuracy"]
    # the int8-input model is fed q = pixel - 128: the same answers as the float model
    assert accuracy["wide_mlp_onnx_int8_tflite.onnx"] == accuracy["wide_mlp_onnx_float32.onnx"]
    assert not list(tmp_path.glob(".*profile*"))  # the trace files are removed


def test_an_integer_onnx_input_needs_its_quantization_from_the_plan(tmp_path, onnx_models):
    key = "tiny_mlp/onnx_int8_tflite"
    proc = run_runner(hand_plan(tmp_path, {key: onnx_models[key]}))
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    assert "no input_quantization" in result["error"]


def test_parse_profile_against_a_hand_made_trace():
    def node(name, op, provider, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": provider}}

    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50}]
    # the first run is a warm-up; the last one was preempted in conv
    for run, (a, b) in enumerate([(100, 100), (6, 2), (8, 4), (200, 3)]):
        t = 1000 * (run + 1)
        events += [node("conv", "Conv", "SpaceMITExecutionProvider", t + 1, a),
                   node("fc", "Gemm", "CPUExecutionProvider", t + 1 + a, b),
                   {"cat": "Node", "name": "fc_fence_before", "ts": t + 1, "dur": 0},
                   {"cat": "Session", "name": "model_run", "ts": t, "dur": a + b + 3}]
    assert load_runner().parse_profile(events)["runs"] == 4  # none skipped unless asked
    profile = load_runner().parse_profile(events, skip_runs=1)
    assert profile["runs"] == 3
    conv, fc = profile["nodes"]
    # medians over the three runs: conv 8 (not the mean, 71.3), fc 3
    assert (conv["node"], conv["op"], conv["median_us"]) == ("conv", "Conv", 8.0)
    assert (fc["node"], fc["provider"], fc["median_us"]) == ("fc", "CPUExecutionProvider", 3.0)
    assert conv["share"] == pytest.approx(8 / 11) and fc["share"] == pytest.approx(3 / 11)
    assert profile["node_sum_us"] == pytest.approx(12.0)   # median of 8, 12 and 203
    assert profile["model_run_us"] == pytest.approx(15.0)  # median of 11, 15 and 206
    assert profile["nodes_per_provider"] == {"SpaceMITExecutionProvider": 1,
                                             "CPUExecutionProvider": 1}


def test_parse_profile_edges_of_a_run_repeated_nodes_and_an_empty_trace():
    """Kernels at a run's first and last microsecond belong to it; a node run twice in one run
    counts twice; a kernel event without args is '?'; nodes per provider are counted; a
    trace without runs gives zeros, not NaN. Figures by hand."""
    parse = load_runner().parse_profile
    run = {"cat": "Session", "name": "model_run", "ts": 100, "dur": 50}     # 100..150

    def kernel(name, ts, dur, args=None):
        event = {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur}
        return {**event, "args": args} if args is not None else event

    cpu = {"op_name": "Add", "provider": "CPUExecutionProvider"}
    events = [run, kernel("first", 100, 4, cpu), kernel("last", 150, 0, cpu),
              kernel("loop", 110, 3, cpu), kernel("loop", 120, 5, cpu),
              kernel("bare", 130, 2), kernel("late", 151, 7, cpu)]
    profile = parse(events)
    by_node = {n["node"]: n for n in profile["nodes"]}
    assert {k: n["median_us"] for k, n in by_node.items()} == {
        "first": 4.0, "last": 0.0, "loop": 8.0, "bare": 2.0}       # "late" is after the run
    assert (by_node["bare"]["op"], by_node["bare"]["provider"]) == ("?", "?")
    assert profile["nodes_per_provider"] == {"CPUExecutionProvider": 3, "?": 1}
    assert profile["node_sum_us"] == 14.0 and profile["model_run_us"] == 50.0
    assert by_node["loop"]["share"] == pytest.approx(8 / 14)
    assert parse([]) == {"runs": 0, "nodes": [], "nodes_per_provider": {},
                         "node_sum_us": 0.0, "model_run_us": 0.0}


def test_ort_threads_spin_only_with_a_cpu_to_spare(tiny_onnx_models):
    runner = load_runner()
    # threads x CPUs: a pool thread may spin only if a CPU is left for it
    assert [runner.ort_spinning(t, c) for t, c in ((1, 8), (2, 2), (2, 3), (4, 8), (8, 8),
                                                  (3, 2))] == [
        False, False, True, True, False, False]
    model = next(iter(tiny_onnx_models.values()))
    for threads in (1, 2, runner.usable_cpus() + 1):
        session = runner.OrtInterpreter(model, threads, input_quantization=(1.0, -128))
        entry = session.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning")
        assert (entry, session.spinning) == (
            ("1", True) if 1 < threads < runner.usable_cpus() else ("0", False)), threads


def test_provider_choice():
    choose = load_runner().choose_providers
    both = ["SpaceMITExecutionProvider", "CPUExecutionProvider"]
    assert choose(both, True, 4) == [
        ("SpaceMITExecutionProvider", {"SPACEMIT_EP_INTRA_THREAD_NUM": "4"}),
        "CPUExecutionProvider"]
    # imported but registered nothing: not asked for
    assert choose(["CPUExecutionProvider"], True, 4) == ["CPUExecutionProvider"]
    # registered by something else, but SpacemiT's package is not there: not asked for
    assert choose(both, False, 1) == ["CPUExecutionProvider"]


@pytest.mark.other_python
def test_a_spacemit_ort_that_registers_nothing_is_reported_as_it_is(tmp_path, onnx_models):
    """A fake-but-real spacemit_ort (importable, registers no provider): the runner must
    report the providers the session really has, and say the package gave nothing."""
    python = exposing_only(tmp_path / "venv", "onnxruntime")
    fake = tmp_path / "venv" / "exposed" / "spacemit_ort"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stands in for SpacemiT's package; registers nothing\n")
    key = "tiny_mlp/onnx_int8"
    plan = hand_plan(tmp_path / "plan", {key: onnx_models[key]}, threads=(2,))
    proc = subprocess.run([str(python), str(RUNNER), "--plan", str(plan)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    onnx_info = doc["runtimes"]["onnx"]
    assert onnx_info["spacemit_ort"] is True
    assert "SpaceMITExecutionProvider" not in onnx_info["providers_available"]
    (result,) = doc["results"]
    assert result["providers"] == ["CPUExecutionProvider"]
    assert result["nodes_per_provider"].keys() == {"CPUExecutionProvider"}


@pytest.mark.other_python
def test_a_board_with_onnxruntime_only_times_onnx_and_marks_tflite(tmp_path, tiny_models,
                                                                   onnx_models):
    python = exposing_only(tmp_path / "venv", "onnxruntime")
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"], **onnx_models}
    plan = hand_plan(tmp_path / "plan", models, quantization=TRANSLATED_INPUT)
    proc = subprocess.run([str(python), str(RUNNER), "--plan", str(plan)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runtimes"]["tflite"]["missing"].startswith(
        "NO RUNTIME: no TFLite runtime on this board")
    by_model = {r["model"]: r for r in doc["results"]}
    tflite = by_model.pop("tiny_mlp_int8.tflite")
    assert tflite["error"].startswith("NO RUNTIME: no TFLite runtime on this board")
    assert "pip install ai-edge-litert" in tflite["error"] and "riscv64" in tflite["error"]
    assert tflite["no_runtime"] == "tflite"
    assert len(by_model) == 3 and all("p50_us" in r for r in by_model.values())


@pytest.mark.other_python
def test_a_board_with_tflite_only_marks_the_onnx_rows(tmp_path, tiny_models, onnx_models):
    python = exposing_only(tmp_path / "venv", "ai_edge_litert")
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"],
              "tiny_mlp/onnx_int8": onnx_models["tiny_mlp/onnx_int8"]}
    proc = subprocess.run([str(python), str(RUNNER), "--plan",
                           str(hand_plan(tmp_path / "plan", models))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    by_model = {r["model"]: r for r in json.loads(proc.stdout)["results"]}
    assert by_model["tiny_mlp_int8.tflite"]["p50_us"] > 0
    onnx_row = by_model["tiny_mlp_onnx_int8.onnx"]
    assert onnx_row["error"].startswith("NO RUNTIME: no ONNX runtime on this board")
    assert "apt install python3-onnxruntime" in onnx_row["error"]


@pytest.mark.other_python
def test_a_plan_nothing_of_which_can_run_fails_as_before(tmp_path, tiny_models):
    python = exposing_only(tmp_path / "venv", "onnxruntime")
    plan = hand_plan(tmp_path / "plan", {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]})
    proc = subprocess.run([str(python), str(RUNNER), "--plan", str(plan)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "no TFLite runtime" in proc.stderr
    assert "progress" not in proc.stderr


def test_an_integer_onnx_output_gives_the_top1_of_its_integers(tmp_path):
    """onnxruntime does not tell an int8 output's scale: the runner must not dequantize it with
    0 (every answer was class 0); its top-1 is that of the integers."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    runner = load_runner()
    model = onnx_mlp(seed=3)
    float_path = tmp_path / "float.onnx"
    onnx.save(model, float_path)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(1 / 256, np.float32), "o_scale"),
                              numpy_helper.from_array(np.array(-128, np.int8), "o_zp")])
    graph.node.append(helper.make_node("QuantizeLinear", ["probs", "o_scale", "o_zp"], ["q_out"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("q_out", TensorProto.INT8, [1, 10]))
    int8_path = tmp_path / "int8_output.onnx"
    onnx.save(model, int8_path)
    images = synthetic_images(np.arange(40) % 10, seed=5)
    session = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    # Independent: the float graph's probabilities quantized here, then their argmax.
    expected = [int(np.argmax(np.clip(np.round(session.run(None, {"pixels": image[
        np.newaxis, ..., np.newaxis].astype(np.float32)})[0][0] * 256) - 128, -128, 127)))
        for image in images]
    labels = runner.predict(runner.OrtInterpreter(int8_path, 1), images)
    assert labels == expected
    assert len(set(expected)) > 1  # not one class for all: the old bug would pass otherwise


class BusyInterpreter:
    """Each invoke busy-waits a time set by its file name ('<µs>us_....tflite'): a model of
    known cost, so the side-by-side figures can be checked against the clock."""

    def __init__(self, model_path, num_threads):
        self.cost_s = float(Path(model_path).name.split("us_")[0]) * 1e-6
        self.shape = [1, 4] if "wide" in Path(model_path).name else [1, 2]

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"index": 0, "shape": self.shape, "dtype": np.float32, "quantization": (0, 0)}]

    def set_tensor(self, index, value):
        pass

    def invoke(self):
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass


def test_a_pair_is_timed_interleaved_until_rounds_and_seconds_are_reached(tmp_path):
    runner = load_runner()
    start = time.perf_counter()
    result = runner.run_case(tmp_path / "1500us_new.tflite", 1, 3, 10, None, None,
                             BusyInterpreter, reference=tmp_path / "1000us_old.tflite",
                             pairing={"min_rounds": 12, "min_seconds": 0.3, "seed": 5})
    wall = time.perf_counter() - start
    pair = result["pair"]
    assert pair["reference"] == "1000us_old.tflite" and pair["rounds"] >= 12
    # The pilot is the median of 3 + 3 invokes of both: at least the cheaper one's cost
    # (clock bound), and on a loaded machine longer. 0.3 s / 12 rounds / pilot invokes per
    # round: 20 at the nominal ~1.25 ms, fewer when the machine stretched the pilot.
    assert pair["pilot_us"] >= 1000
    assert pair["round_invokes"] == math.ceil(0.3e6 / 12 / pair["pilot_us"])
    assert pair["round_invokes"] <= 25
    assert result["runs"] == pair["rounds"] * pair["round_invokes"]
    assert len(pair["candidate_us"]) == len(pair["reference_us"]) == pair["rounds"]
    # both models ran first in some rounds (the order is drawn per round)
    assert set(pair["first"]) == {"c", "r"} and len(pair["first"]) == pair["rounds"]
    # clock bounds: each invoke lasts at least its cost; the whole case at least both budgets
    assert min(pair["candidate_us"]) >= 1500 and min(pair["reference_us"]) >= 1000
    assert wall >= result["runs"] * 2.5e-3
    ratio = np.median(pair["candidate_us"]) / np.median(pair["reference_us"])
    assert ratio == pytest.approx(1.5, rel=0.1)
    assert pair["reference_p50_us"] == pytest.approx(1000, rel=0.1)


class CountingInterpreter(BusyInterpreter):
    """A BusyInterpreter that counts its invokes per file name, and whose input is int8 with a
    scale and zero point when its name says so ('<µs>us_q_<scale>_<zero point>_<name>')."""
    invokes: dict = {}
    threads: dict = {}
    inputs: dict = {}  # name -> (index, value) of its last set_tensor

    def __init__(self, model_path, num_threads):
        super().__init__(model_path, num_threads)
        self.name = Path(model_path).name
        type(self).invokes[self.name] = 0
        type(self).threads[self.name] = num_threads
        parts = self.name.split("_")
        self.quantization = (float(parts[2]), int(parts[3])) if parts[1] == "q" else (0, 0)

    def set_tensor(self, index, value):
        type(self).inputs[self.name] = (index, value)

    def get_input_details(self):
        dtype = np.int8 if self.quantization[0] else np.float32
        return [{"index": 0, "shape": self.shape, "dtype": dtype,
                 "quantization": self.quantization}]

    def invoke(self):
        type(self).invokes[self.name] += 1
        super().invoke()


def test_each_model_of_a_pair_is_invoked_as_counted_by_hand(tmp_path):
    """1 first invoke + 4 warm-up + 3 pilot + 6 rounds x ceil(12 / 6) timed: 20 each."""
    CountingInterpreter.invokes = {}  # only this test's models
    result = load_runner().run_case(
        tmp_path / "20us_new.tflite", 2, 4, 12, None, None, CountingInterpreter,
        reference=tmp_path / "10us_old.tflite",
        pairing={"min_rounds": 6, "min_seconds": 0.0, "seed": 1})
    assert CountingInterpreter.invokes == {"20us_new.tflite": 20, "10us_old.tflite": 20}
    # both at the case's thread count, both given the same first input (zeros: no samples)
    assert CountingInterpreter.threads["10us_old.tflite"] == 2 == result["threads"]
    (index, given), (_, own) = (CountingInterpreter.inputs["10us_old.tflite"],
                                CountingInterpreter.inputs["20us_new.tflite"])
    assert index == 0 and given is own and given.tolist() == [[0.0, 0.0]]
    assert (result["runs"], result["warmup"], result["pair"]["round_invokes"]) == (12, 4, 2)
    assert result["pair"]["reference"] == "10us_old.tflite"
    assert result["pair"]["pilot_us"] >= 10  # the median of 3 + 3 invokes of 10 and 20 µs


def test_a_reference_with_another_input_quantization_is_not_compared(tmp_path):
    run_case = load_runner().run_case
    pairing = {"min_rounds": 2, "min_seconds": 0.0}
    result = run_case(tmp_path / "20us_q_0.3333333333_3_new.tflite", 1, 0, 4, None, None,
                      CountingInterpreter, reference=tmp_path / "10us_q_0.25_-1_old.tflite",
                      pairing=pairing)
    assert result["pair_skipped"] == (
        "reference not compared: reference 10us_q_0.25_-1_old.tflite takes [1, 2] int8 "
        "(scale 0.25, zero point -1), this model [1, 2] int8 (scale 0.333333, zero point 3)")
    assert "pair" not in result and result["runs"] == 4
    wide = run_case(tmp_path / "20us_new.tflite", 1, 0, 4, None, None, CountingInterpreter,
                    reference=tmp_path / "10us_wide_old.tflite", pairing=pairing)
    assert wide["pair_skipped"] == ("reference not compared: reference 10us_wide_old.tflite "
                                    "takes [1, 4] float32, this model [1, 2] float32")
    same = run_case(tmp_path / "20us_q_0.25_-1_new.tflite", 1, 0, 4, None, None,
                    CountingInterpreter, reference=tmp_path / "10us_q_0.25_-1_old.tflite",
                    pairing=pairing)
    assert same["pair"]["rounds"] == 2 and "pair_skipped" not in same


class AllocatingInterpreter(BusyInterpreter):
    """Allocating takes 30 ms (and no memory: a model's memory is measured in a fresh
    process by test_a_models_memory_is_what_loading_it_added_and_the_peak_is_getrusages)."""

    def allocate_tensors(self):
        time.sleep(0.03)


def vm_rss_mb() -> float:
    """This process's resident memory from /proc/self/status (kB), not statm's pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_cases_time_budget_cap_units_peak_memory_and_cpus(tmp_path):
    import resource

    runner = load_runner()
    # timing goes on past `runs` until 10 ms were timed: the invokes before the last one
    # had not reached it
    r = runner.run_case(tmp_path / "100us_a.tflite", 1, 0, 5, None, None, BusyInterpreter,
                        min_seconds=0.01)
    assert r["runs"] >= 5 and r["mean_us"] * r["runs"] >= 10_000
    assert (r["runs"] - 1) * r["min_us"] < 10_000
    # ... but at most 100 x runs invokes
    r = runner.run_case(tmp_path / "100us_b.tflite", 1, 0, 2, None, None, BusyInterpreter,
                        min_seconds=10.0)
    assert r["runs"] == 200
    # loading in ms (30 ms of sleep: not 0.03, not 30,000), first invoke in µs
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    small = runner.run_case(tmp_path / "100us_small.tflite", 1, 0, 3, None, None,
                            AllocatingInterpreter)
    assert 30 <= small["init_ms"] < 3000 and 100 <= small["first_us"] < 100_000
    assert small["model_rss_mb"] < 0.5  # it kept nothing
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_before <= small["peak_rss_mb"] <= peak_after
    assert small["cpus"] == sorted(os.sched_getaffinity(0))
    assert abs(runner.rss_mb() - vm_rss_mb()) < 2


def test_a_cases_accuracy_agreement_and_disagreements_by_hand(tmp_path, tiny_models):
    """25 images: the host's answers differ from the model's in 22 (the first 20 of them are
    listed), the labels agree with the model's in a counted number."""
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.stages.evaluate import model_predict

    path = tiny_models["tiny_cnn/int8"]
    images = synthetic_images(np.arange(25) % 10, 9)
    model = model_predict(path, images, 25)          # the host's batched path
    host = model.copy()
    host[3:] = (host[3:] + 1) % 10
    labels = model.copy()
    labels[::4] = (labels[::4] + 5) % 10             # 7 of 25 wrong
    samples = tmp_path / "s.npz"
    np.savez(samples, x=images, y=labels, host=host)
    r = load_runner().run_case(path, 1, 0, 2, samples, "host", Interpreter)
    assert r["samples"] == 25 and r["accuracy"] == pytest.approx(18 / 25, abs=1e-12)
    assert r["agreement"] == pytest.approx(3 / 25, abs=1e-12)
    assert r["disagreements"] == list(range(3, 23)) and "top1" not in r
    r = load_runner().run_case(path, 1, 0, 2, samples, "absent", Interpreter)
    assert "agreement" not in r and "disagreements" not in r and r["samples"] == 25


def test_an_onnx_case_has_its_profile_providers_and_no_trace_left(tmp_path, tiny_onnx_models):
    import shutil as sh

    runner = load_runner()
    model = tmp_path / "m.onnx"
    sh.copy(tiny_onnx_models["tiny_mlp/onnx_float32"], model)
    r = runner.run_case(model, 1, 0, 3, None, None, runner.OrtInterpreter, profile=True)
    profile = r["profile"]
    assert profile["runs"] == runner.PROFILE_RUNS and r["runs"] == 3
    assert r["nodes_per_provider"] == profile["nodes_per_provider"] == {
        "CPUExecutionProvider": len(profile["nodes"])}
    assert r["providers"] == ["CPUExecutionProvider"] and r["ort_spinning"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the trace removed
    assert "profile" not in runner.run_case(model, 1, 0, 3, None, None, runner.OrtInterpreter)


def test_check_plan_reads_models_samples_and_peaks_and_the_cpus(tmp_path):
    import hashlib

    runner = load_runner()
    for name, content in (("a.tflite", b"a"), ("a.npz", b"s"), ("p.tflite", b"p")):
        (tmp_path / name).write_bytes(content)
    digest = {n: hashlib.sha256(c).hexdigest() for n, c in (("a", b"a"), ("s", b"s"),
                                                            ("p", b"p"))}
    good = {"models": [{"file": "a.tflite", "sha256": digest["a"], "samples": "a.npz",
                        "samples_sha256": digest["s"]}, {"file": "", "samples": None}],
            "peak": [{"file": "p.tflite", "sha256": digest["p"]}],
            "cpus": sorted(os.sched_getaffinity(0))}
    assert runner.check_plan(good, tmp_path) == []
    bad = {"peak": [{"file": "p.tflite", "sha256": digest["a"]}], "cpus": [0, 4096]}
    usable = sorted(os.sched_getaffinity(0))
    assert runner.check_plan(bad, tmp_path) == [
        f"p.tflite: SHA-256 {digest['p'][:16]}... does not match the plan's "
        f"{digest['a'][:16]}...",
        f"cpus [4096] are not available on this board (it may run on {usable})"]
    assert runner.check_plan({"models": [{"file": "a.tflite", "sha256": digest["a"],
                                          "samples": "a.npz", "samples_sha256": "0"}]},
                             tmp_path) == [f"a.npz: SHA-256 {digest['s'][:16]}... does not "
                                           "match the plan's 0..."]
    assert runner.sha256_file(tmp_path / "a.tflite") == digest["a"]
    # an entry's samples are checked even when its file has no name or cannot be read
    assert runner.check_plan({"models": [
        {"file": "", "samples": "a.npz", "samples_sha256": "0"},
        {"file": "gone.tflite", "sha256": "0", "samples": "a.npz", "samples_sha256": "1"}]},
        tmp_path) == [
        f"a.npz: SHA-256 {digest['s'][:16]}... does not match the plan's 0...",
        "gone.tflite: cannot read (No such file or directory)",
        f"a.npz: SHA-256 {digest['s'][:16]}... does not match the plan's 1..."]


def test_a_float_models_top1_probability_is_its_largest_output(tiny_models):
    """Against LiteRT driven here: the class and the probability of a float32 model's output."""
    from ai_edge_litert.interpreter import Interpreter

    images = synthetic_images(np.arange(5), 2)
    interpreter = Interpreter(model_path=str(tiny_models["tiny_mlp/float32"]))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    expected = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None, ..., None].astype(np.float32))
        interpreter.invoke()
        probabilities = interpreter.get_tensor(out["index"])[0]
        expected.append((int(np.argmax(probabilities)), float(probabilities.max())))
    assert load_runner().top1(interpreter, images) == expected


def expected_order(seed: int, rounds: int) -> str:
    """Which model runs first in each round: one shuffle of the pair per round from a
    generator seeded with the case's seed ("c" candidate, "r" reference)."""
    import random

    rng, first = random.Random(seed), ""
    for _ in range(rounds):
        order = ["candidate", "reference"]
        rng.shuffle(order)
        first += order[0][0]
    return first


def test_the_round_order_comes_from_the_seed_and_rounds_stop_at_their_minimum(tmp_path):
    """Without a time budget a pair takes exactly min_rounds rounds (20 unless the plan says),
    ceil(runs / rounds) invokes each, in the order the seed (0 unless given) draws."""
    run_case = load_runner().run_case
    new, old = tmp_path / "20us_new.tflite", tmp_path / "10us_old.tflite"
    result = run_case(new, 1, 0, 40, None, None, BusyInterpreter, reference=old,
                      pairing={"min_rounds": 8, "min_seconds": 0.0, "seed": 11})
    pair = result["pair"]
    assert (pair["rounds"], pair["round_invokes"], result["runs"]) == (8, 5, 40)
    assert pair["first"] == expected_order(11, 8) and pair["first"] != expected_order(12, 8)
    result = run_case(new, 1, 0, 30, None, None, BusyInterpreter, reference=old,
                      pairing={"min_seconds": 0.0})
    pair = result["pair"]
    assert (pair["rounds"], pair["round_invokes"], result["runs"]) == (20, 2, 40)
    assert pair["first"] == expected_order(0, 20)
    # each round's median is of that round's invokes: at least the model's busy time, and
    # (a clock reading, not a sum of two) far below a second
    assert min(pair["candidate_us"]) >= 20 and min(pair["reference_us"]) >= 10
    assert max(pair["candidate_us"] + pair["reference_us"]) < 1e6
    assert result["min_us"] >= 20 and pair["reference_p50_us"] >= 10


def test_a_pair_goes_on_until_each_model_had_its_seconds_and_stops_at_max_rounds(tmp_path):
    """10 µs against 100 µs: the pilot (the median of 3 + 3 invokes, ~55 µs) sizes the rounds
    at ~91 invokes, under a millisecond of the cheap model, so it takes several rounds before
    both models had 5 ms; and without a budget, min_rounds above MAX_ROUNDS stops there."""
    runner = load_runner()
    r = runner.run_case(tmp_path / "10us_new.tflite", 1, 0, 1, None, None, BusyInterpreter,
                        reference=tmp_path / "100us_old.tflite",
                        pairing={"min_rounds": 1, "min_seconds": 0.005})
    assert r["mean_us"] * r["runs"] >= 5000  # the cheap one's 5 ms, whatever the load
    r = runner.run_case(tmp_path / "1us_new.tflite", 1, 0, 1, None, None, BusyInterpreter,
                        reference=tmp_path / "1us_old.tflite",
                        pairing={"min_rounds": 5000, "min_seconds": 0.0})
    assert r["pair"]["rounds"] == runner.MAX_ROUNDS == 2000 and r["runs"] == 2000


def test_round_invokes_for_slow_and_microsecond_models():
    invokes = load_runner().round_invokes
    assert invokes(10.0, 100, 20, 1.0) == 5000        # 1 s / 20 rounds / 10 µs
    assert invokes(100_000.0, 100, 20, 1.0) == 5      # 100 runs over 20 rounds
    assert invokes(0.0, 100, 20, 1.0) == 100_000      # capped
    assert invokes(0.01, 100, 20, 1.0) == 100_000     # 5e6 by time, capped
    assert invokes(1e-4, 1, 1, 1e-7) == 100           # 0.1 µs / the pilot floored at 1 ns
    assert invokes(10.0, 0, 20, 0.0) == 1             # at least one invoke
    assert invokes(100_000.0, 100, 0, 1.0) == 100     # no rounds asked: one round
    assert invokes(1000.0, 1, 0, 1.0) == 1000         # its second of time in that one round
    assert invokes(300.0, 99, 20, 0.0) == 5           # ceil(99 / 20), not 4
    assert invokes(300.0, 10, 20, 0.1) == 17          # ceil(0.1 s / 20 / 300 µs) = ceil(16.7)


def test_a_reference_of_another_contract_or_bytes_is_not_compared(tmp_path, tiny_models):
    result = load_runner().run_case(tmp_path / "100us_new.tflite", 1, 1, 10, None, None,
                                    BusyInterpreter, reference=tmp_path / "100us_wide.tflite")
    assert "pair" not in result and result["runs"] == 10
    assert result["pair_skipped"].startswith("reference not compared: reference "
                                             "100us_wide.tflite takes [1, 4] float32, this model [1, 2] float32")
    plan = make_plan(tmp_path, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}, runs=5)
    doc = json.loads(plan.read_text())
    doc["models"][0]["reference"] = {"file": "gone.tflite", "sha256": "0" * 64}
    plan.write_text(json.dumps(doc))
    proc = run_runner(plan)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["results"]
    assert row["runs"] == 5 and "pair" not in row
    assert row["pair_skipped"] == ("reference not compared: gone.tflite: "
                                   "No such file or directory")


def test_a_real_model_and_its_copy_are_timed_as_a_pair(tmp_path, tiny_models):
    model = tiny_models["tiny_mlp/int8"]
    plan = make_plan(tmp_path, {"tiny_mlp/int8": model}, runs=5, min_rounds=10,
                     min_seconds=0.2)
    shutil.copy(model, tmp_path / "reference.tflite")
    doc = json.loads(plan.read_text())
    doc["models"][0]["reference"] = {"file": "reference.tflite",
                                     "sha256": doc["models"][0]["sha256"]}
    plan.write_text(json.dumps(doc))
    proc = run_runner(plan)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["results"]
    pair = row["pair"]
    assert pair["rounds"] >= 10 and row["runs"] == pair["rounds"] * pair["round_invokes"]
    # At least 0.2 s of the candidate's invokes: their sum is the row's mean x runs (the loop
    # stops only once both models' sums reach min_seconds, or at MAX_ROUNDS). Not the round
    # medians x invokes: on a loaded machine a few long invokes fill most of the budget.
    runner = load_runner()
    assert (row["mean_us"] * row["runs"] >= 0.2e6 * (1 - 1e-9)
            or pair["rounds"] == runner.MAX_ROUNDS), (row["mean_us"], row["runs"])
    ratio = np.median(pair["candidate_us"]) / np.median(pair["reference_us"])
    assert 0.5 < ratio < 2  # the same bytes; a loaded machine moves a round's median
    assert row["agreement"] == 1.0 and "pair_skipped" not in row


# --- the runner's plan loop in this process (each case still runs in its own child) --------


def in_process_plan(tmp_path, tiny_models, onnx_models) -> tuple[Path, dict]:
    """A plan of a .tflite model timed beside a copy of itself, a .tflite model whose
    reference has other bytes, and an ONNX model; 1 thread, few runs and rounds."""
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"],
              "tiny_cnn/int8": tiny_models["tiny_cnn/int8"],
              "tiny_mlp/onnx_float32": onnx_models["tiny_mlp/onnx_float32"]}
    plan_path = make_plan(tmp_path, models, runs=6, min_rounds=6, min_seconds=0.02)
    plan = json.loads(plan_path.read_text())
    shutil.copy(models["tiny_mlp/int8"], tmp_path / "same.tflite")
    shutil.copy(models["tiny_mlp/int8"], tmp_path / "other.tflite")
    plan["models"][0]["reference"] = {"file": "same.tflite",
                                      "sha256": plan["models"][0]["sha256"]}
    plan["models"][1]["reference"] = {"file": "other.tflite", "sha256": "f" * 64}
    plan_path.write_text(json.dumps(plan))
    return plan_path, plan


def test_the_plan_loop_in_this_process(tmp_path, tiny_models, onnx_models, capsys):
    import hashlib
    from importlib.metadata import version

    import onnxruntime

    runner = load_runner()
    plan_path, plan = in_process_plan(tmp_path, tiny_models, onnx_models)
    assert runner.main(["--plan", str(plan_path)]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["runtimes"] == {
        "tflite": {"name": "ai_edge_litert", "version": version("ai-edge-litert")},
        "onnx": {"name": "onnxruntime", "version": onnxruntime.__version__,
                 "spacemit_ort": False,
                 "providers_available": list(onnxruntime.get_available_providers())}}
    assert doc["cpus"] is None and doc["peak"] == []
    assert [(r["model"], r["threads"]) for r in doc["results"]] == [
        (m["file"], 1) for m in plan["models"]]
    same, other, onnx = doc["results"]
    host = {m["file"]: np.load(tmp_path / m["samples"]) for m in plan["models"]}
    for r in doc["results"]:
        labels = host[r["model"]]
        assert r["warmup"] == 3 and r["samples"] == 12 and r["agreement"] == 1.0
        assert r["accuracy"] == float(np.mean(labels["host"] == labels["y"]))
    assert same["pair"]["rounds"] >= 6 and same["pair"]["reference"] == "same.tflite"
    assert same["runs"] == same["pair"]["rounds"] * same["pair"]["round_invokes"]
    actual = hashlib.sha256((tmp_path / "other.tflite").read_bytes()).hexdigest()
    assert "pair" not in other and other["runs"] == 6
    assert other["pair_skipped"] == (f"reference not compared: other.tflite: SHA-256 "
                                     f"{actual[:16]}... is not the plan's {'f' * 16}...")
    assert onnx["runs"] == 6 and onnx["profile"]["runs"] == runner.PROFILE_RUNS
    assert onnx["runtime"]["name"] == "onnxruntime" and same["runtime"]["name"] == \
        "ai_edge_litert"
    progress = [json.loads(line[9:]) for line in err.splitlines()
                if line.startswith("progress ")]
    assert progress == [{"case": i, "of": 3, "kind": "models", "model": r["model"],
                         "threads": 1, "p50_us": r["p50_us"], "error": None}
                        for i, r in enumerate(doc["results"], 1)]


def test_the_plan_loop_marks_what_it_cannot_run(tmp_path, tiny_models, onnx_models, capsys):
    runner = load_runner()
    plan_path, plan = in_process_plan(tmp_path, tiny_models, onnx_models)
    (tmp_path / "x.bin").write_bytes(b"?")
    plan["models"].append({"file": "x.bin"})
    plan_path.write_text(json.dumps(plan))
    doc = runner.run_plan(plan_path, {"tflite": None, "onnx": None})
    assert doc["runtimes"] == {"tflite": {"missing": runner.missing_message("tflite")},
                               "onnx": {"missing": runner.missing_message("onnx")}}
    assert [(r["error"], r.get("no_runtime")) for r in doc["results"]] == [
        (runner.missing_message("tflite"), "tflite"), (runner.missing_message("tflite"),
                                                       "tflite"),
        (runner.missing_message("onnx"), "onnx"),
        ("not run: no runtime for 'x.bin' (known: .tflite, .onnx)", None)]
    plan["deadline_s"] = 0
    plan_path.write_text(json.dumps(plan))
    found = runner.find_runtime()
    doc = runner.run_plan(plan_path, {"tflite": found, "onnx": None})
    assert [r["error"] for r in doc["results"][:2]] == [
        "not run: the plan's deadline of 0 s had passed"] * 2
    capsys.readouterr()


def test_a_damaged_file_stops_the_plan_in_this_process(tmp_path, tiny_models, onnx_models,
                                                       capsys):
    import hashlib

    runner = load_runner()
    plan_path, plan = in_process_plan(tmp_path, tiny_models, onnx_models)
    model = tmp_path / plan["models"][2]["file"]
    model.write_bytes(b"damaged")
    (tmp_path / plan["models"][0]["samples"]).unlink()
    assert runner.main(["--plan", str(plan_path)]) == runner.BAD_PLAN
    out, err = capsys.readouterr()
    actual = hashlib.sha256(b"damaged").hexdigest()
    assert out == "" and err == (
        f"error: refusing to time anything: {plan['models'][0]['samples']}: cannot read (No "
        f"such file or directory); {model.name}: SHA-256 {actual[:16]}... does not match the "
        f"plan's {plan['models'][2]['sha256'][:16]}...\n")


def test_a_case_in_this_process_and_its_top1(tmp_path, tiny_models, capsys):
    runner = load_runner()
    plan_path = make_plan(tmp_path, {"tiny_cnn/int8": tiny_models["tiny_cnn/int8"]})
    entry = json.loads(plan_path.read_text())["models"][0]
    samples = np.load(tmp_path / entry["samples"])
    assert runner.main(["--case", str(tmp_path / entry["file"]), "--threads", "1", "--warmup",
                        "2", "--runs", "7", "--samples", str(tmp_path / entry["samples"]),
                        "--host-key", "host", "--top1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["runs"], result["warmup"], result["threads"], result["samples"]) == (
        7, 2, 1, 12)
    assert [label for label, _ in result["top1"]] == samples["host"].tolist()
    assert all(0 <= p <= 1 for _, p in result["top1"])
    assert result["agreement"] == 1.0 and result["disagreements"] == []
    assert result["accuracy"] == float(np.mean(samples["host"] == samples["y"]))
    assert result["runtime"]["name"] == "ai_edge_litert" and "pair" not in result


@pytest.mark.parametrize("status, out, err, says", [
    (None, "", "", "timed out after 3 s (case_timeout_s)"),
    (-9, "", "a\nlast words\n", "killed by SIGKILL: last words"),
    (2, "", "", "exit 2: (no output)"),
    (1, "", "x" * 600, "exit 1: " + "x" * 500),
    (0, "not json", "", "case printed no JSON: 'not json'"),
    (-200, "", "", "exit -200: (no output)"),   # no signal's number
    (0, "x" * 300, "", f"case printed no JSON: {'x' * 200!r}"),
])
def test_a_cases_end_is_one_line(status, out, err, says):
    result = load_runner()._case_result({"model": "m", "threads": 2}, status, out, err, 3.2)
    assert result == {"model": "m", "threads": 2, "error": says}
    assert load_runner()._case_result({}, 0, '{"p50_us": 1.5}', "", 1) == {"p50_us": 1.5}


def test_an_int8_onnx_outputs_probability_is_dequantized_with_the_plans_scale(
        tiny_onnx_models, tmp_path):
    """The translated model's int8 output: with output_quantization the runner's top-1
    probability is (q - zero_point) * scale of ORT's raw output, computed here from a plain
    session; without it the class alone (ORT does not report an output's quantization)."""
    import onnx
    import onnxruntime as ort

    runner = load_runner()
    model = tiny_onnx_models["tiny_cnn/onnx_int8_tflite"]
    images = synthetic_images(np.arange(6), 4)
    stated = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    in_scale, in_zero = stated["input_quantization"]
    scale, zero_point = stated["output_quantization"]
    assert (scale, zero_point) == (1 / 256, -128)  # TFLite's int8 softmax output
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = plain.get_inputs()[0].name
    raw = [plain.run(None, {feed: np.clip(np.rint(image[None, ..., None] / np.float32(in_scale))
                                          + in_zero, -128, 127).astype(np.int8)})[0][0]
           for image in images]
    with_scale = runner.top1(runner.OrtInterpreter(
        without_metadata(model, tmp_path), 1, input_quantization=(in_scale, in_zero),
        output_quantization=(scale, zero_point)), images)
    assert [label for label, _ in with_scale] == [int(np.argmax(r)) for r in raw]
    for (label, probability), r in zip(with_scale, raw):
        assert probability == pytest.approx((int(r[label]) - zero_point) * scale, abs=1e-12)
    # The translated model states both sides in its metadata: the plan's are not needed.
    assert runner.top1(runner.OrtInterpreter(model, 1), images) == with_scale
    without = runner.top1(runner.OrtInterpreter(without_metadata(model, tmp_path), 1,
                                                input_quantization=(in_scale, in_zero)),
                          images)
    assert without == [(label, None) for label, _ in with_scale]


def without_metadata(model: Path, tmp_path: Path, **metadata: str) -> Path:
    """A copy of `model` whose metadata is exactly `metadata` (none: an older build's)."""
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    path = tmp_path / f"{len(metadata)}_{model.name}"
    onnx.save(proto, str(path))
    return path


def test_the_models_metadata_states_its_quantization_over_the_plans(tmp_path, onnx_models):
    """Hand-made int8-input model (q = pixel - 128): with the metadata it needs no plan
    quantization and a wrong one does not win; unreadable metadata is one line."""
    runner = load_runner()
    model = onnx_models["tiny_mlp/onnx_int8_tflite"]
    images = synthetic_images(np.arange(10), 5)
    expected = runner.predict(runner.OrtInterpreter(model, 1, input_quantization=(1.0, -128)),
                              images)
    stated = without_metadata(model, tmp_path, input_quantization="[1.0, -128]")
    assert runner.predict(runner.OrtInterpreter(stated, 1), images) == expected
    interpreter = runner.OrtInterpreter(stated, 1, input_quantization=(0.5, 3))
    assert interpreter.get_input_details()[0]["quantization"] == (1.0, -128)
    broken = without_metadata(model, tmp_path, input_quantization="1.0")
    with pytest.raises(ValueError, match=r"^the model's metadata input_quantization is "
                                         r"'1.0', not \[scale, zero_point\]: rebuild"):
        runner.OrtInterpreter(broken, 1, input_quantization=(1.0, -128))


def test_a_models_memory_is_what_loading_it_added_and_the_peak_is_getrusages(tmp_path):
    """model_rss_mb against VmRSS read by the test around the very construction it measures
    (an ORT session of a model with 15 MiB of weights), and, in a fresh process as the runner
    runs each case, at least those weights; peak_rss_mb between getrusage's ru_maxrss (KiB)
    read by the test before and after the case."""
    import onnx

    runner = load_runner()
    hidden = 5_120  # w1: 784 x 5,120 float32 = 15.3 MiB, far above the readings' noise
    model = tmp_path / "wide_onnx_float32.onnx"
    onnx.save(onnx_mlp(hidden=hidden), str(model))
    weights_mib = (784 * hidden + hidden + hidden * 10 + 10) * 4 / 2**20
    readings: list[float] = []

    class Watched:
        """The runner's own ONNX interpreter, with VmRSS read as its construction starts and
        once it is allocated: the span run_case measures."""

        def __init__(self, **kwargs):
            readings.append(vm_rss_mb())
            self._inner = runner.OrtInterpreter(**kwargs)

        def allocate_tensors(self):
            self._inner.allocate_tensors()
            readings.append(vm_rss_mb())

        def __getattr__(self, name):
            return getattr(self._inner, name)

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = runner.run_case(model, 1, 1, 3, None, None, Watched)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaded = readings[1] - readings[0]
    # 0.5 MiB: the pages Python may touch between the runner's reading and the test's
    # (a clock call, a /proc read).
    assert result["model_rss_mb"] == pytest.approx(loaded, abs=0.5)
    # ru_maxrss only grows: the runner's reading lies between the test's two, exactly
    assert peak_before <= result["peak_rss_mb"] <= peak_after
    assert result["peak_rss_mb"] >= readings[1]  # the peak is at least what was resident
    # Here the allocator may reuse pages this process freed earlier, so the delta can be
    # less than the weights; a case of its own (as the runner runs each) starts clean: the
    # weights are resident once the session exists, plus ORT's own state (about 10 MiB on
    # this host) and at most a packed copy.
    proc = subprocess.run([sys.executable, str(RUNNER), "--case", str(model), "--threads", "1",
                           "--warmup", "1", "--runs", "3"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout)["model_rss_mb"]
    assert weights_mib <= fresh <= 2 * weights_mib + 32, (fresh, weights_mib)


@pytest.mark.parametrize("key", ["tiny_cnn/int8", "tiny_cnn/onnx_float32"])
def test_each_timed_figure_lies_within_the_clock_readings_around_its_calls(
        tiny_models, tiny_onnx_models, key):
    """Units (ms vs µs) and what is timed, from the clock: every call the runner makes to the
    interpreter is timed here too. An invoke's figure is at least the call itself and at most
    the time from the end of the call before it to the start of the call after it (the
    runner's own clock readings lie in between); a percentile of figures so bounded lies
    between the same percentile of the bounds. init_ms spans construction and allocation."""
    import time as clock

    runner = load_runner()
    model = {**tiny_models, **tiny_onnx_models}[key]
    # the interpreter class the runner uses for the format: LiteRT's, or its ORT adapter
    interpreter_class = runner.find_runtime()[2] if model.suffix == ".tflite" \
        else runner.OrtInterpreter
    calls: list[tuple[str, float, float]] = []

    class Clocked:
        def __init__(self, **kwargs):
            start = clock.perf_counter()
            self._inner = interpreter_class(**kwargs)
            calls.append(("init", start, clock.perf_counter()))

        def __getattr__(self, name):
            method = getattr(self._inner, name)

            def timed(*args, **kwargs):
                start = clock.perf_counter()
                out = method(*args, **kwargs)
                calls.append((name, start, clock.perf_counter()))
                return out
            return timed

    runs, warmup = 40, 3
    started = clock.perf_counter()
    result = runner.run_case(model, 1, warmup, runs, None, None, Clocked)
    finished = clock.perf_counter()
    names = [name for name, *_ in calls]
    invokes = [i for i, name in enumerate(names) if name == "invoke"]
    assert len(invokes) == 1 + warmup + runs and result["runs"] == runs
    after = [calls[i + 1][1] if i + 1 < len(calls) else finished for i in range(len(calls))]
    low = {i: (calls[i][2] - calls[i][1]) * 1e6 for i in invokes}
    high = {i: (after[i] - calls[i - 1][2]) * 1e6 for i in invokes}
    first, timed = invokes[0], invokes[1 + warmup:]
    assert low[first] <= result["first_us"] <= high[first]
    for figure, q in (("min_us", 0), ("p10_us", 10), ("p50_us", 50), ("p90_us", 90),
                      ("p99_us", 99), ("max_us", 100)):
        assert np.percentile([low[i] for i in timed], q) <= result[figure] <= np.percentile(
            [high[i] for i in timed], q), figure
    assert np.mean([low[i] for i in timed]) <= result["mean_us"] <= np.mean(
        [high[i] for i in timed])
    init_start, init_end = calls[0][1], calls[names.index("allocate_tensors")][2]
    assert names[0] == "init" and names[1] == "allocate_tensors"
    # ms: from the construction's start to the allocation's end, at most from before
    # run_case to the next call
    assert (init_end - init_start) * 1e3 <= result["init_ms"] <= (calls[2][1] - started) * 1e3


def test_the_machine_line_is_proc_cpuinfo_and_uname():
    """latency.md's board line (CPU model, cores, uname) as the runner reports this machine,
    against /proc/cpuinfo's processor entries and first model name, and os.uname()."""
    info = load_runner().machine_info()
    entries = [line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()]
    processors = sum(1 for key, _, _ in entries if key.strip() == "processor")
    model = next((v.strip() for k, _, v in entries if k.strip() == "model name"), None)
    uname = os.uname()
    assert info["cores"] == processors  # a hand count of the online CPUs
    if model:  # x86 and most ARM kernels; a K1 says "uarch" or "isa" instead
        assert info["cpu_model"] == model
    assert info["uname"] == f"{uname.sysname} {uname.nodename} {uname.release} {uname.machine}"
