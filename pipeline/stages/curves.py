"""Curves stage: draw a build's training history (loss and accuracy per epoch) to a PNG.

Reads `history.json` (written by train) and `accuracy.json` (written by evaluate) and draws
train and validation curves, with the Keras model's test accuracy as a horizontal line, so
over- or under-fitting shows at a glance next to the figure that counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import atomic_path
from pipeline.core.variants import KERAS


def keras_test_accuracy(accuracy_report: dict[str, Any]) -> float:
    """The Keras model's accuracy on the full test set, from evaluate's accuracy.json."""
    return next(v["accuracy"] for v in accuracy_report["variants"] if v["name"] == KERAS)


def plot_training(build: str, history: dict[str, list[float]], test_acc: float,
                  path: Path) -> None:
    """Write loss (left) and accuracy (right) per epoch for train and validation to `path`."""
    # Imported here: dodo.py imports this module's task, and matplotlib costs ~0.3 s to load.
    import matplotlib

    matplotlib.use("Agg")  # no display on a build host or in CI
    import matplotlib.pyplot as plt

    # A saved model converted as it is (fine_tune = false) has no epochs: the test line only.
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, metric, label in ((loss_ax, "loss", "loss (cross-entropy)"),
                              (acc_ax, "accuracy", "accuracy (%)")):
        scale = 100 if metric == "accuracy" else 1
        # Markers: a one-epoch run (the smoke preset) has a single point per curve.
        ax.plot(epochs, [scale * v for v in history.get(metric, [])], "o-", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, [scale * v for v in history[f"val_{metric}"]], "s--",
                    label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    acc_ax.axhline(100 * test_acc, color="black", linestyle=":",
                   label=f"test (Keras) {100 * test_acc:.2f} %")
    # Room above and below: the test line is often the highest value and sat on the frame.
    acc_ax.margins(y=0.1)
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    fig.suptitle(f"{build}: training curves")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(build: str, history_path: Path, accuracy_path: Path, out_path: Path) -> None:
    """The doit action: training.png for one build from its history and accuracy reports."""
    record = json.loads(Path(history_path).read_text())
    test_acc = keras_test_accuracy(json.loads(Path(accuracy_path).read_text()))
    plot_training(build, record["history"], test_acc, Path(out_path))
    print(f"{out_path}: {len(record['history'].get('loss', []))} epoch(s), "
          f"test accuracy {100 * test_acc:.2f} %")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("history", type=Path, help="history.json written by train")
    parser.add_argument("accuracy", type=Path, help="accuracy.json written by evaluate")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        run(args.build, args.history, args.accuracy, args.out)
    except (OSError, KeyError, StopIteration, json.JSONDecodeError) as exc:
        sys.exit(f"error: {exc!r}")


if __name__ == "__main__":
    main()
