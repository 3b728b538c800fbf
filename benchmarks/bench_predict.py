"""predict on photo-like pictures: accuracy per rendering family and time per image, one run.

Renders seeded real MNIST test digits (the build's own test split) with tests/photo_digits.py
(an independent model of a photo: paper x light + noise, then the file format), writes them as
files and classifies them with `pipeline.predict.classify.predict_files`, the function the CLI uses:

1. accuracy of each TFLite variant on each rendering family (all families in one run), and
   how many int8 answers predict marks `uncertain`, with int8's accuracy on the others;
2. per-image time in one process: `predict_files([one image])` for each of 100 images
   (decode, preprocessing, every TFLite variant), median and p90;
3. wall time of one `python -m pipeline.predict IMAGE` process (median of 3), without and
   with the Keras column (which imports TensorFlow).

Usage: python benchmarks/bench_predict.py [--build mnist_cnn] [--artifacts DIR] [--digits 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.predict import classify as predict  # noqa: E402
from pipeline.stages.card import load_card  # noqa: E402
from tests.photo_digits import EXTRA_FAMILIES, FAMILIES, render_all, write_all  # noqa: E402


def tflite_models(card: dict, model_dir: Path, build: str) -> dict[str, Path]:
    """Every variant but Keras: the timing is predict's own, not TensorFlow's import."""
    models = predict.model_files(card, model_dir, build)
    return {name: path for name, path in models.items() if Path(path).suffix != ".h5"}


def cli_seconds(argv: list[str], env: dict[str, str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.predict", *argv], cwd=REPO, env=env,
                       capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default="mnist_cnn")
    parser.add_argument("--artifacts", type=Path,
                        default=Path(os.environ.get("PIPELINE_ARTIFACTS", REPO / "artifacts")))
    parser.add_argument("--digits", type=int, default=300, help="test digits per family")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()

    model_dir = args.artifacts / "models" / args.build
    card = load_card(model_dir, args.build)
    models = tflite_models(card, model_dir, args.build)
    with np.load(args.artifacts / "data" / args.dataset / f"{args.dataset}.npz") as data:
        x_test, y_test = data["x_test"], data["y_test"]
    idx = np.random.default_rng(args.seed).choice(len(y_test), args.digits, replace=False)
    digits, labels = x_test[idx], y_test[idx]

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as work:
        paths = write_all(render_all(digits, {**FAMILIES, **EXTRA_FAMILIES}, args.seed),
                            Path(work))
        print(f"build {args.build}, {args.digits} test digits per family "
              f"(seed {args.seed}), variants {', '.join(models)}")
        width = {v: max(10, len(v) + 2) for v in models}  # "onnx_int8_tflite" is 16 wide
        print(f"{'family':<20}" + "".join(f"{v:>{width[v]}}" for v in models)
              + f"{'uncertain':>11}{'int8 rest':>11}")
        totals = {v: [0, 0] for v in models}
        answers: list[tuple[float, bool]] = []  # int8 (probability, right) on the families
        npz = args.artifacts / "data" / args.dataset / f"{args.dataset}.npz"
        # predict before issue 15 had no uncertainty; the benchmark runs against either.
        extra_args = ({"limits": predict.ink_limits(npz)} if hasattr(predict, "ink_limits")
                      else {})
        for family, files in paths.items():
            results = predict.predict_files(files, card, models, **extra_args)
            if family in FAMILIES:
                answers += [(r["predictions"]["int8"]["probability"],
                             r["predictions"]["int8"]["class"] == label)
                            for r, label in zip(results, labels) if "predictions" in r]
            cells = []
            for variant in models:
                right = sum(1 for r, label in zip(results, labels)
                            if r.get("predictions", {}).get(variant, {}).get("class") == label)
                if family in FAMILIES:
                    totals[variant][0] += right
                    totals[variant][1] += len(files)
                cells.append(f"{100 * right / len(files):>{width[variant] - 1}.1f}%")
            doubted = [bool(r.get("uncertain")) for r in results]
            rest = [r.get("predictions", {}).get("int8", {}).get("class") == label
                    for r, label, d in zip(results, labels, doubted) if not d]
            cells.append(f"{100 * sum(doubted) / len(files):>10.1f}%")
            cells.append(f"{100 * sum(rest) / max(len(rest), 1):>10.1f}%")
            extra = "  (extra)" if family in EXTRA_FAMILIES else ""
            print(f"{family:<20}" + "".join(cells) + extra)
        print(f"{'all issue families':<20}" + "".join(
            f"{100 * r / n:>{width[v] - 1}.1f}%" for v, (r, n) in totals.items()))
        print("int8 top-1 probability below t on the issue's families: share of answers, "
              "and how many of those are right")
        for t in (0.5, 0.6, 0.7, 0.8, 0.9):
            below = [right for p, right in answers if p < t]
            above = [right for p, right in answers if p >= t]
            print(f"  t = {t:.1f}: {100 * len(below) / len(answers):5.1f} % of answers, "
                  f"{100 * sum(below) / max(len(below), 1):5.1f} % of them right; "
                  f"{100 * sum(above) / max(len(above), 1):5.1f} % right at or above t")

        # Interleaved, so the 100 images span every family.
        sample = [p for files in zip(*paths.values()) for p in files][:100]
        times = []
        for path in sample:
            started = time.perf_counter()
            predict.predict_files([path], card, models)
            times.append(time.perf_counter() - started)
        times.sort()
        p90 = times[int(0.9 * len(times))]
        print(f"per image, one process ({len(times)} images, every family): median "
              f"{1e3 * statistics.median(times):.1f} ms, p90 {1e3 * p90:.1f} ms")

        env = {**os.environ, "PIPELINE_ARTIFACTS": str(args.artifacts)}
        one = [str(sample[0]), "--build", args.build]
        # The CLI before and after issue 16 differ in how Keras is chosen; measure either.
        help_text = subprocess.run([sys.executable, "-m", "pipeline.predict", "--help"],
                                   cwd=REPO, env=env, capture_output=True, text=True).stdout
        if "--keras" in help_text:
            without, with_keras = one, [*one, "--keras"]
        elif "--no-keras" in help_text:
            without, with_keras = [*one, "--no-keras"], one
        else:
            without, with_keras = None, one
        if without is not None:
            print(f"one `python -m pipeline.predict IMAGE` process: "
                  f"{cli_seconds(without, env):.2f} s without Keras, "
                  f"{cli_seconds(with_keras, env):.2f} s with it (median of 3)")
        else:
            print(f"one `python -m pipeline.predict IMAGE` process (Keras always on): "
                  f"{cli_seconds(with_keras, env):.2f} s (median of 3)")


if __name__ == "__main__":
    main()
