"""Error analysis: confusion matrices, misclassified-image grids and the int8 damage list.

For one build, on the full test set: which images Keras and int8 get wrong, how the classes
are confused, and which images int8 gets wrong although Keras gets them right (the damage
quantization did) or right although Keras gets them wrong (its fixes). Everything is linked
from `reports/<build>/analysis.md`. The other drift-gated int8 models (variants.py:
onnx_int8, ONNX Runtime's own quantization) get their damage and fixes too, in the same
JSON and markdown, set beside the int8 .tflite's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from pipeline.core import layout
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import atomic_path, outputs_together, write_json, write_text
from pipeline.core.variants import KERAS, reference_int8_variant

# Each 28x28 tile is drawn 3x larger (84 px): big enough to see the strokes at normal zoom.
TILE_SCALE = 3
CELL_W, CAPTION_H, LABEL_W = 112, 50, 150  # caption: up to three 15 px lines
# A caption line about a prediction is coloured by whether it is the true class, the same on
# every grid (misclassified, damage, fixes); other lines (the test index) are black.
RIGHT, WRONG, PLAIN = (0, 120, 60), (200, 0, 0), (0, 0, 0)
# A caption line: its text, and whether the prediction it names is right (None: no prediction).
CaptionLine = tuple[str, "bool | None"]

# Every file `run` writes into the report directory (dodo.py's targets and clean list).
OUTPUTS = layout.ANALYSIS_FILES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[true, predicted] (num_classes x num_classes, int64)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def damage_and_fixes(labels: np.ndarray, keras_pred: np.ndarray,
                     int8_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test indices int8 gets wrong where Keras is right (damage), and the reverse (fixes)."""
    keras_ok, int8_ok = keras_pred == labels, int8_pred == labels
    return np.flatnonzero(keras_ok & ~int8_ok), np.flatnonzero(~keras_ok & int8_ok)


def by_true_class(indices: np.ndarray, labels: np.ndarray, num_classes: int,
                  max_per_class: int) -> dict[int, tuple[np.ndarray, int]]:
    """For each class: (the first `max_per_class` of `indices` with that label, their count)."""
    out = {}
    for c in range(num_classes):
        mine = indices[labels[indices] == c]
        out[c] = (mine[:max_per_class], len(mine))
    return out


def entry(index: int, label: int, keras_probs: np.ndarray, int8_probs: np.ndarray,
          class_names: Sequence[str]) -> dict[str, Any]:
    """One test image's label and both models' top-1 with its probability, for the JSON list."""
    def top(probs: np.ndarray) -> dict[str, Any]:
        c = int(np.argmax(probs))
        return {"class": c, "name": class_names[c], "probability": round(float(probs[c]), 4)}
    return {"index": int(index), "label": int(label), "label_name": class_names[label],
            KERAS: top(keras_probs[index]), reference_int8_variant(): top(int8_probs[index])}


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels (Fashion-MNIST names)."""
    while draw.textlength(text, font=font) > width and len(text) > 1:
        text = text[:-2] + "…"
    return text


def caption_colour(right: bool | None) -> tuple[int, int, int]:
    return PLAIN if right is None else RIGHT if right else WRONG


def prediction_line(prefix: str, probs: np.ndarray, label: int, class_names: Sequence[str],
                    joiner: str = " ") -> CaptionLine:
    """`K 97% 3`: a model's probability and class for one image, and whether it is right.
    The probability comes before the name: a long (Fashion-MNIST) name is cut, never it."""
    predicted = int(np.argmax(probs))
    return (f"{prefix}{100 * probs.max():.0f}%{joiner}{class_names[predicted]}",
            predicted == label)


def render_grid(title: str,
                rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, Sequence[CaptionLine]]]]],
                path: Path) -> None:
    """Write `grid_image` to `path` as PNG."""
    image = grid_image(title, rows)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def grid_image(title: str,
               rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, Sequence[CaptionLine]]]]]
               ) -> Any:
    """Labelled rows of captioned 28x28 tiles (dark ink on white, as on paper), as a PIL
    image; each caption line in `caption_colour` of its rightness."""
    from PIL import Image, ImageDraw

    tile = 28 * TILE_SCALE
    row_h = tile + CAPTION_H + 6
    big, small = _font(16), _font(12)
    columns = max([len(tiles) for _, tiles in rows] + [1])
    title_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=big))
    image = Image.new("RGB", (max(LABEL_W + columns * CELL_W + 10, title_w + 20),
                              40 + row_h * max(len(rows), 1)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=big)
    for r, (label, tiles) in enumerate(rows):
        y = 40 + r * row_h
        draw.line([(0, y - 3), (image.width, y - 3)], fill=(220, 220, 220))
        for i, line in enumerate(label.split("\n")):
            draw.text((10, y + 20 + 18 * i), _fit(draw, line, big, LABEL_W - 14), fill="black",
                      font=big)
        for col, (pixels, caption) in enumerate(tiles):
            x = LABEL_W + col * CELL_W
            digit = Image.fromarray(255 - np.asarray(pixels, np.uint8)).resize(
                (tile, tile), Image.Resampling.NEAREST)
            image.paste(digit, (x, y))
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(160, 160, 160))
            for i, (line, right) in enumerate(caption):
                draw.text((x, y + tile + 2 + 15 * i), _fit(draw, line, small, CELL_W - 6),
                          fill=caption_colour(right), font=small)
    if not rows:
        draw.text((10, 60), "none", fill=(120, 120, 120), font=big)
    return image


def render_confusion(matrices: dict[str, np.ndarray], class_names: Sequence[str],
                     path: Path) -> None:
    """Heat maps side by side; colour is the row's share (power-scaled so rare confusions show),
    the number in each cell the count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    n = len(class_names)
    fig, axes = plt.subplots(1, len(matrices), figsize=(7.5 * len(matrices), 7), dpi=100)
    for ax, (name, counts) in zip(np.atleast_1d(axes), matrices.items()):
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", norm=PowerNorm(0.3, vmin=0, vmax=1))
        for t in range(n):
            for p in range(n):
                if counts[t, p]:
                    ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=8,
                            color="white" if share[t, p] > 0.5 else "black")
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{name}: {100 * accuracy:.2f} % of {counts.sum():,} correct")
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def confusion_markdown(counts: np.ndarray, class_names: Sequence[str]) -> str:
    rows = [[f"**{class_names[t]}**", *(str(v) if v else "·" for v in counts[t])]
            for t in range(len(class_names))]
    return tabulate(rows, headers=["true \\ predicted", *class_names], tablefmt="github",
                    disable_numparse=True)


def _class_rows(groups: dict[int, tuple[np.ndarray, int]], images: np.ndarray,
                captions: Any, class_names: Sequence[str]) -> list:
    """One grid row per class that has any image (classes without one are left out)."""
    return [(f"true {class_names[c]}\n{total} image(s)",
             [(images[i], captions(i)) for i in shown])
            for c, (shown, total) in groups.items() if total]


@outputs_together()  # analysis.md links every other file: all of them, or none
def run(build: str, class_names: Sequence[str], model_path: Path, int8_path: Path,
        data_path: Path, batch_size: int, max_per_class: int, report_dir: Path,
        other_int8: dict[str, Path] | None = None) -> dict[str, Any]:
    """The doit action: predict the test set with Keras and int8, write every analysis file.
    `other_int8` (variant -> model file) adds those models' damage and fixes."""
    from pipeline.stages.evaluate import keras_probabilities, model_probabilities
    from pipeline.stages.preprocess import load_arrays

    # The JSON keys and file names say "keras" and "int8" (layout.ANALYSIS_FILES).
    int8 = reference_int8_variant()

    report_dir = Path(report_dir)
    arrays = load_arrays(data_path)
    images, labels = arrays["x_test"], arrays["y_test"].astype(np.int64)
    n = len(class_names)
    with native_output_hidden():  # TensorFlow's start-up and XNNPACK notices
        probs = {KERAS: keras_probabilities(model_path, images, batch_size),
                 int8: model_probabilities(int8_path, images, batch_size)}
    preds = {name: np.argmax(p, axis=1) for name, p in probs.items()}
    matrices = {name: confusion_matrix(labels, p, n) for name, p in preds.items()}
    write_json(report_dir / "confusion.json", {
        "build": build, "test_samples": int(len(labels)), "class_names": list(class_names),
        "rows": "true class", "columns": "predicted class",
        **{name: m.tolist() for name, m in matrices.items()}})
    render_confusion(matrices, class_names, report_dir / "confusion.png")

    _render_misclassified(build, images, labels, probs, class_names, max_per_class, report_dir)
    damage, fixes = damage_and_fixes(labels, preds[KERAS], preds[int8])
    others = {name: _other_int8(name, path, images, labels, probs[KERAS], damage, class_names,
                                batch_size)
              for name, path in (other_int8 or {}).items()}
    write_json(report_dir / "int8_damage.json", {
        "build": build, "test_samples": int(len(labels)),
        "damage": [entry(i, labels[i], probs[KERAS], probs[int8], class_names)
                   for i in damage],
        "fixes": [entry(i, labels[i], probs[KERAS], probs[int8], class_names)
                  for i in fixes],
        # The other int8 models' lists, keyed by variant (entries name it instead of int8).
        **({"others": others} if others else {})})

    _render_damage_grids(build, images, labels, probs, {"damage": damage, "fixes": fixes},
                         class_names, max_per_class, report_dir)
    accuracy = {name: float(np.trace(m) / len(labels)) for name, m in matrices.items()}
    markdown = render_markdown(build, class_names, matrices, accuracy, len(damage), len(fixes),
                               others)
    write_text(report_dir / "analysis.md", markdown)
    # One line on the console; the matrices and grids are for reading in analysis.md.
    print(f"{report_dir / 'analysis.md'}: int8 gets {len(damage)} test image(s) wrong that "
          f"Keras gets right, and {len(fixes)} the other way round"
          + "".join(f"; {name} {len(o['damage'])} and {len(o['fixes'])}"
                    for name, o in others.items()))
    return {"accuracy": accuracy, "damage": damage.tolist(), "fixes": fixes.tolist(),
            "others": {name: {"damage": [e["index"] for e in o["damage"]],
                              "fixes": [e["index"] for e in o["fixes"]]}
                       for name, o in others.items()}}


def _render_misclassified(build: str, images: np.ndarray, labels: np.ndarray,
                          probs: dict[str, np.ndarray], class_names: Sequence[str],
                          max_per_class: int, report_dir: Path) -> None:
    """misclassified_<model>.png: the test images each model gets wrong, by true class."""
    for name, p in probs.items():
        wrong = np.flatnonzero(np.argmax(p, axis=1) != labels)
        groups = by_true_class(wrong, labels, len(class_names), max_per_class)
        render_grid(f"{build}: test images {name} gets wrong (caption: test index, probability and"
                    " predicted class in red: wrong;"
                    f" at most {max_per_class} per class)",
                    _class_rows(groups, images, lambda i, p=p: [
                        (f"#{i}", None), prediction_line("", p[i], labels[i], class_names,
                                                         " as ")],
                        class_names),
                    report_dir / f"misclassified_{name}.png")


def _other_int8(name: str, path: Path, images: np.ndarray, labels: np.ndarray,
                keras_probs: np.ndarray, int8_damage: np.ndarray, class_names: Sequence[str],
                batch_size: int) -> dict[str, Any]:
    """Another int8 model's accuracy, damage and fixes against Keras (int8_damage.json's
    `others` entry), and how much of its damage the reference int8 shares."""
    from pipeline.stages.evaluate import model_probabilities

    with native_output_hidden():
        probs = model_probabilities(path, images, batch_size)
    hurt, helped = damage_and_fixes(labels, np.argmax(keras_probs, axis=1),
                                    np.argmax(probs, axis=1))
    return {"accuracy": float((np.argmax(probs, axis=1) == labels).mean()),
            "damage": [_as(name, entry(i, labels[i], keras_probs, probs, class_names))
                       for i in hurt],
            "fixes": [_as(name, entry(i, labels[i], keras_probs, probs, class_names))
                      for i in helped],
            "damage_shared_with_int8": int(len(np.intersect1d(hurt, int8_damage)))}


def _render_damage_grids(build: str, images: np.ndarray, labels: np.ndarray,
                         probs: dict[str, np.ndarray], indices: dict[str, np.ndarray],
                         class_names: Sequence[str], max_per_class: int,
                         report_dir: Path) -> None:
    """int8_damage.png and int8_fixes.png: the images int8 and Keras disagree on, by class."""
    int8 = reference_int8_variant()

    def both(i: int) -> list[CaptionLine]:
        return [(f"#{i}", None), prediction_line("K ", probs[KERAS][i], labels[i], class_names),
                prediction_line("Q ", probs[int8][i], labels[i], class_names)]
    for kind, chosen in indices.items():
        what = ("int8 gets wrong, Keras right" if kind == "damage"
                else "int8 gets right, Keras wrong")
        render_grid(f"{build}: {len(chosen)} test image(s) {what} (K = Keras, Q = int8; "
                    "green: right, red: wrong)",
                    _class_rows(by_true_class(chosen, labels, len(class_names), max_per_class),
                                images, both, class_names),
                    report_dir / f"int8_{kind}.png")


def _as(variant: str, item: dict[str, Any]) -> dict[str, Any]:
    """An `entry` whose int8 prediction is `variant`'s."""
    item = dict(item)
    item[variant] = item.pop(reference_int8_variant())
    return item


def render_markdown(build: str, class_names: Sequence[str], matrices: dict[str, np.ndarray],
                    accuracy: dict[str, float], damage: int, fixes: int,
                    others: dict[str, dict[str, Any]] | None = None) -> str:
    total = int(next(iter(matrices.values())).sum())
    parts = [f"# Error analysis: {build}", "",
             f"{total:,} test images. Keras {100 * accuracy[KERAS]:.2f} %, "
             f"int8 {100 * accuracy[reference_int8_variant()]:.2f} %.", "",
             "## The quantization's damage", "",
             f"- **{damage}** image(s) int8 gets wrong that Keras gets right: "
             "[int8_damage.png](int8_damage.png), list in "
             "[int8_damage.json](int8_damage.json) (`damage`).",
             f"- **{fixes}** image(s) int8 gets right that Keras gets wrong: "
             "[int8_fixes.png](int8_fixes.png), `fixes` in the same JSON.", "",
             "Inspect the damage before accepting an int8 model: a few ambiguous digits are "
             "normal; many clear ones, or one class hit hard, call for the per-layer report "
             "([layers.md](layers.md)).", ""]
    for name, other in (others or {}).items():
        shown = ", ".join(f"#{e['index']}" for e in other["damage"][:20])
        parts += [f"### {name}", "",
                  f"Its own int8 quantization: {100 * other['accuracy']:.2f} %.", "",
                  f"- **{len(other['damage'])}** image(s) {name} gets wrong that Keras gets "
                  f"right ({other['damage_shared_with_int8']} of them int8 gets wrong too)"
                  + (f": {shown}" + (" ..." if len(other["damage"]) > 20 else "")
                     if other["damage"] else "") + ".",
                  f"- **{len(other['fixes'])}** image(s) {name} gets right that Keras gets "
                  "wrong.",
                  f"- The lists: `others.{name}` in [int8_damage.json](int8_damage.json).", ""]
    parts += ["## Confusion matrices", "",
              "Heat map: [confusion.png](confusion.png); counts: "
              "[confusion.json](confusion.json). Rows are the true class, columns the "
              "prediction.", ""]
    for name, counts in matrices.items():
        parts += [f"### {name}", "", confusion_markdown(counts, class_names), ""]
    parts += ["## Misclassified test images", "",
              "- Keras: [misclassified_keras.png](misclassified_keras.png)",
              "- int8: [misclassified_int8.png](misclassified_int8.png)", ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    from pipeline.core.datasets import DATASETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("model", type=Path, help="the .h5 written by train")
    parser.add_argument("int8", type=Path, help="the build's int8 model written by convert")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("--report-dir", type=Path, default=Path("."))
    from pipeline.core.params import AnalysisParams, EvaluateParams

    # The defaults are the schema's (pipeline/core/params.py), never a second copy.
    parser.add_argument("--batch-size", type=int, default=EvaluateParams().batch_size,
                        help="default: evaluate.batch_size's, %(default)s")
    parser.add_argument("--max-per-class", type=int, default=AnalysisParams().max_per_class,
                        help="default: analysis.max_per_class's, %(default)s")
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    run(args.build, DATASETS[args.dataset].class_names, args.model, args.int8, args.data,
        args.batch_size, args.max_per_class, args.report_dir)


if __name__ == "__main__":
    main()
