"""What makes onnx_int8 of one build faster under ONNX Runtime: each trial timed beside LiteRT
int8 in the same process, interleaved (bench_runtimes.interleaved_p50s), and ORT's own
per-op profile of the default model.

Trials, each a change of one thing from the pipeline's onnx_int8 (QDQ, per-channel int8
weights, int8 activations, MinMax, all ORT optimizations, the runner's session options):

- session options: graph optimization level (basic, extended), execution mode parallel,
  intra-op spinning on, `session.qdqisint8allowed`, ORT's NHWC layout transformer disabled
  (channel-last QLinearConv is ORT's default on x86: the trial is channel-first);
- quantization: per-tensor weights, reduce_range (7-bit weights), uint8 activations (x86's
  native u8s8 kernels), QOperator format (QLinearConv/QLinearMatMul written in the model),
  the float model converted to opset 21 first.

A trial whose ratio is at most the goal is then checked for accuracy: its top-1 accuracy on
the whole test split against the int8 .tflite's (within 0.3 points, issue 21).

    python benchmarks/bench_runtimes.py --trials mnist_cnn   (writes them into its page)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

# ORT p50 / LiteRT int8 p50 the issue asks of onnx_int8 (mnist_cnn).
GOAL_RATIO = 2.0
# onnx_int8 may be at most this many points less accurate than the int8 .tflite.
MAX_ACCURACY_LOSS_PT = 0.3

# name -> (what it changes, how): session options get (SessionOptions, kwargs) to change.
SESSION_TRIALS: dict[str, tuple[str, Callable[[Any, dict], None]]] = {
    "optimization basic": ("graph_optimization_level = ORT_ENABLE_BASIC",
                           lambda o, k: setattr(o, "graph_optimization_level",
                                                _ort().GraphOptimizationLevel.ORT_ENABLE_BASIC)),
    "optimization extended": ("graph_optimization_level = ORT_ENABLE_EXTENDED",
                              lambda o, k: setattr(
                                  o, "graph_optimization_level",
                                  _ort().GraphOptimizationLevel.ORT_ENABLE_EXTENDED)),
    "parallel execution": ("execution_mode = ORT_PARALLEL",
                           lambda o, k: setattr(o, "execution_mode",
                                                _ort().ExecutionMode.ORT_PARALLEL)),
    "spinning on": ("session.intra_op.allow_spinning = 1",
                    lambda o, k: o.add_session_config_entry(
                        "session.intra_op.allow_spinning", "1")),
    "qdqisint8allowed": ("session.qdqisint8allowed = 1",
                         lambda o, k: o.add_session_config_entry(
                             "session.qdqisint8allowed", "1")),
    "channel-first": ("disabled_optimizers = [NhwcTransformer]",
                      lambda o, k: k.update(disabled_optimizers=["NhwcTransformer"])),
}
# name -> (what it changes, quantize_static keyword arguments over the pipeline's).
MODEL_TRIALS: dict[str, tuple[str, dict[str, Any]]] = {
    "per-tensor": ("per_channel = False", {"per_channel": False}),
    "reduce_range": ("reduce_range = True (7-bit weights)", {"reduce_range": True}),
    "uint8 activations": ("activation_type = QUInt8", {"activation_type": "QUInt8"}),
    "QOperator": ("quant_format = QOperator", {"quant_format": "QOperator"}),
    "opset 21": ("float model converted to opset 21 first", {"opset": 21}),
}


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def quantized(float_path: Path, representative: np.ndarray, change: dict[str, Any]) -> bytes:
    """onnx_int8 as convert_onnx.quantize_int8 makes it (its options spelled out here), with
    `change` applied."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)

    change = dict(change)
    model = onnx.load(str(float_path))
    if "opset" in change:
        model = onnx.version_converter.convert_version(model, change.pop("opset"))
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True,
               "calibrate_method": CalibrationMethod.MinMax,
               "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8}
    for key, value in change.items():
        options[key] = getattr(QuantFormat if key == "quant_format" else QuantType, value) \
            if isinstance(value, str) else value
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([{name: image[None, ..., None].astype(np.float32)}
                                for image in representative])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="onnx-trial.") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        quantize_static(str(source), str(target), Reader(), **options)
        return target.read_bytes()


def session_call(content: bytes, image: np.ndarray,
                 configure: Callable[[Any, dict], None] | None = None) -> Callable[[], None]:
    """session.run of the model on one raw image, 1 thread, the runner's session options
    (spinning off at 1 thread, its disabled optimizers) with `configure` applied last."""
    from pipeline import load_runner

    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    kwargs: dict[str, Any] = {
        "disabled_optimizers": list(load_runner().ORT_DISABLED_OPTIMIZERS)}
    if configure is not None:
        configure(options, kwargs)
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"],
                                   **kwargs)
    feed = {session.get_inputs()[0].name: image[None, ..., None].astype(np.float32)}
    return lambda: session.run(None, feed)


def accuracy(content: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of an onnx_int8 model on `images`, one per run."""
    ort = _ort()
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    top1 = [int(np.argmax(session.run(None, {name: image[None, ..., None]
                                             .astype(np.float32)})[0])) for image in images]
    return 100.0 * float(np.mean(np.asarray(top1) == labels))


def op_profile(content: bytes, image: np.ndarray) -> list[dict[str, Any]]:
    """ORT's profiler on the model (the runner's own profile: median µs per node over its
    profiled runs), nodes slowest first."""
    from pipeline import load_runner

    runner = load_runner()
    with tempfile.TemporaryDirectory(prefix="onnx-profile.") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(content)
        make = lambda **kw: runner.OrtInterpreter(path, 1, **kw)  # noqa: E731
        profile = runner.profile_onnx(make, image[None, ..., None].astype(np.float32),
                                      Path(tmp) / "trace")
    return profile["nodes"]


def run_trials(artifacts: Path, build: str, rounds: int, runs: int,
               warmup: int) -> dict[str, Any]:
    """Every trial of `build`'s onnx_int8 timed with LiteRT int8 and the model as built, in
    one interleaved measurement; accuracy of each model trial; ORT's per-op profile of the
    model as built. Ratios are ORT p50 / LiteRT int8 p50 of this run."""
    import json

    from bench_runtimes import interleaved_p50s, litert_call  # this directory
    from pipeline.core.layout import Layout
    from pipeline.stages.calibration import representative_indices
    from pipeline.stages.onnx_graph import integer_form
    from pipeline.stages.preprocess import load_arrays

    import onnx

    layout = Layout(artifacts)
    models = {v: layout.variant_path(build, v) for v in ("int8", "onnx_float32", "onnx_int8")}
    dataset = json.loads(layout.card_json(build).read_text())["dataset"]
    arrays = load_arrays(layout.dataset_npz(dataset))
    convert = json.loads(layout.resolved_params().read_text())["params"]["convert"]
    representative = arrays["x_train"][representative_indices(
        arrays["y_train"], convert["representative_samples"], convert["seed"])]
    image = arrays["x_test"][0]
    built = models["onnx_int8"].read_bytes()
    contents = {}
    for name, (_, change) in MODEL_TRIALS.items():
        model = onnx.load_from_string(quantized(models["onnx_float32"], representative, change))
        integer_form(model)  # as quantize_int8 finishes onnx_int8
        contents[name] = model.SerializeToString()
    calls = {"LiteRT int8": litert_call(models["int8"], image, 1),
             "onnx_int8 as built": session_call(built, image)}
    calls.update({name: session_call(built, image, configure)
                  for name, (_, configure) in SESSION_TRIALS.items()})
    calls.update({name: session_call(content, image) for name, content in contents.items()})
    p50 = interleaved_p50s(calls, rounds, runs, warmup)
    reference = {v["name"]: 100 * v["accuracy"] for v in json.loads(
        layout.accuracy_json(build).read_text())["variants"]}
    test_x, test_y = arrays["x_test"], arrays["y_test"]
    accuracies = {"onnx_int8 as built": accuracy(built, test_x, test_y),
                  **{name: accuracy(c, test_x, test_y) for name, c in contents.items()}}
    what = {"onnx_int8 as built": "the pipeline's onnx_int8",
            **{n: w for n, (w, _) in SESSION_TRIALS.items()},
            **{n: w for n, (w, _) in MODEL_TRIALS.items()}}
    trials = [{"trial": name, "change": what[name], "ort_p50_us": p50[name],
               "ratio": p50[name] / p50["LiteRT int8"],
               "accuracy_pt": accuracies.get(name, accuracies["onnx_int8 as built"]),
               "session_only": name in SESSION_TRIALS} for name in what]
    return {"build": build, "litert_p50_us": p50["LiteRT int8"],
            "int8_accuracy_pt": reference["int8"], "trials": trials,
            "profile": op_profile(built, image)}


def render(result: dict[str, Any]) -> str:
    """The trials' section of docs/measured/onnx_runtimes.md."""
    from tabulate import tabulate

    int8 = result["int8_accuracy_pt"]
    rows = [[t["trial"], t["change"], f"{t['ort_p50_us']:.1f}", f"{t['ratio']:.2f}",
             f"{t['accuracy_pt']:.2f}" + (" (same model)" if t["session_only"] else ""),
             "yes" if t["ratio"] <= GOAL_RATIO and int8 - t["accuracy_pt"]
             <= MAX_ACCURACY_LOSS_PT else "no"] for t in result["trials"]]
    table = tabulate(rows, headers=["trial", "change", "ORT p50 µs", "ORT / LiteRT int8",
                                    "accuracy %", f"≤ {GOAL_RATIO:g}x and ≤ "
                                    f"{MAX_ACCURACY_LOSS_PT} pt lost"],
                     tablefmt="github", disable_numparse=True)
    total = sum(n["median_us"] for n in result["profile"]) or 1.0
    profile = tabulate([[n["node"], n["op"], f"{n['median_us']:.1f}",
                         f"{100 * n['median_us'] / total:.0f} %"]
                        for n in result["profile"]],
                       headers=["node", "op", "median µs", "share"], tablefmt="github",
                       disable_numparse=True)
    return (f"\n## onnx_int8 {result['build']}: what was tried\n\n"
            f"Each trial changes one thing from the pipeline's onnx_int8, timed (1 thread) "
            f"beside LiteRT int8 ({result['litert_p50_us']:.1f} µs p50 in this run) in the "
            f"same interleaved rounds; accuracy on the whole test split (the int8 .tflite: "
            f"{int8:.2f} %). Goal: ≤ {GOAL_RATIO:g}x LiteRT int8, at most "
            f"{MAX_ACCURACY_LOSS_PT} points less accurate.\n\n{table}\n\n"
            "ONNX Runtime's profile of onnx_int8 as built (the runner's: median µs per node "
            "over its profiled runs; the profiler adds its own time to each node):\n\n"
            f"{profile}\n")
