"""Per-layer quantization error of a build's int8 model against its float graph.

Uses TensorFlow's `tf.lite.experimental.QuantizationDebugger`: it converts the Keras model
with the int8 converter settings of `convert` (same calibration sample), adds a
numeric-verify op after every quantized tensor, runs a fixed, seeded set of test images
through it and compares each int8 tensor with the float tensor it replaces. The report ranks
the tensors by RMSE relative to their quantization scale, worst first.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from pipeline.core import layout
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import atomic_path, outputs_together, write_text
from pipeline.core.params import ConvertParams, LayersParams, load_params

# Rounding alone leaves a uniform error of at most half a step: RMSE = scale / sqrt(12).
ROUNDING_ONLY = 1 / math.sqrt(12)
# TensorFlow's debugger guide flags tensors above this RMSE/scale as worth keeping in float.
SUSPECT = 0.7

OUTPUTS = layout.LAYERS_FILES  # every file `run` writes (dodo.py's targets and clean list)
CSV_FIELDS = ("rank", "op", "tensor", "tensor_index", "elements", "rmse_over_scale", "rmse",
              "mean_error", "max_abs_error", "scale", "zero_point")


def layer_errors(model: Any, representative: np.ndarray, debug_images: np.ndarray,
                 int8_io: str = "int8") -> list[dict[str, Any]]:
    """One row per quantized tensor of the int8 graph, ranked by RMSE / scale (worst first).

    `representative` calibrates the ranges (as `convert` does); `debug_images` are compared.
    """
    import tensorflow as tf

    from pipeline.stages.convert import INT8, converter_for, representative_dataset

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter_for(model, INT8, representative, int8_io),
        debug_dataset=representative_dataset(debug_images))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for r in csv.DictReader(io.StringIO(dump.getvalue())):
        scale, mse = float(r["scale"]), float(r["mean_squared_error"])
        rows.append({"op": r["op_name"], "tensor": r["tensor_name"],
                     "tensor_index": int(r["tensor_idx"]),
                     "elements": int(float(r["num_elements"])),
                     "rmse_over_scale": math.sqrt(mse) / scale, "rmse": math.sqrt(mse),
                     "mean_error": float(r["mean_error"]),
                     "max_abs_error": float(r["max_abs_error"]), "scale": scale,
                     "zero_point": int(r["zero_point"])})
    rows.sort(key=lambda row: row["rmse_over_scale"], reverse=True)
    return [{"rank": i + 1, **row} for i, row in enumerate(rows)]


def short_name(row: dict[str, Any]) -> str:
    """`OP layer` from a fused tensor name such as `cnn_1/dense_1/MatMul;cnn_1/dense_1/Relu`."""
    first = row["tensor"].split(";")[0]
    parts = first.split("/")
    layer = parts[-2] if len(parts) >= 2 else first
    return f"{row['op']} {layer}"


def advice(rows: Sequence[dict[str, Any]]) -> str:
    worst = rows[0]
    ratio = worst["rmse_over_scale"]
    lines = [f"The worst tensor is **{short_name(worst)}** (`{worst['tensor']}`): RMSE "
             f"{ratio:.2f} quantization steps, max error {worst['max_abs_error']:.4g} "
             f"(scale {worst['scale']:.4g}). Rounding alone gives {ROUNDING_ONLY:.2f} steps; "
             "error above that has been carried in from earlier layers or comes from a range "
             "that clips.", ""]
    if ratio > SUSPECT:
        lines.append(f"It is above {SUSPECT} steps, the level TensorFlow's debugger guide "
                     "treats as worth acting on. What to do, cheapest first:")
    else:
        lines.append(f"Every tensor is under {SUSPECT} steps: quantization costs this model "
                     "little. If the accuracy report still shows drift:")
    lines += ["",
              "1. More calibration images: raise `convert.representative_samples` (its ranges "
              "come from those images only).",
              "2. Keep this layer in float: add "
              f"`float_layers = [\"{worst['tensor']}\"]` to this build's `[[builds]]` entry in "
              "params.toml; `doit` then builds `<build>_int8_selective.tflite` and the accuracy "
              "report shows its accuracy and size next to full int8 (float kernels cost "
              "latency on the board).",
              "3. A different model: layers with wide, spiky activations (often the last "
              "dense layer before softmax) quantize badly; batch normalisation or a smaller "
              "final layer narrows them."]
    return "\n".join(lines)


def render_markdown(build: str, rows: Sequence[dict[str, Any]], samples: int) -> str:
    table = tabulate(
        [[r["rank"], short_name(r), f"{r['rmse_over_scale']:.3f}", f"{r['mean_error']:+.2e}",
          f"{r['max_abs_error']:.2e}", f"{r['scale']:.3g}", r["zero_point"], f"{r['elements']:,}"]
         for r in rows],
        headers=["rank", "tensor", "RMSE / scale", "mean error", "max abs error", "scale",
                 "zero point", "elements"], tablefmt="github", disable_numparse=True)
    return (f"# Per-layer quantization error: {build}\n\n"
            f"Each quantized tensor of the int8 graph against the float tensor it replaces, on "
            f"{samples} seeded test images, measured by TensorFlow's "
            "`tf.lite.experimental.QuantizationDebugger`. RMSE / scale is the error in "
            "quantization steps, worst first. Full tensor names in [layers.csv](layers.csv); "
            "chart: [layers.png](layers.png).\n\n"
            f"{advice(rows)}\n\n{table}\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def render_chart(build: str, rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of RMSE / scale, worst on top, with the rounding-only and suspect lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(rows)), dpi=100)
    values = [r["rmse_over_scale"] for r in rows]
    names = [f"{r['rank']}. {short_name(r)}" for r in rows]
    colours = ["#d62728" if v > SUSPECT else "#1f77b4" for v in values]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
    ax.axvline(ROUNDING_ONLY, color="grey", linestyle="--", label="rounding only (0.29)")
    ax.axvline(SUSPECT, color="#d62728", linestyle=":", label=f"worth acting on ({SUSPECT})")
    ax.set_xlim(0, max(values + [SUSPECT]) * 1.18)
    ax.set_xlabel("RMSE / quantization scale (steps)")
    ax.set_title(f"{build}: int8 error per tensor vs float")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


@outputs_together()  # layers.md, .csv and .png (and layers_onnx.*): all of them, or none
def run(build: str, model_path: Path, data_path: Path, convert_params: ConvertParams,
        params: LayersParams, report_dir: Path,
        onnx_models: tuple[Path, Path] | None = None) -> list[dict[str, Any]]:
    """The doit action: per-layer error of the build's int8 model; layers.{md,csv,png}.
    `onnx_models` (onnx_float32, onnx_int8 paths): also layers_onnx.{md,json} on the same
    test images (layers_onnx.py)."""
    from pipeline.stages.convert import checked_sample_count, representative_indices
    from pipeline.stages.preprocess import load_arrays
    from pipeline.stages.train import load_model

    arrays = load_arrays(data_path)
    representative = arrays["x_train"][representative_indices(
        arrays["y_train"], checked_sample_count(
            convert_params.representative_samples, len(arrays["y_train"]),
            "convert.representative_samples", f"{data_path} has only", "training images"),
        convert_params.seed)]
    indices = representative_indices(arrays["y_test"], checked_sample_count(
        params.samples, len(arrays["y_test"]), "layers.samples", f"{data_path} has only",
        "test images"), params.seed)
    debug = arrays["x_test"][indices]
    # The converter, the debugger's own interpreter and the SavedModel loader all print.
    with native_output_hidden():
        rows = layer_errors(load_model(model_path), representative, debug,
                            convert_params.int8_io)
    report_dir = Path(report_dir)
    write_csv(report_dir / "layers.csv", rows)
    render_chart(build, rows, report_dir / "layers.png")
    markdown = render_markdown(build, rows, len(debug))
    write_text(report_dir / "layers.md", markdown)
    if onnx_models is not None:
        _onnx_report(build, onnx_models, debug, [int(i) for i in indices], report_dir)
    else:  # a build without onnx_int8 (any more): no ONNX report describing an old model
        for stale in layout.LAYERS_ONNX_FILES:
            (report_dir / stale).unlink(missing_ok=True)
    if rows:  # one line on the console; the ranking is in layers.md
        worst = rows[0]
        print(f"{report_dir / 'layers.md'}: {len(rows)} int8 tensors; worst "
              f"{worst['tensor']!r} at {worst['rmse_over_scale']:.3f} quantization steps")
    return rows


def _onnx_report(build: str, onnx_models: tuple[Path, Path], debug: np.ndarray,
                 indices: list[int], report_dir: Path) -> None:
    from pipeline.stages import layers_onnx

    rows = layers_onnx.layer_errors(*onnx_models, debug)
    layers_onnx.write_reports(build, rows, indices, report_dir,
                              layers_onnx.float_nodes(onnx_models[1]))
    if rows:
        print(f"{report_dir / 'layers_onnx.md'}: {len(rows)} onnx_int8 activations; worst "
              f"{rows[0]['tensor']!r} at {rows[0]['rmse_over_scale']:.3f} quantization steps")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("model", type=Path, help="the .h5 written by train")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    parser.add_argument("--report-dir", type=Path, default=Path("."))
    parser.add_argument("--onnx", type=Path, nargs=2, metavar=("FLOAT32", "INT8"),
                        help="onnx_float32 and onnx_int8: also layers_onnx.{md,json}")
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    params = load_params(args.params, os.environ.get("PIPELINE_SET", ""))
    run(args.build, args.model, args.data, params.convert, params.layers, args.report_dir,
        tuple(args.onnx) if args.onnx else None)


if __name__ == "__main__":
    main()
