"""Evaluate stage: accuracy drift between Keras and every model variant on the full test set.

Writes `accuracy.json` and `accuracy.md` for a build, prints the table, and fails (after
writing) when a drift-gated variant (variants.py: int8, onnx_int8) loses more than
`max_drift_pt` points against Keras. Each variant's agreement is measured against the models
the registry compares it with (`compared_with`: Keras for all; the ONNX variants also against
the int8 .tflite they must stand in for).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from pipeline import PipelineError
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import outputs_together, sha256_file, write_json, write_text
from pipeline.core.layout import ACCURACY_JSON, ACCURACY_MD
from pipeline.core.text import utc_now
from pipeline.core.variants import KERAS, VARIANTS, drift_gated_variants


class DriftError(PipelineError):
    pass


def model_probabilities(model_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N x classes, float32) of each image (N x H x W uint8) under the
    host runtime of the model's format, dequantized (see pipeline/core/runtimes.py)."""
    from pipeline.core.runtimes import open_model

    return open_model(model_path).probabilities(images, batch_size)


def model_predict(model_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Top-1 class of each image (N x H x W uint8) under the host runtime."""
    return np.argmax(model_probabilities(model_path, images, batch_size), axis=1)


def keras_probabilities(model_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax output (N x classes) of the saved Keras model for N x H x W uint8 images."""
    from pipeline.stages.train import load_model

    model = load_model(model_path)
    return model.predict(images[..., np.newaxis].astype(np.float32), batch_size=batch_size,
                         verbose=0)


def keras_predict(model_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.argmax(keras_probabilities(model_path, images, batch_size), axis=1)


@dataclass(frozen=True)
class VariantResult:
    name: str
    path: str
    sha256: str
    bytes: int
    accuracy: float
    agreement: float
    drift_pt: float
    per_class_accuracy: dict[str, float]
    # Top-1 agreement with each model the variant is compared with (Keras first).
    agreement_with: dict[str, float]


def score(name: str, path: Path, predictions: np.ndarray, reference: np.ndarray,
          labels: np.ndarray, class_names: Sequence[str],
          others: dict[str, np.ndarray] | None = None) -> VariantResult:
    """Compare one variant's predictions with the labels and with the Keras reference (its
    drift's), and its top-1 agreement with each of `others` (name -> predictions) too."""
    correct = predictions == labels
    accuracy = float(correct.mean())
    reference_accuracy = float((reference == labels).mean())
    per_class = {class_names[c]: float(correct[labels == c].mean())
                 for c in range(len(class_names)) if np.any(labels == c)}
    agreement = float((predictions == reference).mean())
    return VariantResult(
        name=name, path=str(path), sha256=sha256_file(path), bytes=Path(path).stat().st_size,
        accuracy=accuracy,
        agreement=agreement,
        drift_pt=round(100 * (accuracy - reference_accuracy), 4),
        per_class_accuracy=per_class,
        agreement_with={KERAS: agreement, **{other: float((predictions == p).mean())
                                             for other, p in (others or {}).items()}})


def render_markdown(report: dict[str, Any]) -> str:
    variants = report["variants"]
    # One agreement column per model any variant is compared with besides Keras ("-" in
    # the rows not compared with it).
    others = list(dict.fromkeys(name for v in variants for name in v.get("agreement_with", {})
                                if name != KERAS))

    def agree(v: dict[str, Any], other: str) -> str:
        value = v.get("agreement_with", {}).get(other)
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [[v["name"], f"{v['bytes']:,}", f"{100 * v['accuracy']:.2f}",
             f"{100 * v['agreement']:.2f}", *(agree(v, o) for o in others),
             f"{v['drift_pt']:+.2f}"] for v in variants]
    table = tabulate(rows, headers=["variant", "bytes", "accuracy %", "agree w/ Keras %",
                                    *(f"agree w/ {o} %" for o in others), "drift pt"],
                     tablefmt="github", disable_numparse=True)
    classes = list(variants[0]["per_class_accuracy"])
    per_class = tabulate(
        [[c, *(f"{100 * v['per_class_accuracy'][c]:.2f}" for v in variants)] for c in classes],
        headers=["class", *(v["name"] for v in variants)], tablefmt="github", disable_numparse=True)
    made = ", ".join(f"`{Path(v['path']).name}` {v['sha256'][:12]}" for v in variants)
    return (f"# Accuracy drift: {report['build']}\n\n"
            f"Made {report['made_utc']} from {made} (SHA-256 prefix).\n\n"
            f"Dataset `{report['dataset']}`, {report['test_samples']:,} test images. "
            f"Drift is accuracy minus Keras accuracy, in percentage points.\n\n{table}\n\n"
            f"## Per-class accuracy (%)\n\n{per_class}\n")


def check_drift(report: dict[str, Any], max_drift_pt: float) -> None:
    gated = drift_gated_variants()
    for v in report["variants"]:
        if v["name"] in gated and -v["drift_pt"] > max_drift_pt:
            raise DriftError(
                f"{report['build']}: {v['name']} accuracy {100 * v['accuracy']:.2f} % is "
                f"{-v['drift_pt']:.2f} points below Keras, more than max_drift_pt = "
                f"{max_drift_pt}. Report written; try more convert.representative_samples "
                "or raise evaluate.max_drift_pt if this drop is acceptable.")


def run(build: str, dataset: str, class_names: Sequence[str], model_path: Path,
        variant_paths: dict[str, Path], data_path: Path, batch_size: int, max_drift_pt: float,
        report_dir: Path) -> dict[str, Any]:
    """The doit action: score Keras and every variant, write the reports, apply the drift gate."""
    from pipeline.stages.preprocess import load_arrays

    arrays = load_arrays(data_path)
    images, labels = arrays["x_test"], arrays["y_test"]
    with native_output_hidden():  # TensorFlow's start-up notices
        reference = keras_predict(model_path, images, batch_size)
    results = [score(KERAS, model_path, reference, reference, labels, class_names)]
    predictions = {}
    for name, path in variant_paths.items():
        with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            predictions[name] = model_predict(path, images, batch_size)
    for name, path in variant_paths.items():
        # Keras is the drift reference; the registry's other references the build ships
        # (an ONNX variant's int8 .tflite) are agreement columns.
        others = {other: predictions[other] for other in VARIANTS[name].compared_with
                  if other != KERAS and other in predictions}
        results.append(score(name, path, predictions[name], reference, labels, class_names,
                             others))
    report = {"build": build, "dataset": dataset, "test_samples": int(len(labels)),
              "made_utc": utc_now(),
              "variants": [vars(r) for r in results]}
    markdown = render_markdown(report)
    with outputs_together():  # accuracy.json never without accuracy.md
        write_json(Path(report_dir) / ACCURACY_JSON, report)
        write_text(Path(report_dir) / ACCURACY_MD, markdown)
    print(markdown)
    check_drift(report, max_drift_pt)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    from pipeline.core.datasets import DATASETS
    from pipeline.core.variants import variant_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("model", type=Path, help="the .h5 written by train")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("models", type=Path, nargs="+", help="<build>_<variant> model files")
    parser.add_argument("--report-dir", type=Path, default=Path("."))
    from pipeline.core.params import EvaluateParams

    # The defaults are the schema's (pipeline/core/params.py), never a second copy.
    defaults = EvaluateParams()
    parser.add_argument("--max-drift-pt", type=float, default=defaults.max_drift_pt,
                        help="default: evaluate.max_drift_pt's, %(default)s")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="default: evaluate.batch_size's, %(default)s")
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    variants = {variant_of(p)[1]: p for p in args.models}
    try:
        run(args.build, args.dataset, DATASETS[args.dataset].class_names, args.model, variants,
            args.data, args.batch_size, args.max_drift_pt, args.report_dir)
    except DriftError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
