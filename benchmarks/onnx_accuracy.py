"""onnx_int8 against the int8 .tflite on MNIST, and the translation against LiteRT, for the
built-in builds and three models of a user's that no quantization test has seen.

For each model (trained here briefly on the real MNIST, or the built-in builds' .h5 from an
artifact tree): test accuracy of Keras, the int8 .tflite (LiteRT) and onnx_int8 for each
calibration method with and without ORT's quant_pre_process; and onnx_int8_tflite's
agreement with LiteRT before and after the integer rewrite (bit-identical images, worst
difference in output steps, images whose top-1 differs). The default of
convert.onnx_calibration and convert.onnx_tflite_max_steps come from these tables.

    python benchmarks/onnx_accuracy.py --artifacts DIR [--epochs 1]
        [--out docs/measured/onnx_accuracy.md]

It writes that page (`--out ''`: not), the tables generated from what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def own_models() -> dict[str, Any]:
    """A user's small CNN, a depthwise-separable CNN, and a global-average-pooling head."""
    import keras
    from keras import layers

    def stack(name: str, *body: Any) -> Any:
        return keras.Sequential([keras.Input((28, 28, 1), name="image"),
                                 layers.Rescaling(1 / 255, name="rescale"), *body,
                                 layers.Dense(10, activation="softmax", name="classes")],
                                name=name)

    return {
        "own_small_cnn": stack("own_small_cnn",
                               layers.Conv2D(8, 3, activation="relu", name="c1"),
                               layers.MaxPooling2D(name="p1"), layers.Flatten(name="f")),
        "own_separable": stack("own_separable",
                               layers.Conv2D(16, 3, activation="relu", name="c1"),
                               layers.SeparableConv2D(32, 3, activation="relu", name="s1"),
                               layers.MaxPooling2D(name="p1"),
                               layers.SeparableConv2D(64, 3, activation="relu", name="s2"),
                               layers.MaxPooling2D(name="p2"), layers.Flatten(name="f")),
        "own_gap": stack("own_gap",
                         layers.Conv2D(16, 3, activation="relu", name="c1"),
                         layers.Conv2D(32, 3, activation="relu", name="c2"),
                         layers.MaxPooling2D(name="p1"),
                         layers.Conv2D(64, 3, activation="relu", name="c3"),
                         layers.GlobalAveragePooling2D(name="gap")),
    }


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean() * 100)


def measure(name: str, model: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    from pipeline.core.console import native_output_hidden
    from pipeline.core.runtimes import open_model, open_model_content
    from pipeline.stages.calibration import representative_indices
    from pipeline.stages.convert import convert
    from pipeline.stages.convert_onnx import (CALIBRATION_METHODS, compare_outputs,
                                              export_float, quantize_int8, rewrite_integer,
                                              translate_tflite)

    x, y = arrays["x_test"], arrays["y_test"]
    representative = arrays["x_train"][representative_indices(arrays["y_train"], 500, 1234)]
    row: dict[str, Any] = {"model": name, "test_images": len(x)}
    with native_output_hidden():
        row["keras"] = accuracy(model.predict(x[..., None].astype(np.float32),
                                              batch_size=500, verbose=0), y)
        with tempfile.TemporaryDirectory(prefix="onnx-accuracy.") as tmp:
            tflite = Path(tmp) / f"{name}_int8.tflite"
            tflite.write_bytes(convert(model, "int8", representative))
            row["int8"] = accuracy(open_model(tflite).probabilities(x, 500), y)
            plain = translate_tflite(tflite, integer=False)
            for label, content in (("before", plain), ("after", rewrite_integer(plain)[0])):
                agreement = compare_outputs(content, tflite, x, name)
                row[f"translate_{label}"] = (agreement.identical, agreement.worst,
                                             int(agreement.top1_differs.size))
        float_model = export_float(model)
        for method in CALIBRATION_METHODS:
            for preprocess in (False, True):
                content = quantize_int8(float_model, representative, method, preprocess)
                row[f"{method}{'+pre' if preprocess else ''}"] = accuracy(
                    open_model_content(content, "onnx").probabilities(x, 500), y)
    return row


def page(rows: list[dict[str, Any]], command: str, default: str) -> str:
    """The measured page: accuracy per quantization, and the translation's agreement."""
    from tabulate import tabulate

    methods = [k for k in rows[0] if k not in ("model", "test_images", "keras", "int8")
               and not k.startswith("translate_")]
    accuracy_rows = [[r["model"], f"{r['keras']:.2f}", f"{r['int8']:.2f}",
                      *(f"{r[m]:.2f}" for m in methods),
                      f"{r[default] - r['int8']:+.2f}"] for r in rows]
    agreement_rows = [[r["model"], *(f"{r[f'translate_{side}'][i]:,}"
                                     for side in ("before", "after") for i in range(3))]
                      for r in rows]
    n = rows[0]["test_images"]
    return (
        "# onnx_int8 against the int8 .tflite, and the translation against LiteRT\n\n"
        f"Generated by `{command}`; do not edit. MNIST, all {n:,} test images. The built-in "
        "builds are the artifact tree's trained models; own_* are a user's models that no "
        "test of quantization has seen, trained here briefly. Every quantization is "
        "calibrated on the same 500 representative training images.\n\n"
        "## Accuracy %: Keras, the int8 .tflite (LiteRT) and onnx_int8 per calibration\n\n"
        "`+pre`: after ONNX Runtime's quant_pre_process. The last column is onnx_int8 as "
        f"the pipeline builds it by default ({default}) against the int8 .tflite, in points."
        "\n\n" + tabulate(accuracy_rows, headers=["model", "Keras", "int8", *methods,
                                                 f"{default} - int8 pt"],
                           tablefmt="github", disable_numparse=True)
        + "\n\n## onnx_int8_tflite against LiteRT, before and after the integer rewrite\n\n"
        "Per test image, the int8 outputs of ONNX Runtime and LiteRT: images whose outputs "
        "are identical, the largest difference in output quantization steps, and images "
        "whose top-1 class differs.\n\n"
        + tabulate(agreement_rows, headers=["model", "identical before", "worst steps before",
                                            "top-1 differs before", "identical after",
                                            "worst steps after", "top-1 differs after"],
                   tablefmt="github", disable_numparse=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path,
                        default=Path(os.environ.get("PIPELINE_ARTIFACTS", REPO / "artifacts")))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="model names to measure (default: all)")
    parser.add_argument("--out", default=str(REPO / "docs" / "measured" / "onnx_accuracy.md"),
                        help="the generated page ('' to write none)")
    args = parser.parse_args(argv)
    import keras

    from pipeline.core.console import quiet_third_party, verbose_requested
    from pipeline.stages.preprocess import load_arrays
    from pipeline.stages.train import load_model

    quiet_third_party(verbose_requested(os.environ))
    arrays = load_arrays(args.artifacts / "data" / "mnist" / "mnist.npz")
    models = {b: load_model(args.artifacts / "models" / b / f"{b}.h5")
              for b in ("mnist_cnn", "mnist_mlp")
              if (args.artifacts / "models" / b / f"{b}.h5").exists()}
    keras.utils.set_random_seed(1234)
    for name, model in own_models().items():
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss="sparse_categorical_crossentropy")
        if not args.only or name in args.only:
            model.fit(arrays["x_train"][..., None].astype(np.float32), arrays["y_train"],
                      epochs=args.epochs, batch_size=128, verbose=0)
            models[name] = model
    rows = []
    for name, model in models.items():
        if args.only and name not in args.only:
            continue
        rows.append(measure(name, model, arrays))
        print(" | ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in rows[-1].items()), flush=True)
    if args.out and rows:
        from pipeline.core.params import ConvertParams

        defaults = ConvertParams()
        default = defaults.onnx_calibration + ("+pre" if defaults.onnx_preprocess else "")
        command = "python benchmarks/onnx_accuracy.py" + (
            f" --epochs {args.epochs}" if args.epochs != 1 else "") + (
            f" --only {' '.join(args.only)}" if args.only else "")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page(rows, command, default))
        print(f"{out}: written")


if __name__ == "__main__":
    main()
