#!/usr/bin/env python3
"""On-board latency runner: time each model at each thread count, print one JSON document.

Runs on the board (or on the build host) with only the Python standard library, numpy and a
runtime per model format: `.tflite` files with the first importable TFLite runtime, `.onnx`
files with onnxruntime (SpaceMIT's execution provider first when `spacemit_ort` is
importable). A board with only one of them times that format's models and reports the others
as `NO RUNTIME`. It imports nothing from the project and uses no onnxruntime API newer than
1.21 (Debian trixie riscv64's). Usage:

    python3 runner.py --plan plan.json [--stop-on-eof]

plan.json (written by the host, file names relative to it):
    {"models": [{"file": "m_int8.tflite", "sha256": "...", "samples": "m_int8_samples.npz",
                 "samples_sha256": "...", "host_key": "host"}],
     "peak": [{"file": "peak_int8.tflite", "sha256": "...", "variant": "int8", "macs": N}],
     (an integer-input .onnx model's entry also has "input_quantization": [scale, zero_point],
      which ONNX Runtime does not expose; an integer output's "output_quantization"; the
      model's own metadata, QUANTIZATION_METADATA, wins over them),
     "threads": [1, 4], "warmup": 10, "runs": 100, "cpus": [0, 1, 2, 3],
     "case_timeout_s": 120, "deadline_s": 900, "min_rounds": 20, "min_seconds": 1.0,
     "peak_seconds": 1.0}
    (a model entry may name a "reference": {"file": ..., "sha256": ...}: the model it is timed
     side by side with, interleaved in rounds until min_rounds and min_seconds per model; its
     result then has "pair" with each round's median per model. A reference that is absent or
     has other bytes is not compared: the case is timed alone, with "pair_skipped" saying why.)

Before timing anything the runner checks every file's SHA-256 against the plan and the
requested CPUs against the ones it may run on. Each model x threads case then runs in a
fresh child process (so its memory figures are its own) with its own timeout; the plan's
deadline bounds the whole run. With --stop-on-eof the runner stops, child included, as soon
as its stdin closes: the host keeps it open while it waits, so a host that gives up (timeout,
Ctrl-C, dropped SSH connection) never leaves work running on the board.

One line per finished case goes to stderr as `progress {json}`. Exit status: 0 with the JSON
document on stdout, else one of the codes below with a message on stderr.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

NO_RUNTIME = 3  # no runtime for any model of the plan
NO_NUMPY = 4
BAD_PLAN = 5
HOST_GONE = 6
MAX_WAIT_S = 86400.0  # one day; also keeps poll()'s millisecond timeout in range
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
ORT = "onnxruntime"
SPACEMIT_EP = "SpaceMITExecutionProvider"
CPU_EP = "CPUExecutionProvider"
# A row whose format has no runtime on the board starts with this (the host and the report
# recognise it: the board is `partial`, those rows are missing, the others are timed).
NO_RUNTIME_MARK = "NO RUNTIME: "
FORMATS = {".tflite": "tflite", ".onnx": "onnx"}
# Profiled invokes per ONNX case (after PROFILE_WARMUP untimed ones): enough for a stable
# per-node mean, few enough that profiling costs well under a second on a K1 core.
PROFILE_RUNS, PROFILE_WARMUP = 50, 5
# Rounds of a side-by-side case at most, whatever its minimum duration asks for.
MAX_ROUNDS = 2000
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20

_current_child: subprocess.Popen | None = None


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


def find_onnxruntime():
    """(name, version, module, spacemit_ort importable) of onnxruntime, or None."""
    try:
        import onnxruntime
    except ImportError:
        return None
    try:  # SpacemiT's package registers its execution provider with onnxruntime on import
        import spacemit_ort  # noqa: F401
        spacemit = True
    except ImportError:
        spacemit = False
    return ORT, onnxruntime.__version__, onnxruntime, spacemit


def choose_providers(available: list[str], spacemit_importable: bool,
                     threads: int) -> list:
    """The execution providers to ask for, in order: SpaceMIT's first when its package was
    imported *and* registered it (an import that registers nothing must not be trusted), with
    its own thread option, then the CPU provider for whatever it does not take."""
    if spacemit_importable and SPACEMIT_EP in available:
        return [(SPACEMIT_EP, {"SPACEMIT_EP_INTRA_THREAD_NUM": str(threads)}), CPU_EP]
    return [CPU_EP]


def format_of(path) -> str | None:
    return FORMATS.get(Path(path).suffix)


def numpy_missing() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return True
    return False


def _where() -> str:
    return f"{sys.executable} (Python {platform.python_version()}, {platform.machine()})"


def no_numpy_message() -> str:
    return (f"numpy is not importable by {_where()}; every runtime needs it. Install it "
            "for this interpreter: `pip install numpy` or `apt install python3-numpy`.")


TFLITE_INSTALL = (
    "Install one for this interpreter: `pip install ai-edge-litert` (x86_64/aarch64 wheels) or "
    "`pip install tflite-runtime`; on riscv64 (SpacemiT K1) no package of either exists: build "
    "one from source (docs/k1.md) or time the .onnx models with onnxruntime.")
ONNX_INSTALL = (
    "Install it for this interpreter: `apt install python3-onnxruntime` (Debian trixie, Bianbu; "
    "SpacemiT's `spacemit-ort` adds its execution provider) or `pip install onnxruntime` "
    "(x86_64/aarch64 wheels).")


def no_runtime_message() -> str:
    return (f"no TFLite runtime importable by {_where()}; tried {', '.join(RUNTIMES)}. "
            + TFLITE_INSTALL)


def no_onnxruntime_message() -> str:
    return f"no ONNX runtime importable by {_where()}. " + ONNX_INSTALL


def missing_message(fmt: str) -> str:
    """The one state a model's rows get when the board has no runtime for its format: the
    state, " - ", then what was tried and the install hint (reports show the hint once)."""
    if fmt == "tflite":
        return (f"{NO_RUNTIME_MARK}no TFLite runtime on this board - {_where()} imports none "
                f"of {', '.join(RUNTIMES)}. {TFLITE_INSTALL}")
    return (f"{NO_RUNTIME_MARK}no ONNX runtime on this board - {_where()} cannot import "
            f"onnxruntime. {ONNX_INSTALL}")


ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(double)": "float64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
               "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64"}


def ort_spinning(threads: int, cpus: int) -> bool:
    """Whether ONNX Runtime's intra-op threads may spin while they wait for work: only with a
    CPU to spare. With as many threads as CPUs the spinners take the CPU from the thread that
    has the work; measured on a 2-vCPU host, 2 threads, 6 rounds of 300 invokes: p50 spread
    161 % spinning (300-831 µs), 16 % not (214-250 µs). With 1 thread there is no pool."""
    return threads > 1 and threads < cpus


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ONNX Runtime's WeightBiasQuantization optimizer quantizes, per tensor, the float weights of
# a Conv/Gemm whose input is dequantized and whose output is quantized: exactly a node a build
# keeps float with nodes_to_exclude (docs/params.md). Disabled in every session, so such a
# node runs in float; a model without float weights in that position is not affected.
ORT_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


class OrtInterpreter:
    """An onnxruntime session behind the TFLite interpreter's calls, so one timing and
    prediction path serves both formats. invoke() is session.run() on the input that
    set_tensor gave: input binding is inside the timed call, as a Python application pays it.
    """

    def __init__(self, model_path, num_threads, ort=None, spacemit=False,
                 input_quantization=None, profile_prefix=None, output_quantization=None):
        if ort is None:
            import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(num_threads or 1)
        so.inter_op_num_threads = 1
        self.spinning = ort_spinning(so.intra_op_num_threads, usable_cpus())
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if self.spinning else "0")
        so.log_severity_level = 3  # errors only: the case's stderr is its failure message
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        self.requested = choose_providers(list(ort.get_available_providers()), spacemit,
                                          int(num_threads or 1))
        self.session = ort.InferenceSession(str(model_path), so, providers=self.requested,
                                            disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        # The model's own statement first; the plan's for a model without one.
        stated = dict(self.session.get_modelmeta().custom_metadata_map)
        input_quantization = metadata_quantization(stated, "input") or input_quantization
        output_quantization = metadata_quantization(stated, "output") or output_quantization
        self._inputs = [self._detail(i, t, input_quantization if i == 0 else None)
                        for i, t in enumerate(self.session.get_inputs())]
        self._outputs = [self._detail(i, t, output_quantization if i == 0 else None,
                                      output=True)
                         for i, t in enumerate(self.session.get_outputs())]
        self._feed: dict = {}
        self._result: list = []

    @staticmethod
    def _detail(index, arg, quantization, output=False) -> dict:
        import numpy as np

        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (arg.shape or [])]
        dtype = np.dtype(ONNX_DTYPES.get(arg.type, "float32"))
        if np.issubdtype(dtype, np.integer) and quantization is None and not output:
            raise ValueError(f"input {arg.name!r} is {dtype.name} but the plan gives no "
                             "input_quantization for it")
        scale, zero_point = quantization or (0.0, 0)
        return {"index": index, "name": arg.name, "shape": np.asarray(shape), "dtype": dtype,
                "quantization": (float(scale), int(zero_point))}

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return self._inputs

    def get_output_details(self):
        return self._outputs

    def set_tensor(self, index, value):
        self._feed[self._inputs[index]["name"]] = value

    def invoke(self):
        self._result = self.session.run(None, self._feed)

    def get_tensor(self, index):
        return self._result[index]

    def providers(self) -> list[str]:
        """What the session really got: onnxruntime drops an unavailable provider with a
        warning instead of failing, so what was asked for proves nothing."""
        return list(self.session.get_providers())


def parse_profile(events: list, skip_runs: int = 0) -> dict:
    """Per-node times from an onnxruntime profile (its JSON trace), runs after `skip_runs`.

    Each `model_run` event spans one session.run(); the `<node>_kernel_time` events inside it
    are that run's nodes, with their op type and provider. Returns the nodes (mean µs per
    run, share of the node total), the median per-run node sum, the median model_run time
    and how many nodes each provider ran.
    """
    import numpy as np

    runs = sorted((e for e in events if e.get("cat") == "Session"
                   and e.get("name") == "model_run"), key=lambda e: e["ts"])[skip_runs:]
    kernels = sorted((e for e in events if e.get("cat") == "Node"
                      and str(e.get("name", "")).endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    per_node: dict[str, dict] = {}
    sums = []
    for number, run in enumerate(runs):
        start, end = run["ts"], run["ts"] + run["dur"]
        total = 0.0
        for e in kernels:
            if start <= e["ts"] <= end:
                name = e["name"][: -len("_kernel_time")]
                args = e.get("args") or {}
                node = per_node.setdefault(name, {"op": str(args.get("op_name", "?")),
                                                  "provider": str(args.get("provider", "?")),
                                                  "us": [0.0] * len(runs)})
                node["us"][number] += float(e["dur"])
                total += float(e["dur"])
        sums.append(total)
    # Medians, not means: one run preempted on a busy board must not reorder the nodes.
    medians = {name: float(np.median(n["us"])) for name, n in per_node.items()}
    grand = sum(medians.values()) or 1.0
    nodes = sorted(({"node": name, "op": n["op"], "provider": n["provider"],
                     "median_us": medians[name], "share": medians[name] / grand}
                    for name, n in per_node.items()),
                   key=lambda n: (-n["median_us"], n["node"]))
    providers: dict[str, int] = {}
    for n in nodes:
        providers[n["provider"]] = providers.get(n["provider"], 0) + 1
    return {"runs": len(runs), "nodes": nodes, "nodes_per_provider": providers,
            "node_sum_us": float(np.median(sums)) if sums else 0.0,
            "model_run_us": float(np.median([r["dur"] for r in runs])) if runs else 0.0}


def profile_onnx(make, first_input, prefix: Path) -> dict:
    """PROFILE_RUNS profiled invokes in a second session (profiling slows every node, so the
    timed session never has it on); the trace file is read, then removed."""
    interpreter = make(profile_prefix=prefix)
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], first_input)
    for _ in range(PROFILE_WARMUP + PROFILE_RUNS):
        interpreter.invoke()
    trace = Path(interpreter.session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    return parse_profile(events, skip_runs=PROFILE_WARMUP)


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


# Where an integer .onnx model states its input's and output's quantization: ONNX metadata
# (metadata_props, "[scale, zero_point]" as JSON), written by the pipeline's convert_onnx. An
# ONNX tensor carries none, and the DequantizeLinear after the input need not state it once
# the integer rewrite has bypassed the rescale behind it. Models without it (an older build)
# take the plan's, which the host read from that DequantizeLinear.
QUANTIZATION_METADATA = {"input": "input_quantization", "output": "output_quantization"}


def metadata_quantization(metadata, side):
    """(scale, zero_point) a model's metadata (str -> str) states for its "input" or
    "output"; None when it states none."""
    key = QUANTIZATION_METADATA[side]
    text = metadata.get(key)
    if text is None:
        return None
    try:
        scale, zero_point = json.loads(text)
        return float(scale), int(zero_point)
    except (ValueError, TypeError):
        raise ValueError(f"the model's metadata {key} is {text!r}, not [scale, zero_point]: "
                         "rebuild the model") from None


def scale_zero_point(text):
    """"scale,zero_point" as (float, int); None for None."""
    if not text:
        return None
    scale, zero_point = text.split(",")
    return float(scale), int(zero_point)


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
    return [label for label, _ in top1(interpreter, images)]


def top1(interpreter, images) -> list[tuple[int, float]]:
    """(class, probability) of each image's top-1; an integer output is dequantized (its
    probability is None when the runtime reports no quantization for it)."""
    import numpy as np

    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    answers = []
    for image in images:
        interpreter.set_tensor(inp["index"], quantize(image, inp))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        # The class from the raw output: dequantizing (scale > 0) keeps the order. An
        # integer output whose quantization the runtime does not report (onnxruntime: scale
        # 0) has a class but no probability.
        label = int(np.argmax(raw))
        probability = float(raw[label])
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero_point = out["quantization"]
            probability = float((raw[label] - zero_point) * scale) if scale > 0 else None
        answers.append((label, probability))
    return answers


def percentile_stats(samples_us: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(samples_us)
    return {"mean_us": float(arr.mean()), "std_us": float(arr.std()),
            "min_us": float(arr.min()), "max_us": float(arr.max()),
            **{f"p{q}_us": float(np.percentile(arr, q)) for q in (10, 50, 90, 99)}}


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0


def run_case(model: Path, threads: int, warmup: int, runs: int, samples: Path | None,
             host_key: str | None, Interpreter, min_seconds: float = 0.0,
             with_top1: bool = False, profile: bool = False, reference: Path | None = None,
             pairing: dict | None = None) -> dict:
    """Load, allocate, first invoke, warm-up and timed invokes of one model at one thread count.

    With `min_seconds`, timing goes on past `runs` until that much time was timed (at most
    100x `runs`), so a best-of measurement is not decided by one busy moment of the machine.
    With `with_top1`, the result also holds every sample's [class, probability] ("top1"):
    `predict --board` shows the board's own answer, not only whether it equals the host's.
    `Interpreter(model_path=, num_threads=)` is a TFLite interpreter class or OrtInterpreter;
    with `profile` (ONNX only) a second, profiled session adds the per-node profile. With
    `reference`, that model is timed side by side with this one (time_pair; `pairing` holds
    min_rounds, min_seconds and seed) and the timed figures are this model's invokes there.
    """
    import numpy as np

    data = dict(np.load(samples)) if samples else {}
    rss_before = rss_mb()
    start = time.perf_counter()
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    init_ms = (time.perf_counter() - start) * 1e3
    rss_loaded = rss_mb()

    inp = interpreter.get_input_details()[0]
    if "x" in data:
        first_input = quantize(data["x"][0], inp)
    else:
        first_input = np.zeros(inp["shape"], dtype=inp["dtype"])
    interpreter.set_tensor(inp["index"], first_input)
    start = time.perf_counter()
    interpreter.invoke()
    first_us = (time.perf_counter() - start) * 1e6
    for _ in range(warmup):  # not timed: caches, thread pools and lazily packed weights settle
        interpreter.invoke()
    pair, skipped = None, None
    if reference is not None:
        try:
            pair = time_pair(interpreter, reference, threads, Interpreter, first_input, warmup,
                             runs, pairing)
        except (ValueError, RuntimeError, OSError) as exc:  # timed alone, saying why
            skipped = f"reference not compared: {str(exc).splitlines()[0][:300]}"
    if pair is not None:
        timings = pair.pop("candidate_all_us")
    else:
        timings = []
        budget_us, cap = min_seconds * 1e6, 100 * runs
        while len(timings) < runs or (sum(timings) < budget_us and len(timings) < cap):
            start = time.perf_counter()
            interpreter.invoke()
            timings.append((time.perf_counter() - start) * 1e6)

    result = {"model": model.name, "threads": threads, "init_ms": init_ms, "first_us": first_us,
              "warmup": warmup, "runs": len(timings), **percentile_stats(timings)}
    if pair is not None:
        result["pair"] = pair
    if skipped:
        result["pair_skipped"] = skipped
    if hasattr(interpreter, "providers"):
        result["providers"] = interpreter.providers()
        result["ort_spinning"] = interpreter.spinning
    if "x" in data:
        answers = top1(interpreter, data["x"])
        predictions = np.asarray([label for label, _ in answers], dtype=np.int64)
        result["samples"] = int(len(predictions))
        if with_top1:
            result["top1"] = [[label, probability] for label, probability in answers]
        if "y" in data:
            result["accuracy"] = float((predictions == data["y"]).mean())
        if host_key and host_key in data:
            differ = np.flatnonzero(predictions != data[host_key])
            result["agreement"] = float(1 - len(differ) / len(predictions))
            result["disagreements"] = [int(i) for i in differ[:20]]
    # The model's own memory: what loading and allocating it added to this process, apart
    # from the Python interpreter and the runtime's libraries (which dominate the peak).
    result["model_rss_mb"] = max(0.0, rss_loaded - rss_before)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
    result["cpus"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if profile:  # after the memory figures: the profiled session is not the model's own cost
        result["profile"] = profile_onnx(
            lambda **kw: Interpreter(model_path=str(model), num_threads=threads, **kw),
            first_input, model.parent / f".{model.stem}.x{threads}.{os.getpid()}.profile")
        result["nodes_per_provider"] = result["profile"]["nodes_per_provider"]
    return result


def round_invokes(pilot_us: float, runs: int, min_rounds: int, min_seconds: float) -> int:
    """Invokes per model per round: enough that `min_rounds` rounds hold `runs` invokes and
    `min_seconds` of timing, so a microsecond model gets many invokes per round rather than
    thousands of rounds (whose medians would each be one noisy invoke)."""
    import math

    by_runs = math.ceil(runs / max(min_rounds, 1))
    by_time = math.ceil(min_seconds * 1e6 / max(min_rounds, 1) / max(pilot_us, 1e-3))
    return int(min(max(by_runs, by_time, 1), 100_000))


def time_pair(candidate, reference_path: Path, threads: int, Interpreter, first_input,
              warmup: int, runs: int, pairing: dict | None) -> dict:
    """Tonight's model and its reference in this one process, interleaved in rounds.

    Both get the same warm-up; each round times `round_invokes` invokes of one, then of the
    other, in an order drawn per round from a seeded generator (so neither always runs first,
    right after the other warmed the caches). Rounds go on until both `min_rounds` rounds and
    `min_seconds` of timed invokes per model are reached (at most MAX_ROUNDS). Each round's
    median per model is kept: the verdict's samples. Raises ValueError when the reference
    takes another input than the candidate (another contract: not comparable).
    """
    import random
    import numpy as np

    pairing = pairing or {}
    min_rounds, min_seconds = int(pairing.get("min_rounds", 20)), float(
        pairing.get("min_seconds", 1.0))
    other = Interpreter(model_path=str(reference_path), num_threads=threads)
    other.allocate_tensors()
    def contract(detail) -> str:
        scale, zero_point = detail.get("quantization") or (0.0, 0)
        text = f"{[int(d) for d in detail['shape']]} {np.dtype(detail['dtype']).name}"
        return text + (f" (scale {float(scale):.6g}, zero point {int(zero_point)})"
                       if scale else "")

    mine, theirs = contract(candidate.get_input_details()[0]), contract(
        other.get_input_details()[0])
    if mine != theirs:
        raise ValueError(f"reference {reference_path.name} takes {theirs}, this model {mine}")
    theirs = other.get_input_details()[0]
    other.set_tensor(theirs["index"], first_input)
    other.invoke()
    for _ in range(warmup):
        other.invoke()
    models = {"candidate": candidate, "reference": other}

    def timed(interpreter, count: int) -> list[float]:
        out = []
        for _ in range(count):
            start = time.perf_counter()
            interpreter.invoke()
            out.append((time.perf_counter() - start) * 1e6)
        return out

    pilot = float(np.median(timed(candidate, 3) + timed(other, 3)))
    per_round = round_invokes(pilot, runs, min_rounds, min_seconds)
    order_rng = random.Random(int(pairing.get("seed", 0)))
    all_us = {"candidate": [], "reference": []}
    medians = {"candidate": [], "reference": []}
    orders = []
    budget_us = min_seconds * 1e6
    while (len(orders) < min_rounds or min(sum(v) for v in all_us.values()) < budget_us) \
            and len(orders) < MAX_ROUNDS:
        order = ["candidate", "reference"]
        order_rng.shuffle(order)
        orders.append(order[0][0])  # "c" or "r": which ran first this round
        for name in order:
            samples_us = timed(models[name], per_round)
            all_us[name].extend(samples_us)
            medians[name].append(float(np.median(samples_us)))
    return {"reference": reference_path.name, "rounds": len(orders),
            "round_invokes": per_round, "pilot_us": pilot, "first": "".join(orders),
            "candidate_us": medians["candidate"], "reference_us": medians["reference"],
            "reference_p50_us": float(np.median(all_us["reference"])),
            "candidate_all_us": all_us["candidate"]}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_plan(plan: dict, base: Path) -> list[str]:
    """Problems that must stop the run before anything is timed: wrong bytes, absent CPUs."""
    problems = []
    for entry in [*plan.get("models", []), *plan.get("peak", [])]:
        for name_key, sum_key in (("file", "sha256"), ("samples", "samples_sha256")):
            name = entry.get(name_key)
            if not name:
                continue
            try:
                actual = sha256_file(base / name)
            except OSError as exc:
                problems.append(f"{name}: cannot read ({exc.strerror or exc})")
                continue
            if actual != entry.get(sum_key):
                problems.append(f"{name}: SHA-256 {actual[:16]}... does not match the plan's "
                                f"{str(entry.get(sum_key))[:16]}...")
    wanted = set(plan.get("cpus") or [])
    if wanted and hasattr(os, "sched_getaffinity"):
        usable = os.sched_getaffinity(0)
        if not wanted <= usable:
            problems.append(f"cpus {sorted(wanted - usable)} are not available on this board "
                            f"(it may run on {sorted(usable)})")
    return problems


def die_with_parent(parent_pid: int) -> None:
    """In the case process: get SIGKILL when the runner dies, however it dies (Linux).

    Set here, at the start of the child, rather than in a preexec_fn between fork and exec,
    which can deadlock when the runner has a second thread (its stdin watcher).
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the runner died before the line above took effect
        os._exit(HOST_GONE)


def watch_stdin() -> None:
    """Stop everything when stdin closes: the host went away (or gave up)."""
    def watch() -> None:
        try:  # os.read, not sys.stdin: a buffered reader's lock would block interpreter exit
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        child = _current_child
        if child is not None and child.poll() is None:
            child.kill()
        os._exit(HOST_GONE)

    threading.Thread(target=watch, daemon=True).start()


def progress(event: dict) -> None:
    print("progress " + json.dumps(event), file=sys.stderr, flush=True)


def run_child(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr) of one case process."""
    global _current_child
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _current_child = child
    try:
        out, err = child.communicate(timeout=timeout)
        return child.returncode, out, err
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        return None, out, err
    finally:
        _current_child = None


def runtimes_info(runtimes: dict) -> dict:
    """Per format: the runtime's name and version (ONNX: the providers it offers and whether
    spacemit_ort was importable), or why there is none."""
    info = {}
    for fmt, found in runtimes.items():
        if found is None:
            info[fmt] = {"missing": missing_message(fmt)}
        elif fmt == "onnx":
            info[fmt] = {"name": found[0], "version": found[1], "spacemit_ort": found[3],
                         "providers_available": list(found[2].get_available_providers())}
        else:
            info[fmt] = {"name": found[0], "version": found[1]}
    return info


def run_plan(plan_path: Path, runtimes: dict) -> dict:
    """Every (peak and model) x threads case of the plan, each in a child process; a case
    whose format has no runtime here gets the NO RUNTIME state without running."""
    started = time.monotonic()
    plan = json.loads(plan_path.read_text())
    deadline = started + float(plan.get("deadline_s", 3600))
    case_timeout = float(plan.get("case_timeout_s", 600))
    cases = [(entry, threads, kind) for kind in ("peak", "models")
             for entry in plan.get(kind, []) for threads in plan["threads"]]
    results, peak = [], []
    for number, (entry, threads, kind) in enumerate(cases, 1):
        remaining = deadline - time.monotonic()
        base = {"model": entry["file"], "threads": threads}
        fmt = format_of(entry["file"])
        if runtimes.get(fmt) is None:
            result = {**base, "error": missing_message(fmt) if fmt else
                      f"not run: no runtime for {entry['file']!r} (known: .tflite, .onnx)",
                      "no_runtime": fmt}
        elif remaining <= 0:
            result = {**base, "error": f"not run: the plan's deadline of "
                                       f"{plan.get('deadline_s')} s had passed"}
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--case",
                    str(plan_path.parent / entry["file"]), "--threads", str(threads),
                    "--parent-pid", str(os.getpid())]
            if kind == "peak":  # the best invoke over at least peak_seconds of timing
                argv += ["--warmup", "3", "--runs", "20",
                         "--min-seconds", str(plan.get("peak_seconds", 1.0))]
            else:
                argv += ["--warmup", str(plan["warmup"]), "--runs", str(plan["runs"])]
            if entry.get("samples"):
                argv += ["--samples", str(plan_path.parent / entry["samples"]),
                         "--host-key", entry.get("host_key", "")]
            if entry.get("top1"):
                argv += ["--top1"]
            if plan.get("cpus"):
                argv += ["--cpus", ",".join(str(c) for c in plan["cpus"])]
            for side in ("input", "output"):
                if entry.get(f"{side}_quantization"):
                    argv += [f"--{side}-quantization",
                             ",".join(str(v) for v in entry[f"{side}_quantization"])]
            if fmt == "onnx" and kind == "models":
                argv += ["--profile"]
            reference, skipped = usable_reference(entry, plan_path.parent)
            if reference:
                argv += ["--reference", str(reference), "--min-rounds",
                         str(plan.get("min_rounds", 20)), "--pair-seconds",
                         str(plan.get("min_seconds", 1.0)), "--seed", str(number)]
            timeout = min(case_timeout, remaining, MAX_WAIT_S)
            status, out, err = run_child(argv, timeout)
            result = _case_result(base, status, out, err, timeout)
            if skipped and "error" not in result:
                result["pair_skipped"] = skipped
        if kind == "peak":
            result.update(variant=entry.get("variant"), macs=entry.get("macs"))
        (peak if kind == "peak" else results).append(result)
        progress({"case": number, "of": len(cases), "kind": kind, **{
            k: result.get(k) for k in ("model", "threads", "p50_us", "error")}})
    return {"machine": machine_info(), "runtimes": runtimes_info(runtimes),
            "cpus": plan.get("cpus") or None, "results": results, "peak": peak}


def usable_reference(entry: dict, base: Path) -> tuple[Path | None, str | None]:
    """(the reference model to time beside `entry`'s, or why not). A reference whose bytes are
    absent or not the plan's is not compared; the case is still timed, alone."""
    ref = entry.get("reference")
    if not ref:
        return None, None
    path = base / str(ref.get("file", ""))
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return None, f"reference not compared: {path.name}: {exc.strerror or exc}"
    if actual != ref.get("sha256"):
        return None, (f"reference not compared: {path.name}: SHA-256 {actual[:16]}... is not "
                      f"the plan's {str(ref.get('sha256'))[:16]}...")
    return path, None


def _case_result(base: dict, status: int | None, out: str, err: str, timeout: float) -> dict:
    if status is None:
        return {**base, "error": f"timed out after {timeout:.0f} s (case_timeout_s)"}
    if status != 0:
        tail = err.strip().splitlines()[-1:] or ["(no output)"]
        how = (f"killed by {signal.Signals(-status).name}" if status < 0 and
               -status in signal.valid_signals() else f"exit {status}")
        return {**base, "error": f"{how}: {tail[0][:500]}"}
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return {**base, "error": f"case printed no JSON: {out[:200]!r}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, help="plan.json written by the host")
    parser.add_argument("--stop-on-eof", action="store_true",
                        help="stop (and stop the running case) when stdin closes")
    parser.add_argument("--case", type=Path, help="(internal) one model in this process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--parent-pid", type=int, help="(internal) die with this process")
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--host-key")
    parser.add_argument("--top1", action="store_true",
                        help="(internal) report each sample's class and probability")
    parser.add_argument("--cpus", help="comma-separated CPU ids to pin to, e.g. 0,1,2,3")
    parser.add_argument("--input-quantization", help="(internal) scale,zero_point of an "
                        "integer ONNX input")
    parser.add_argument("--output-quantization", help="(internal) scale,zero_point of an "
                        "integer ONNX output (its top-1 probability)")
    parser.add_argument("--profile", action="store_true",
                        help="(internal) add onnxruntime's per-node profile")
    parser.add_argument("--reference", type=Path,
                        help="(internal) time this model side by side with --case")
    parser.add_argument("--min-rounds", type=int, default=20)
    parser.add_argument("--pair-seconds", type=float, default=1.0,
                        help="(internal) minimum timed seconds per model of a pair")
    parser.add_argument("--seed", type=int, default=0, help="(internal) round order seed")
    args = parser.parse_args(argv)
    if args.case and args.parent_pid:  # first: importing the runtime below takes a while
        die_with_parent(args.parent_pid)

    if numpy_missing():
        print(f"error: {no_numpy_message()}", file=sys.stderr)
        return NO_NUMPY
    if args.case:  # only its own runtime: its memory figures must not include the other
        fmt = format_of(args.case) or "tflite"
        found = find_onnxruntime() if fmt == "onnx" else find_runtime()
        if found is None:
            print(f"error: {missing_message(fmt)}", file=sys.stderr)
            return NO_RUNTIME
        if args.cpus:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        if fmt == "onnx":
            make = functools.partial(
                OrtInterpreter, ort=found[2], spacemit=found[3],
                input_quantization=scale_zero_point(args.input_quantization),
                output_quantization=scale_zero_point(args.output_quantization))
        else:
            make = found[2]
        result = run_case(args.case, args.threads, args.warmup, args.runs, args.samples,
                          args.host_key, make, args.min_seconds, args.top1,
                          args.profile and fmt == "onnx", args.reference,
                          {"min_rounds": args.min_rounds, "min_seconds": args.pair_seconds,
                           "seed": args.seed})
        result["runtime"] = {"name": found[0], "version": found[1]}
        print(json.dumps(result))
        return 0
    runtimes = {"tflite": find_runtime(), "onnx": find_onnxruntime()}
    if not any(runtimes.values()):
        print(f"error: {no_runtime_message()} Nor is there an ONNX runtime: "
              f"{no_onnxruntime_message()}", file=sys.stderr)
        return NO_RUNTIME
    if not args.plan:
        parser.error("--plan is required")
    if args.stop_on_eof:
        watch_stdin()
    plan = json.loads(args.plan.read_text())
    problems = check_plan(plan, args.plan.parent)
    if problems:
        print("error: refusing to time anything: " + "; ".join(problems), file=sys.stderr)
        return BAD_PLAN
    wanted = {format_of(e["file"]) for e in plan.get("models", [])} or {"tflite"}
    if all(runtimes.get(fmt) is None for fmt in wanted):  # nothing of the plan can run here
        print("error: " + "; ".join(missing_message(f) if f else "unknown model format"
                                    for f in sorted(wanted, key=str)), file=sys.stderr)
        return NO_RUNTIME
    print(json.dumps(run_plan(args.plan, runtimes), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
