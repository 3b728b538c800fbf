"""Compute floor: how fast a model could possibly run on a board, from a rate measured there.

A table of vector widths and a clock read from /proc/cpuinfo is not a floor (it priced int8
kernels of dynamic-range models as float32, and assumed FMA pipes a core did not have). So
every board times a large synthetic GEMM - one FULLY_CONNECTED layer, converted to each
variant by the same code as the real models - with its own runtime, at each thread count.
Its best time gives the achieved multiply-accumulates per second for that variant's kernels;
a model's floor is its MACs over that rate. p50/floor below 1 would mean the model beat the
machine's measured peak: a bug to investigate, not a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from pipeline.layout import Layout
from pipeline.variants import peak_variants

# Big enough that per-invoke overhead is noise and the kernels reach their steady rate,
# small enough (64 x 1024 x 1024 = 67 M MACs, 4 MiB of float32 weights) to push and time
# in about a second on a K1 core.
GEMM_BATCH, GEMM_IN, GEMM_OUT = 64, 1024, 1024
GEMM_MACS = GEMM_BATCH * GEMM_IN * GEMM_OUT
# The variants with a synthetic twin (variants.py's Variant.peak).
PEAK_VARIANTS = peak_variants()


def count_macs(model_path: Path) -> int:
    """Multiply-accumulates of one inference: CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    import numpy as np

    from pipeline.runtimes import open_model

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


def build_peak_models(variants: Iterable[str], layout: Layout) -> dict[str, Path]:
    """Write the synthetic GEMM model in each variant to `layout.peak_model(variant)`; fixed
    weights, so fixed bytes."""
    import numpy as np

    from pipeline.console import native_output_hidden
    from pipeline.convert import convert
    from pipeline.files import outputs_together, write_bytes

    with native_output_hidden():  # TensorFlow's import-time notices
        import keras

    rng = np.random.default_rng(0)
    inputs = keras.Input((GEMM_IN,), batch_size=GEMM_BATCH, name="x")
    outputs = keras.layers.Dense(GEMM_OUT, use_bias=False, name="gemm")(inputs)
    model = keras.Model(inputs, outputs, name="peak_gemm")
    model.get_layer("gemm").set_weights([
        (rng.standard_normal((GEMM_IN, GEMM_OUT)) * 0.03).astype(np.float32)])
    # Calibration rows shaped like the model's fixed batch.
    representative = rng.standard_normal((8, GEMM_BATCH, GEMM_IN)).astype(np.float32)
    paths = {}
    with outputs_together():  # every peak model or none (the peak task's targets)
        for variant in variants:
            if variant not in PEAK_VARIANTS:
                continue  # no synthetic twin: its floor falls back to the fastest measured rate
            with native_output_hidden():  # converter chatter; a failure shows it
                content = convert(model, variant, representative, add_channel_axis=False)
            path = layout.peak_model(variant)
            write_bytes(path, content)
            paths[variant] = path
    return paths


def peak_rates(peak_results: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Best achieved MACs/s per (variant, threads), monotone in threads.

    A run at t threads could always use fewer, so the rate at t is the best at any t' <= t:
    a noisy 2-thread measurement never makes the floor slower than the 1-thread one.
    """
    measured: dict[tuple[str, int], float] = {}
    for r in peak_results:
        if "error" in r or not r.get("min_us") or not r.get("macs"):
            continue
        key = (r["variant"], int(r["threads"]))
        measured[key] = max(measured.get(key, 0.0), r["macs"] / (r["min_us"] * 1e-6))
    rates = {}
    for variant, threads in measured:
        rates[variant, threads] = max(rate for (v, t), rate in measured.items()
                                      if v == variant and t <= threads)
    return rates


def floor_us(macs: int, variant: str, threads: int,
             rates: dict[tuple[str, int], float]) -> float | None:
    """The model's MACs at the measured peak of its variant's kernels (None if unmeasured).

    A variant without its own measurement (a custom one) gets the fastest rate measured on
    that board, so its floor stays a floor.
    """
    usable = [rate for (v, t), rate in rates.items() if t <= threads]
    if not usable or not macs:
        return None
    own = [rate for (v, t), rate in rates.items() if v == variant and t <= threads]
    return macs / max(own or usable) * 1e6
