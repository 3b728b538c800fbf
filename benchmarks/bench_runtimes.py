"""ORT vs LiteRT on this host: p50 of one inference per model, side by side in one run.

For each build of an artifact tree (built with convert.onnx = true), times the float32 and
int8 .tflite under LiteRT and their ONNX counterparts under ONNX Runtime's CPU provider
(onnx_float32 against float32; onnx_int8 and onnx_int8_tflite against int8), one test image,
batch of one, at each thread count. The models are timed in interleaved rounds (every model
once per round, `--rounds` rounds of `--runs` inferences), so a busy moment of the machine
falls on all of them alike; the p50 is the median over every timed inference and the ratio
is ORT p50 / LiteRT p50 of that same run.

    python benchmarks/bench_runtimes.py [--artifacts DIR] [--threads 1 2] [--rounds 20]
        [--out docs/measured/onnx_runtimes.md]

It also writes that page (`--out ''`: not): the table, and the ops of ONNX Runtime's
optimized graph of each ONNX model (what ORT fused: a float Conv/Gemm/MatMul or a
DequantizeLinear of a constant means int8 weights dequantized on every run).

LiteRT times `invoke()` after `set_tensor`; ONNX Runtime times `session.run(...)`, the call an
application makes (it includes binding the input and allocating the output). Host figures
only: the K1's are the latency report's (`doit bench:<board>`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (LiteRT variant, ORT variant): what each ratio compares.
PAIRS = (("float32", "onnx_float32"), ("int8", "onnx_int8"), ("int8", "onnx_int8_tflite"))


def litert_call(path: Path, image: Any, threads: int) -> Callable[[], None]:
    from ai_edge_litert.interpreter import Interpreter

    from pipeline import load_runner
    from pipeline.core.console import native_output_hidden

    with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], load_runner().quantize(image, detail))
        interpreter.invoke()
    return interpreter.invoke


def ort_call(path: Path, image: Any, threads: int) -> Callable[[], None]:
    import numpy as np

    from pipeline import load_runner
    from pipeline.core.runtimes import open_model

    model = open_model(path, threads=threads)
    inp = model.io_contract()["input"]
    detail = {"dtype": np.dtype(inp["dtype"]).type,
              "quantization": (inp.get("scale", 0.0), inp.get("zero_point", 0))}
    feed = {inp["name"]: load_runner().quantize(image, detail)}
    session = model.session
    return lambda: session.run(None, feed)


def interleaved_p50s(calls: dict[str, Callable[[], None]], rounds: int, runs: int,
                     warmup: int) -> dict[str, float]:
    """Median µs per call of each, timed in `rounds` rounds of `runs` calls, models in turn."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(runs):
                start = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(artifacts: Path, threads: Sequence[int], rounds: int, runs: int,
            warmup: int) -> list[dict[str, Any]]:
    from pipeline.core.layout import Layout
    from pipeline.stages.preprocess import load_arrays
    from pipeline.core.variants import variant_of

    layout = Layout(artifacts)
    builds: dict[str, dict[str, Path]] = {}
    for path in layout.model_files():
        build, variant = variant_of(path)
        builds.setdefault(build, {})[variant] = path
    rows = []
    for build, models in sorted(builds.items()):
        pairs = [(a, b) for a, b in PAIRS if a in models and b in models]
        if not pairs:
            print(f"{build}: no ONNX variants (build with convert.onnx = true)", file=sys.stderr)
            continue
        # The build's dataset, as its model card says.
        dataset = json.loads(layout.card_json(build).read_text())["dataset"]
        image = load_arrays(layout.dataset_npz(dataset))["x_test"][0]
        for t in threads:
            names = sorted({n for pair in pairs for n in pair})
            calls = {n: (ort_call if n.startswith("onnx") else litert_call)(models[n], image, t)
                     for n in names}
            p50 = interleaved_p50s(calls, rounds, runs, warmup)
            for lite, ort in pairs:
                rows.append({"build": build, "threads": t, "litert": lite, "ort": ort,
                             "litert_p50_us": p50[lite], "ort_p50_us": p50[ort],
                             "ratio": p50[ort] / p50[lite],
                             # The translation against ORT's own quantization, same run.
                             "vs_onnx_int8": (p50[ort] / p50["onnx_int8"]
                                              if ort == "onnx_int8_tflite" and
                                              "onnx_int8" in p50 else None)})
    return rows


def optimized_ops(model: Path | bytes) -> dict[str, int]:
    """Op counts of ONNX Runtime's optimized graph of the model (a file or its bytes; CPU
    provider, all optimizations), with `DequantizeLinear(constant)` counted apart."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    from pipeline import load_runner

    with tempfile.TemporaryDirectory(prefix="ort-optimized.") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # "may contain hardware specific optimizations"
        ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                             providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(load_runner().ORT_DISABLED_OPTIMIZERS))
        graph = onnx.load(options.optimized_model_filepath).graph
    constants = {t.name for t in graph.initializer}
    return dict(sorted(Counter(
        "DequantizeLinear(constant)" if n.op_type == "DequantizeLinear" and
        n.input[0] in constants else n.op_type for n in graph.node).items()))


def all_optimized_ops(artifacts: Path) -> dict[str, dict[str, int]]:
    """ORT's optimized op counts of every int8 ONNX model of the tree, and of each
    onnx_int8_tflite as tf2onnx translates it before the integer rewrite (from the build's
    int8 .tflite, translated again here)."""
    from pipeline.core.console import native_output_hidden
    from pipeline.core.layout import Layout
    from pipeline.core.variants import variant_of, variant_path
    from pipeline.stages.convert_onnx import translate_tflite

    ops = {}
    for path in Layout(artifacts).model_files():
        build, variant = variant_of(path)
        if path.suffix != ".onnx" or variant == "onnx_float32":
            continue
        ops[path.name] = optimized_ops(path)
        tflite = variant_path(path.parent, build, "int8")
        if variant == "onnx_int8_tflite" and tflite.exists():
            with native_output_hidden():
                plain = translate_tflite(tflite, integer=False)
            ops[f"{path.name}, before the integer rewrite"] = optimized_ops(plain)
    return ops


def table(rows: list[dict[str, Any]], tablefmt: str = "github") -> str:
    from tabulate import tabulate

    return tabulate([[r["build"], r["threads"], f"{r['ort']} / {r['litert']}",
                      f"{r['litert_p50_us']:.1f}", f"{r['ort_p50_us']:.1f}", f"{r['ratio']:.2f}",
                      "" if r["vs_onnx_int8"] is None else f"{r['vs_onnx_int8']:.2f}"]
                     for r in rows],
                    headers=["build", "threads", "ORT model / LiteRT model", "LiteRT p50 µs",
                             "ORT p50 µs", "ORT/LiteRT", "ORT/onnx_int8"], tablefmt=tablefmt,
                    disable_numparse=True)


def page(rows: list[dict[str, Any]], ops: dict[str, dict[str, int]], command: str) -> str:
    rendered = table(rows)
    op_lines = "\n".join(f"| {name} | {', '.join(f'{k} {v}' for k, v in counts.items())} |"
                          for name, counts in sorted(ops.items()))
    return (f"# ONNX Runtime against LiteRT on the build host\n\n"
            f"Generated by `{command}`; do not edit. p50 of one inference (batch 1, one test "
            "image), models timed in interleaved rounds in one process; the ratio is of that "
            "run; ORT/onnx_int8: the translated .tflite against ORT's own quantization of the "
            "same build, same run. Host figures only: a K1's are in latency.md.\n\n"
            f"{rendered}\n\n## ONNX Runtime's optimized graphs\n\n"
            "Ops after ONNX Runtime's optimizations (CPU provider): QLinearConv/QGemm/"
            "QLinearMatMul run int8 kernels; a float Conv/Gemm/MatMul or a "
            "`DequantizeLinear(constant)` dequantizes int8 weights on every run. \"Before "
            "the integer rewrite\": the same .tflite as tf2onnx translates it "
            "(pipeline/stages/onnx_graph.py is the rewrite); how many test images answer "
            "as LiteRT does before and after it: "
            "[onnx_accuracy.md](onnx_accuracy.md).\n\n"
            f"| model | ops |\n|---|---|\n{op_lines}\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path,
                        default=Path(os.environ.get("PIPELINE_ARTIFACTS", REPO / "artifacts")))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200, help="timed inferences per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", default=str(REPO / "docs" / "measured" / "onnx_runtimes.md"),
                        help="the generated page ('' to write none)")
    parser.add_argument("--trials", nargs="*", default=[], metavar="BUILD",
                        help="also time what was tried to make these builds' onnx_int8 faster "
                        "(onnx_int8_trials.py), with ORT's per-op profile")
    args = parser.parse_args(argv)
    from pipeline.core.console import quiet_third_party, verbose_requested

    quiet_third_party(verbose_requested(os.environ))
    rows = measure(args.artifacts, args.threads, args.rounds, args.runs, args.warmup)
    if not rows:
        sys.exit(f"error: no build under {args.artifacts} has both runtimes' models")
    print(table(rows, tablefmt="simple"))
    print(f"\n{args.rounds} interleaved rounds x {args.runs} inferences per model "
          f"(medians), one test image, batch 1, this host.")
    trials = ""
    for build in args.trials:
        from onnx_int8_trials import render, run_trials  # this directory

        trials += render(run_trials(args.artifacts, build, args.rounds, args.runs,
                                    args.warmup))
    print(trials)
    if args.out:
        from pipeline.core.layout import Layout

        ops = all_optimized_ops(args.artifacts)
        command = "python benchmarks/bench_runtimes.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in (("threads", args.threads), ("rounds", args.rounds),
                         ("runs", args.runs), ("trials", args.trials)) if v)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        resolved = Layout(args.artifacts).resolved_params()
        made_by = (json.loads(resolved.read_text()).get("params_file", "?")
                   if resolved.exists() else "?")
        out.write_text(page(rows, ops, command).replace(
            "; do not edit.", f" on models built with `{Path(made_by).name}`; do not edit.", 1)
            + trials)
        print(f"{out}: written")


if __name__ == "__main__":
    main()
