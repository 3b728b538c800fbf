#!/usr/bin/env python3
"""On-board TFLite latency runner: time each model at each thread count, print one JSON document.

Runs on the board (or on the build host) with only the Python standard library, numpy and a
TFLite runtime; it imports nothing from the project. Usage:

    python3 runner.py --plan plan.json

plan.json (written by the host, paths relative to it):
    {"models": [{"file": "m_int8.tflite", "samples": "m_samples.npz", "host_key": "host_m_int8"}],
     "threads": [1, 4], "warmup": 10, "runs": 100, "cpus": [0, 1, 2, 3]}

Each model x threads case runs in a fresh child process so that its peak RSS is its own.
Exit status 3 means no TFLite runtime was found (the message says what to install).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

NO_RUNTIME = 3
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


def find_runtime():
    """(name, version, Interpreter class) of the first importable runtime, in RUNTIMES order."""
    for name in RUNTIMES:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter
                from importlib.metadata import version
                return name, version("ai-edge-litert"), Interpreter
            if name == "tflite_runtime":
                import tflite_runtime
                from tflite_runtime.interpreter import Interpreter
                return name, tflite_runtime.__version__, Interpreter
            import tensorflow as tf
            return "tensorflow.lite", tf.__version__, tf.lite.Interpreter
        except ImportError:
            continue
    return None


def no_runtime_message() -> str:
    return (
        f"no TFLite runtime importable by {sys.executable} (Python {platform.python_version()}, "
        f"{platform.machine()}); tried {', '.join(RUNTIMES)}. Install one for this interpreter: "
        "`pip install ai-edge-litert` (x86_64/aarch64 wheels), `pip install tflite-runtime`, or "
        "on riscv64 (SpacemiT K1) a runtime built for the board or the vendor's package - "
        "PyPI has no riscv64 wheel of either.")


def machine_info() -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "uarch", "isa") and value.strip() and not cpu_model:
                cpu_model = value.strip()
    except OSError:
        pass
    uname = platform.uname()
    return {"uname": f"{uname.system} {uname.node} {uname.release} {uname.machine}",
            "cpu_model": cpu_model or uname.machine, "cores": os.cpu_count(),
            "python": platform.python_version()}


def quantize(images, detail):
    """Raw uint8 pixels (N x H x W) as the input tensor expects them, batch of one."""
    import numpy as np

    batch = images[np.newaxis, ..., np.newaxis] if images.ndim == 2 else images
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return batch.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch.astype(np.float32) / scale + zero_point),
                   info.min, info.max).astype(dtype)


def predict(interpreter, images) -> list[int]:
    """Top-1 class of each image, one invoke per image as an application on the board would."""
    import numpy as np

    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    predictions = []
    for image in images:
        interpreter.set_tensor(inp["index"], quantize(image, inp))
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return predictions


def percentile_stats(samples_us: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(samples_us)
    return {"mean_us": float(arr.mean()), "std_us": float(arr.std()),
            "min_us": float(arr.min()), "max_us": float(arr.max()),
            **{f"p{q}_us": float(np.percentile(arr, q)) for q in (50, 90, 99)}}


def run_case(model: Path, threads: int, warmup: int, runs: int, samples: Path | None,
             host_key: str | None, Interpreter) -> dict:
    """Load, allocate, first invoke, warm-up and timed invokes of one model at one thread count."""
    import numpy as np

    data = dict(np.load(samples)) if samples else {}
    start = time.perf_counter()
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    init_ms = (time.perf_counter() - start) * 1e3

    inp = interpreter.get_input_details()[0]
    if "x" in data:
        interpreter.set_tensor(inp["index"], quantize(data["x"][0], inp))
    else:
        interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    start = time.perf_counter()
    interpreter.invoke()
    first_us = (time.perf_counter() - start) * 1e6
    for _ in range(warmup):
        interpreter.invoke()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append((time.perf_counter() - start) * 1e6)

    result = {"model": model.name, "threads": threads, "init_ms": init_ms, "first_us": first_us,
              "warmup": warmup, "runs": runs, **percentile_stats(timings)}
    if "x" in data:
        predictions = np.asarray(predict(interpreter, data["x"]))
        result["samples"] = int(len(predictions))
        if "y" in data:
            result["accuracy"] = float((predictions == data["y"]).mean())
        if host_key and host_key in data:
            differ = np.flatnonzero(predictions != data[host_key])
            result["agreement"] = float(1 - len(differ) / len(predictions))
            result["disagreements"] = [int(i) for i in differ[:20]]
    # ru_maxrss is in KiB on Linux.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_plan(plan_path: Path) -> dict:
    """Every model x threads case of the plan, each in a child process; the JSON document."""
    plan = json.loads(plan_path.read_text())
    runtime = find_runtime()
    if runtime is None:
        raise SystemExit(NO_RUNTIME)
    results = []
    for model in plan["models"]:
        for threads in plan["threads"]:
            argv = [sys.executable, os.path.abspath(__file__), "--case",
                    str(plan_path.parent / model["file"]), "--threads", str(threads),
                    "--warmup", str(plan["warmup"]), "--runs", str(plan["runs"])]
            if model.get("samples"):
                argv += ["--samples", str(plan_path.parent / model["samples"]),
                         "--host-key", model.get("host_key", "")]
            if plan.get("cpus"):
                argv += ["--cpus", ",".join(str(c) for c in plan["cpus"])]
            child = subprocess.run(argv, capture_output=True, text=True, check=False)
            if child.returncode != 0:
                tail = child.stderr.strip().splitlines()[-1:] or ["(no output)"]
                results.append({"model": model["file"], "threads": threads,
                                "error": f"exit {child.returncode}: {tail[0]}"})
            else:
                results.append(json.loads(child.stdout))
    return {"machine": machine_info(),
            "runtime": {"name": runtime[0], "version": runtime[1]},
            "cpus": plan.get("cpus") or None, "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, help="plan.json written by the host")
    parser.add_argument("--case", type=Path, help="(internal) one model in this process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--host-key")
    parser.add_argument("--cpus", help="comma-separated CPU ids to pin to, e.g. 0,1,2,3")
    args = parser.parse_args(argv)

    runtime = find_runtime()
    if runtime is None:
        print(f"error: {no_runtime_message()}", file=sys.stderr)
        return NO_RUNTIME
    if args.case:
        if args.cpus:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        result = run_case(args.case, args.threads, args.warmup, args.runs, args.samples,
                          args.host_key, runtime[2])
        print(json.dumps(result))
        return 0
    if not args.plan:
        parser.error("--plan is required")
    print(json.dumps(run_plan(args.plan), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
