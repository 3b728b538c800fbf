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
       [--timed-images 100] [--cli-repeats 3] [--out docs/measured/predict_photos.md]

It also writes what it prints to that page (`--out ''`: not), which docs/predict.md quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.console import quiet_third_party, verbose_requested  # noqa: E402
from pipeline.predict import classify as predict  # noqa: E402
from pipeline.stages.card import load_card  # noqa: E402
from tests.photo_digits import EXTRA_FAMILIES, FAMILIES, render_all, write_all  # noqa: E402


def tflite_models(card: dict, model_dir: Path, build: str) -> dict[str, Path]:
    """Every variant but Keras: the timing is predict's own, not TensorFlow's import."""
    models = predict.model_files(card, model_dir, build)
    return {name: path for name, path in models.items() if Path(path).suffix != ".h5"}


def cli_seconds(argv: list[str], env: dict[str, str], repeats: int) -> float:
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
    parser.add_argument("--timed-images", type=int, default=100,
                        help="images timed one by one in this process")
    parser.add_argument("--cli-repeats", type=int, default=3,
                        help="runs of each timed `python -m pipeline.predict` (0: none)")
    parser.add_argument("--out", default=str(REPO / "docs" / "measured" / "predict_photos.md"),
                        help="the generated page ('' to write none)")
    args = parser.parse_args()
    # As predict's own main(): LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
    # and TensorFlow's start-up lines stay off the console unless PIPELINE_VERBOSE=1.
    quiet_third_party(verbose_requested(os.environ))
    printed = io.StringIO()
    with contextlib.redirect_stdout(Tee(sys.stdout, printed)):
        measure(args)
    if args.out:
        write_page(Path(args.out), printed.getvalue(), args)


class Tee(io.TextIOBase):
    """Writes to every stream it is given: the console and the page's copy."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def write_page(out: Path, printed: str, args: argparse.Namespace) -> None:
    """docs/measured/predict_photos.md: the command, the build it measured, what it printed."""
    # The training params the build's history.json keeps (the `train` section it ran with).
    model_dir = args.artifacts / "models" / args.build
    train = json.loads((model_dir / "history.json").read_text())["params"]
    command = "python benchmarks/bench_predict.py" + "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("build", "digits", "seed", "timed_images", "cli_repeats"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# predict on photo-like pictures (measured)\n\n"
        f"Generated by `{command}` on {when}; do not edit. The build: {args.build} "
        f"({train['epochs']} epoch(s) on "
        f"{train['max_train_samples'] or 'all'} training images). The families are drawn "
        "by `tests/photo_digits.py` (a generator that shares no code with predict) from the "
        "build's own test digits; `uncertain` is the share "
        "of int8 answers predict marks uncertain, `int8 rest` int8's accuracy on the others.\n\n"
        f"```text\n{printed}```\n")
    print(f"{out}: written")


def measure(args: argparse.Namespace) -> None:
    """Accuracy per family, the threshold sweep, and the time per picture, printed."""

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

        # Interleaved, so the timed images span every family.
        sample = [p for files in zip(*paths.values()) for p in files][:args.timed_images]
        times = []
        for path in sample:
            started = time.perf_counter()
            predict.predict_files([path], card, models)
            times.append(time.perf_counter() - started)
        times.sort()
        p90 = times[int(0.9 * len(times))]
        print(f"per image, one process ({len(times)} images, every family): median "
              f"{1e3 * statistics.median(times):.1f} ms, p90 {1e3 * p90:.1f} ms")

        if args.cli_repeats > 0:
            print_cli_times(sample[0], args.build, args.artifacts, args.cli_repeats)


def print_cli_times(image: Path, build: str, artifacts: Path, repeats: int) -> None:
    """Wall time of one `python -m pipeline.predict IMAGE` process, without and with Keras."""
    env = {**os.environ, "PIPELINE_ARTIFACTS": str(artifacts)}
    one = [str(image), "--build", build]
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
              f"{cli_seconds(without, env, repeats):.2f} s without Keras, "
              f"{cli_seconds(with_keras, env, repeats):.2f} s with it (median of {repeats})")
    else:
        print(f"one `python -m pipeline.predict IMAGE` process (Keras always on): "
              f"{cli_seconds(with_keras, env, repeats):.2f} s (median of {repeats})")

if __name__ == "__main__":
    main()
