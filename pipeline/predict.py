"""Classify your own images with a build's Keras, float32 and int8 models, side by side.

    python -m pipeline.predict IMAGE... [--build NAME] [--json] [--show] [--board NAME]

Any size and Pillow mode (RGB, RGBA with transparency, L, palette, 16-bit). Each image is
brought to the model's input contract, read from the build's model card: light ink on a dark
background (dark-on-light images are inverted), cropped to the ink, fitted in the card's box
keeping the aspect ratio and centred (MNIST: by centre of mass in 28x28). `--show` writes that
input as `<image>.input.png` beside each image (upscaled 10x, pixel for pixel), so you see
what the model saw. A file that cannot be read gets a one-line error and the others are still
classified; the exit status is 1 if any image failed, 2 if the models are missing.
`--board NAME` also runs the int8 model on that board of the inventory, through the same
runner and staging as `bench`, and shows whether the board's top-1 equals this host's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import PipelineError
from pipeline.photo import ImageError, load_image, prepare

SHOW_SCALE = 10
# The runner names at most 20 images whose board prediction differs from the host's, so a
# board run takes at most that many images at once: every difference is then named.
BOARD_CHUNK = 20


def model_files(card: dict[str, Any], model_dir: Path, build: str) -> dict[str, Path]:
    """Variant -> model file from the card; a missing file names the task that builds it."""
    files = {}
    for variant in card["variants"]:
        path = Path(model_dir) / variant["file"]
        if not path.exists():
            task = "train" if variant["name"] == "keras" else "convert"
            raise PipelineError(f"{path} is missing: build it with `doit {task}:{build}`")
        files[variant["name"]] = path
    return files


def classify(models: dict[str, Path], images: np.ndarray) -> dict[str, np.ndarray]:
    """Class probabilities (N x classes) of N prepared images under every model."""
    from pipeline.console import native_output_hidden
    from pipeline.evaluate import keras_probabilities, tflite_probabilities

    with native_output_hidden():  # TensorFlow's start-up and XNNPACK notices
        return {name: (keras_probabilities if path.suffix == ".h5" else tflite_probabilities)(
            path, images, 64) for name, path in models.items()}


def board_agreement(board: Any, int8_path: Path, images: np.ndarray,
                    work_dir: Path) -> list[bool]:
    """For each image, whether `board` gives the same int8 top-1 as this host.

    The runner reports labels only as disagreements with the host's predictions, so the
    board's own class is known exactly where it agrees (the host's) and not otherwise.
    """
    import dataclasses

    from pipeline.bench import BoardError, host_predictions, run_on_board, stage_plan

    # One thread, one timed invoke: this is a classification, not a benchmark.
    board = dataclasses.replace(board, threads=(1,), warmup=0, runs=1)
    agree: list[bool] = []
    for start in range(0, len(images), BOARD_CHUNK):
        chunk = images[start:start + BOARD_CHUNK]
        plan = stage_plan({"predict/int8": Path(int8_path)},
                          {"predict": (chunk, host_predictions(int8_path, chunk))},
                          board, Path(work_dir))
        document, _ = run_on_board(board, plan)
        result = document["results"][0]
        if "error" in result:
            raise BoardError(f"board {board.name!r} ({board.where}): {result['error']}")
        differ = set(result["disagreements"])
        agree += [i not in differ for i in range(len(chunk))]
    return agree


def top1(probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    c = int(np.argmax(probs))
    return {"class": c, "name": class_names[c], "probability": round(float(probs[c]), 4)}


def render_table(results: Sequence[dict[str, Any]], variants: Sequence[str]) -> str:
    from tabulate import tabulate

    def cell(p: dict[str, Any]) -> str:
        if "same_as_host" in p:  # a board column
            return (f"{p['name']}  (= host)" if p["same_as_host"]
                    else "DIFFERS from host int8")
        return f"{p['name']}  {100 * p['probability']:.1f}%"

    show = any("input_png" in r for r in results)
    rows = [[r["image"], *(cell(r["predictions"][v]) for v in variants),
             *([r.get("input_png", "")] if show else [])]
            for r in results if "predictions" in r]
    return tabulate(rows, headers=["image", *variants, *(["model input"] if show else [])],
                    tablefmt="simple", disable_numparse=True)


def write_input_png(pixels: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from pipeline.files import atomic_path

    image = Image.fromarray(pixels).resize(
        (pixels.shape[1] * SHOW_SCALE, pixels.shape[0] * SHOW_SCALE), Image.Resampling.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path


def predict_files(paths: Sequence[Path], card: dict[str, Any], models: dict[str, Path],
                  show: bool = False, board: Any = None) -> list[dict[str, Any]]:
    """One result per path, in order: predictions per variant, or the one-line error.

    With `board`, a column `int8@<board>` says whether the board agrees with the host's int8.
    """
    results: list[dict[str, Any]] = []
    prepared = []
    for path in paths:
        try:
            pixels = prepare(load_image(path), card)
        except ImageError as exc:
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            results.append({"image": str(path), "error": message})
            continue
        result = {"image": str(path)}
        if show:
            result["input_png"] = str(write_input_png(
                pixels, Path(path).with_name(Path(path).name + ".input.png")))
        results.append(result)
        prepared.append((result, pixels))
    if prepared:
        probs = classify(models, np.stack([p for _, p in prepared]))
        names = card["output"]["class_names"]
        for i, (result, _) in enumerate(prepared):
            result["predictions"] = {v: top1(p[i], names) for v, p in probs.items()}
        if board is not None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="predict-board-") as work:
                agree = board_agreement(board, models["int8"],
                                        np.stack([p for _, p in prepared]), Path(work))
            for (result, _), same in zip(prepared, agree):
                host = result["predictions"]["int8"]
                result["predictions"][f"int8@{board.name}"] = {
                    "class": host["class"] if same else None,
                    "name": host["name"] if same else None, "same_as_host": same}
    return results


def find_board(inventory: Path, name: str) -> Any:
    from pipeline.boards import load_boards

    boards = {b.name: b for b in load_boards(inventory)}
    if name not in boards:
        raise PipelineError(f"board {name!r} is not in {inventory} (boards: "
                            f"{', '.join(sorted(boards)) or 'none'})")
    return boards[name]


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.card import load_card

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 all classified, 1 an image failed, "
                                            "2 models or model card missing.")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    parser.add_argument("--build", default="mnist_cnn", help="build name (default mnist_cnn)")
    parser.add_argument("--artifacts", type=Path,
                        default=Path(os.environ.get("PIPELINE_ARTIFACTS", "artifacts")),
                        help="artifact tree (default $PIPELINE_ARTIFACTS or artifacts/)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--show", action="store_true",
                        help="write the model's input beside each image as <image>.input.png")
    parser.add_argument("--board", help="also run the int8 model on this board of the inventory")
    parser.add_argument("--boards", type=Path,
                        default=Path(os.environ.get("PIPELINE_BOARDS", "board/boards.toml")),
                        help="board inventory (default $PIPELINE_BOARDS or board/boards.toml)")
    args = parser.parse_args(argv)
    from pipeline.console import quiet_third_party, verbose_requested

    quiet_third_party(verbose_requested(os.environ))
    model_dir = args.artifacts / "models" / args.build
    try:
        card = load_card(model_dir, args.build)
        models = model_files(card, model_dir, args.build)
        board = find_board(args.boards, args.board) if args.board else None
        results = predict_files(args.images, card, models, args.show, board)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    columns = [*models, *([f"int8@{board.name}"] if board else [])]
    if args.json:
        print(json.dumps({"build": args.build, "results": results}, indent=2))
    elif any("predictions" in r for r in results):
        print(render_table(results, columns))
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
