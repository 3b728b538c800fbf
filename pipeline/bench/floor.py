"""Compute floor: how fast a model could possibly run on a board, from a rate measured there.

A table of vector widths and a clock read from /proc/cpuinfo is not a floor (it priced int8
kernels of dynamic-range models as float32, and assumed FMA pipes a core did not have). So
every board times a large synthetic GEMM - one FULLY_CONNECTED layer, converted to each
variant by the same code as the real models (for ONNX variants the same GEMM as one ONNX
MatMul, float or int8 QDQ) - with the runtime of that variant, at each thread count.
Its best time gives the achieved multiply-accumulates per second for that variant's kernels;
a model's floor is its MACs over that rate. p50/floor below 1 would mean the model beat the
machine's measured peak: a bug to investigate, not a result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from pipeline.core.formats import FORMATS
from pipeline.core.layout import Layout
from pipeline.core.variants import VARIANTS, peak_variants

# Big enough that per-invoke overhead is noise and the kernels reach their steady rate,
# small enough (64 x 1024 x 1024 = 67 M MACs, 4 MiB of float32 weights) to push and time
# in about a second on a K1 core.
GEMM_BATCH, GEMM_IN, GEMM_OUT = 64, 1024, 1024
GEMM_MACS = GEMM_BATCH * GEMM_IN * GEMM_OUT
# The variants with a synthetic twin (variants.py's Variant.peak).
PEAK_VARIANTS = peak_variants()


def count_macs(model_path: Path) -> int:
    """Multiply-accumulates of one inference, by the counter of the model's format
    (core/formats.py names it: a function of this module)."""
    from pipeline.core.variants import format_of

    return globals()[FORMATS[format_of(model_path)].mac_counter](model_path)


def count_tflite_macs(model_path: Path) -> int:
    """MACs of a .tflite graph: CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    import numpy as np

    from pipeline.core.runtimes import open_model

    macs = 0
    for op in open_model(model_path).ops():
        name, inputs, outputs = op["op"], op["inputs"], op["outputs"]
        if name == "CONV_2D":        # filter: out_c x kh x kw x in_c
            macs += int(np.prod(outputs[0])) * int(np.prod(inputs[1][1:]))
        elif name == "DEPTHWISE_CONV_2D":   # filter: 1 x kh x kw x out_c
            _, kh, kw, _ = inputs[1]
            macs += int(np.prod(outputs[0])) * kh * kw
        elif name == "FULLY_CONNECTED":     # weights: out x in
            batch = int(np.prod(outputs[0])) // inputs[1][0]
            macs += batch * int(np.prod(inputs[1]))
    return macs


# ONNX op -> (index of its data input, index of its weight input) for the MAC count.
ONNX_CONVS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
ONNX_MATMULS = {"MatMul": (0, 1), "MatMulInteger": (0, 2), "QLinearMatMul": (0, 3),
                "Gemm": (0, 1)}


def count_onnx_macs(model_path: Path) -> int:
    """MACs of an ONNX graph from its inferred shapes: a convolution costs one MAC per output
    element per weight of one output channel (in_c/group x kh x kw), a matrix product one per
    output element per element of the reduced axis."""
    import numpy as np
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {
        i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes.setdefault(info.name, tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims))
    macs = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out:
            continue
        if node.op_type in ONNX_CONVS:
            weight = shapes.get(node.input[ONNX_CONVS[node.op_type][1]])
            if weight:
                macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ONNX_MATMULS:
            a = shapes.get(node.input[ONNX_MATMULS[node.op_type][0]])
            if not a:
                continue
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
            macs += int(np.prod(out)) * int(k)
    return macs


def onnx_gemm(weights, batch: int, integer: bool, representative, scratch: Path) -> bytes:
    """The synthetic GEMM as ONNX: one MatMul, float, or int8 QDQ (per-channel, MinMax, the
    same settings as the real ONNX int8 models) through onnxruntime's quantize_static."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "peak_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")])
    # opset 17 / IR 8: what onnxruntime 1.21 (Debian trixie riscv64) loads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pipeline.bench.floor")
    model.ir_version = 8
    if not integer:
        return model.SerializeToString()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": b} for b in representative])

        def get_next(self):
            return next(self.batches, None)

    source, target = scratch / "float.onnx", scratch / "int8.onnx"
    onnx.save(model, str(source))
    quantize_static(str(source), str(target), Rows(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return target.read_bytes()


def build_peak_models(variants: Iterable[str], layout: Layout,
                      shape: tuple[int, int, int] = (GEMM_BATCH, GEMM_IN, GEMM_OUT)
                      ) -> dict[str, Path]:
    """Write the synthetic GEMM model in each variant to `layout.peak_model(variant)`; fixed
    weights, so fixed bytes. `shape` is (batch, inputs, outputs): the boards time the default;
    tests build a small one (the default's conversions take a minute)."""
    import numpy as np

    from pipeline.core.console import native_output_hidden
    from pipeline.stages.convert import convert
    from pipeline.core.files import outputs_together, write_bytes

    with native_output_hidden():  # TensorFlow's import-time notices
        import keras

    batch, n_in, n_out = shape
    rng = np.random.default_rng(0)
    inputs = keras.Input((n_in,), batch_size=batch, name="x")
    outputs = keras.layers.Dense(n_out, use_bias=False, name="gemm")(inputs)
    model = keras.Model(inputs, outputs, name="peak_gemm")
    model.get_layer("gemm").set_weights([
        (rng.standard_normal((n_in, n_out)) * 0.03).astype(np.float32)])
    # Calibration rows shaped like the model's fixed batch.
    representative = rng.standard_normal((8, batch, n_in)).astype(np.float32)
    paths = {}
    with outputs_together():  # every peak model or none (the peak task's targets)
        for variant in variants:
            if variant not in PEAK_VARIANTS:
                continue  # no synthetic twin: its floor falls back to the fastest measured rate
            if VARIANTS[variant].format == "onnx":  # the same GEMM, timed by ONNX Runtime
                layout.peak_dir().mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=layout.peak_dir()) as scratch:
                    content = onnx_gemm(model.get_layer("gemm").get_weights()[0], batch,
                                        VARIANTS[variant].integer, representative,
                                        Path(scratch))
            else:
                with native_output_hidden():  # converter chatter; a failure shows it
                    content = convert(model, variant, representative, add_channel_axis=False)
            path = layout.peak_model(variant)
            write_bytes(path, content)
            paths[variant] = path
    return paths


def peak_rates(peak_results: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Best achieved MACs/s per (variant, threads), each thread count its own measurement.

    A 2-thread GEMM slower than the 1-thread one is a finding (two threads contending for a
    loaded machine, or a runtime's pool overhead), shown by `slower_with_more_threads`, not
    hidden by carrying the 1-thread rate forward.
    """
    measured: dict[tuple[str, int], float] = {}
    for r in peak_results:
        if "error" in r or not r.get("min_us") or not r.get("macs"):
            continue
        key = (r["variant"], int(r["threads"]))
        measured[key] = max(measured.get(key, 0.0), r["macs"] / (r["min_us"] * 1e-6))
    return measured


def slower_with_more_threads(rates: dict[tuple[str, int], float]
                             ) -> list[tuple[str, int, int, float]]:
    """(variant, threads, fewer threads, rate ratio < 1) wherever a variant's measured peak at
    more threads is below its best at fewer: the report says so."""
    found = []
    for (variant, threads), rate in sorted(rates.items()):
        fewer = {t: r for (v, t), r in rates.items() if v == variant and t < threads}
        if fewer:
            best_t = max(fewer, key=lambda t: fewer[t])
            if rate < fewer[best_t]:
                found.append((variant, threads, best_t, rate / fewer[best_t]))
    return found


def floor_us(macs: int, variant: str, threads: int,
             rates: dict[tuple[str, int], float]) -> float | None:
    """The model's MACs at the measured peak of its variant's kernels at its thread count
    (None if unmeasured).

    A variant without its own measurement (a custom one) gets the fastest rate measured on
    that board, so its floor stays a floor.
    """
    usable = [rate for (v, t), rate in rates.items() if t <= threads]
    if not usable or not macs:
        return None
    # Its own thread count's measurement; only where that is missing, its best at fewer.
    own = ([rates[variant, threads]] if (variant, threads) in rates else
           [rate for (v, t), rate in rates.items() if v == variant and t < threads])
    # Else the fastest rate of its own runtime (an ONNX model without a twin is priced by
    # ONNX Runtime's kernels, not LiteRT's), else the fastest of any.
    fmt = VARIANTS[variant].format if variant in VARIANTS else None
    same = [rate for (v, t), rate in rates.items() if t <= threads and v in VARIANTS
            and VARIANTS[v].format == fmt]
    return macs / max(own or same or usable) * 1e6
