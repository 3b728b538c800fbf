"""Classify your own pictures with a build's models, every variant side by side.

    python -m pipeline.predict IMAGE... [--build NAME] [--json] [--show] [--keras]
                                        [--board NAME]

Photos of a digit on paper (noise, blur, uneven light, shadows, any pen colour, a page edge,
ruled lines), scans, screenshots; any size and Pillow mode; the EXIF orientation of phone
pictures is applied. Each picture is brought to the model's input contract, read from the
build's model card (pipeline/predict/photo.py): the ink is found against the paper, cropped,
fitted in the card's box and centred (MNIST: 20x20 by centre of mass in 28x28), light on
black.
`--show` writes that input as `<image>.input.png` beside each image (upscaled 10x, pixel for
pixel), so you see what the model saw. An answer the models give for a picture unlike the
training data (a low top-1 probability, or far more or less ink than any training digit) is
marked `uncertain`, with the reason, in the table and the JSON.

Only regular files are read (a FIFO, a device or a directory gets one line), pictures over
photo.MAX_PIXELS are refused before decoding, and a file that cannot be read gets a one-line
error while every other picture is still classified and printed. The TFLite variants run by
default; `--keras` adds the Keras model (it imports TensorFlow, which takes 5-20 s).
`--board NAME` also runs the int8 model on that board of the inventory, through the same
runner and staging as `bench`, and shows the board's own class and probability; an answer
that differs from this host's answer with the same model is named and sets exit status 3.
A board without a TFLite runtime (a K1) runs instead the ONNX model that answers as the int8
.tflite does (onnx_int8_tflite: its build checked that on every test image); `--variant NAME`
picks the model the board runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import PipelineError, artifact_root
from pipeline.predict.photo import ImageError, load_image, prepare
from pipeline.core.formats import NO_RUNTIME_MARK
from pipeline.core.variants import KERAS, ONNX_INT8_TFLITE, VARIANTS, reference_int8_variant

SHOW_SCALE = 10
# The variant --board runs, and whose answer its column compares with: the shipped int8.
INT8 = reference_int8_variant()
# What a board without INT8's runtime runs instead, in order of preference: the model whose
# answers the build checked against INT8's on every test image.
BOARD_FALLBACKS = (ONNX_INT8_TFLITE,)
# An answer below this top-1 probability is marked uncertain. Measured with
# benchmarks/bench_predict.py (int8 CNN, photo-like renderings of test digits): 4 % of the
# answers fall below 0.9 and a third of those are wrong, while 99.9 % of the rest are right;
# at 0.6 only a third of the wrong answers would be marked.
MIN_PROBABILITY = 0.9
EXIT_IMAGE_FAILED, EXIT_MISSING, EXIT_BOARD_DIFFERS = 1, 2, 3


def model_files(card: dict[str, Any], model_dir: Path, build: str) -> dict[str, Path]:
    """Variant -> model file from the card; a missing file names the task that builds it."""
    files = {}
    for variant in card["variants"]:
        path = Path(model_dir) / variant["file"]
        if not path.exists():
            known = VARIANTS.get(variant["name"])
            task = "train" if variant["name"] == KERAS else known.producer if known else "convert"
            raise PipelineError(f"{path} is missing: build it with `doit {task}:{build}`")
        files[variant["name"]] = path
    return files


def classify(models: dict[str, Path], images: np.ndarray) -> dict[str, np.ndarray]:
    """Class probabilities (N x classes) of N prepared images under every model."""
    from pipeline.core.console import native_output_hidden
    from pipeline.stages.evaluate import model_probabilities

    def keras(path: Path, batch: np.ndarray, size: int) -> np.ndarray:
        from pipeline.stages.evaluate import keras_probabilities  # TensorFlow: only when asked

        return keras_probabilities(path, batch, size)

    with native_output_hidden():  # TensorFlow's start-up and XNNPACK notices
        return {name: (keras if name == KERAS else model_probabilities)(path, images, 64)
                for name, path in models.items()}


def ink_fraction(pixels: np.ndarray) -> float:
    """How much of a model input is ink: the mean pixel over 255 (0 blank, 1 all ink)."""
    return float(np.asarray(pixels, np.float64).mean() / 255.0)


def ink_limits(dataset_npz: Path) -> tuple[float, float] | None:
    """The least and most ink of any test image of the dataset (None without the .npz)."""
    try:
        with np.load(dataset_npz) as arrays:
            test = arrays["x_test"]
    except (OSError, KeyError, ValueError):
        return None
    per_image = test.reshape(len(test), -1).mean(axis=1) / 255.0
    return float(per_image.min()), float(per_image.max())


def doubts(predictions: dict[str, dict[str, Any]], ink: float,
           limits: tuple[float, float] | None, dataset: str) -> list[str]:
    """Why an answer should not be trusted: each reason one short phrase (none: trusted)."""
    reasons = []
    low = sorted(v for v, p in predictions.items()
                 if "probability" in p and p["probability"] < MIN_PROBABILITY)
    if low:
        reasons.append(f"top-1 below {100 * MIN_PROBABILITY:.0f} % ({', '.join(low)})")
    if limits is not None and not limits[0] <= ink <= limits[1]:
        reasons.append(f"ink covers {100 * ink:.1f} % of the input; {dataset} test digits "
                       f"{100 * limits[0]:.1f}-{100 * limits[1]:.1f} %")
    return reasons


class NoRuntime(PipelineError):
    """The board has no runtime for the model's format (the runner's NO RUNTIME)."""


def board_top1(board: Any, model_path: Path, images: np.ndarray,
               work_dir: Path, variant: str = INT8) -> list[tuple[int, float | None]]:
    """`board`'s own (class, probability) for each image, through the bench runner. Raises
    NoRuntime when the board cannot run the model's format."""
    import dataclasses

    from pipeline.bench.plan import host_predictions, stage_plan
    from pipeline.bench.session import run_on_board
    from pipeline.bench.transport import BoardError

    # One thread, one timed invoke: this is a classification, not a benchmark.
    board = dataclasses.replace(board, threads=(1,), warmup=0, runs=1)
    plan = stage_plan({f"predict/{variant}": Path(model_path)},
                      {"predict": (images, host_predictions(model_path, images))},
                      board, Path(work_dir), top1=True)
    try:
        document, _ = run_on_board(board, plan)
    except BoardError as exc:  # the runner stops with NO RUNTIME when no model of it can run
        if f"): {NO_RUNTIME_MARK}" in str(exc):
            raise NoRuntime(str(exc)) from None
        raise
    result = document["results"][0]
    if str(result.get("error", "")).startswith(NO_RUNTIME_MARK):
        raise NoRuntime(f"board {board.name!r} ({board.where}): {result['error']}")
    if "error" in result:
        raise BoardError(f"{board.label}: {result['error']}")
    answers = result.get("top1")
    if not isinstance(answers, list) or len(answers) != len(images):
        raise BoardError(f"{board.label}: the runner reported no "
                         "per-image answers; update board/runner.py there (it is pushed "
                         "with the plan)")
    try:  # text from a board is checked like any other input
        # No probability: an integer ONNX output whose quantization the plan did not carry
        # (a runner older than output_quantization).
        return [(int(label), None if probability is None else float(probability))
                for label, probability in answers]
    except (TypeError, ValueError):
        raise BoardError(f"{board.label}: the runner's per-image "
                         "answers are not [class, probability] pairs") from None


def board_answers(board: Any, models: dict[str, Path], images: np.ndarray, work_dir: Path,
                  variant: str | None = None) -> tuple[str, list[tuple[int, float | None]]]:
    """The variant `board` ran and its answers: `variant` if given, else INT8, or on a board
    without INT8's runtime the first of BOARD_FALLBACKS the build has."""
    candidates = [variant] if variant else \
        [INT8, *(v for v in BOARD_FALLBACKS if v in models)]
    for i, name in enumerate(candidates):
        try:
            return name, board_top1(board, models[name], images, work_dir / name, name)
        except NoRuntime:
            if i == len(candidates) - 1:
                raise
    raise AssertionError("unreachable: candidates is never empty")


def board_prediction(host: dict[str, Any], answer: tuple[int, float | None],
                     class_names: Sequence[str]) -> dict[str, Any]:
    """The board's answer as a prediction, and whether its class is the host's with the same
    model (probability None: the board's runtime did not report it)."""
    label, probability = answer
    name = class_names[label] if 0 <= label < len(class_names) else f"class {label}?"
    return {"class": label, "name": name,
            "probability": None if probability is None else round(probability, 4),
            "same_as_host": label == host["class"]}


def top1(probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    c = int(np.argmax(probs))
    return {"class": c, "name": class_names[c], "probability": round(float(probs[c]), 4)}


def _percent(probability: float | None, space: str = "") -> str:
    return "probability not reported" if probability is None else \
        f"{100 * probability:.1f}{space}%"


def render_table(results: Sequence[dict[str, Any]], variants: Sequence[str]) -> str:
    from tabulate import tabulate

    def cell(p: dict[str, Any], host: dict[str, Any] | None) -> str:
        if "error" in p:  # a board that failed
            return "board failed"
        text = f"{p['name']}  {_percent(p['probability'])}"
        if p["probability"] is not None and p["probability"] < MIN_PROBABILITY:
            text += " ?"
        if p.get("same_as_host") is False:
            text += f"  DIFFERS (host {host['name'] if host else '?'})"
        return text

    show = any("input_png" in r for r in results)
    note = any(r.get("uncertain") for r in results)
    rows = [[r["image"],
             *(cell(r["predictions"][v], r["predictions"].get(v.split("@")[0]))
               for v in variants),
             *(["uncertain: " + "; ".join(r["doubts"]) if r.get("uncertain") else ""]
               if note else []),
             *([r.get("input_png", "")] if show else [])]
            for r in results if "predictions" in r]
    return tabulate(rows, headers=["image", *variants, *(["note"] if note else []),
                                   *(["model input"] if show else [])],
                    tablefmt="simple", disable_numparse=True)


def write_input_png(pixels: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from pipeline.core.files import atomic_path

    image = Image.fromarray(pixels).resize(
        (pixels.shape[1] * SHOW_SCALE, pixels.shape[0] * SHOW_SCALE), Image.Resampling.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path


def prepared(path: Path, card: dict[str, Any]) -> np.ndarray:
    """The model input for one file; any failure is an ImageError naming the file."""
    try:
        return prepare(load_image(path), card)
    except ImageError as exc:
        message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        raise ImageError(message) from None
    except Exception as exc:  # noqa: BLE001 - one odd picture must not lose the others' answers
        raise ImageError(f"{path}: cannot prepare this picture ({type(exc).__name__}: {exc}); "
                         "please report it with the file") from None


def predict_files(paths: Sequence[Path], card: dict[str, Any], models: dict[str, Path],
                  show: bool = False, board: Any = None,
                  limits: tuple[float, float] | None = None,
                  board_variant: str | None = None) -> list[dict[str, Any]]:
    """One result per path, in order: predictions per variant, or the one-line error.

    Each result says whether it is `uncertain` and why (`doubts`), against `limits` (the
    least and most ink of the training data's test digits) and MIN_PROBABILITY. With `board`,
    a column `<variant>@<board>` holds the board's own answer and whether it equals the
    host's with that variant (board_answers picks the variant); a board that fails leaves
    {"error": ...} in an `int8@<board>` column.
    """
    results: list[dict[str, Any]] = []
    ready = []
    for path in paths:
        try:
            pixels = prepared(Path(path), card)
        except ImageError as exc:
            results.append({"image": str(path), "error": str(exc)})
            continue
        result: dict[str, Any] = {"image": str(path)}
        if show:
            result["input_png"] = str(write_input_png(
                pixels, Path(path).with_name(Path(path).name + ".input.png")))
        results.append(result)
        ready.append((result, pixels))
    if not ready:
        return results
    batch = np.stack([p for _, p in ready])
    probs = classify(models, batch)
    names = card["output"]["class_names"]
    for i, (result, pixels) in enumerate(ready):
        result["predictions"] = {v: top1(p[i], names) for v, p in probs.items()}
        result["ink"] = round(ink_fraction(pixels), 4)
        result["doubts"] = doubts(result["predictions"], result["ink"], limits,
                                  card.get("dataset", "training"))
        result["uncertain"] = bool(result["doubts"])
    if board is not None:
        import tempfile

        from pipeline.bench.transport import BoardError

        try:
            with tempfile.TemporaryDirectory(prefix="predict-board-") as work:
                ran, answers = board_answers(board, models, batch, Path(work), board_variant)
        except (BoardError, NoRuntime, OSError) as exc:
            for result, _ in ready:
                result["predictions"][board_column(board.name, board_variant or INT8)] = \
                    {"error": str(exc)}
        else:
            for (result, _), answer in zip(ready, answers):
                result["predictions"][board_column(board.name, ran)] = board_prediction(
                    result["predictions"][ran], answer, names)
    return results


def board_column(board: str, variant: str = INT8) -> str:
    """The column of a model's run on a board: `<variant>@<board>`."""
    return f"{variant}@{board}"


def _board_cell(result: dict[str, Any], board: str) -> tuple[str, dict[str, Any]]:
    """(variant, answer) of `board`'s column in a result, ({}, INT8) when it has none."""
    for column, answer in result.get("predictions", {}).items():
        if column.endswith(f"@{board}"):
            return column[:-len(f"@{board}")], answer
    return INT8, {}


def board_differences(results: Sequence[dict[str, Any]], board: str) -> list[str]:
    """One line per image whose board answer differs from this host's with the same model."""
    lines = []
    for r in results:
        variant, answer = _board_cell(r, board)
        if answer.get("same_as_host") is False:
            host = r["predictions"][variant]
            lines.append(f"{r['image']}: board {board!r} answers {answer['name']} "
                         f"({_percent(answer['probability'], ' ')}), this host's {variant} "
                         f"{host['name']} ({100 * host['probability']:.1f} %)")
    return lines


def find_board(inventory: Path, name: str) -> Any:
    from pipeline.core.boards import load_boards

    boards = {b.name: b for b in load_boards(inventory)}
    if name not in boards:
        raise PipelineError(f"board {name!r} is not in {inventory} (boards: "
                            f"{', '.join(sorted(boards)) or 'none'})")
    return boards[name]


def problems(results: Sequence[dict[str, Any]], board: str | None = None) -> list[str]:
    """The lines predict prints on stderr: bad images, a failed board, board differences."""
    lines = [r["error"] for r in results if "error" in r]
    if board is not None:
        lines += sorted({_board_cell(r, board)[1]["error"] for r in results
                         if "error" in _board_cell(r, board)[1]})
        lines += board_differences(results, board)
    return lines


def exit_status(results: Sequence[dict[str, Any]], board: str | None = None) -> int:
    """3 if the board answered differently, else 2 if it failed, else 1 if an image failed."""
    answers = [_board_cell(r, board)[1] for r in results
               if "predictions" in r and board is not None]
    if board is not None and any(a.get("same_as_host") is False for a in answers):
        return EXIT_BOARD_DIFFERS
    if board is not None and any("error" in a for a in answers):
        return EXIT_MISSING
    return EXIT_IMAGE_FAILED if any("error" in r for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.stages.card import load_card

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 all classified, 1 an image failed, 2 models, model card or "
               "board missing or failing, 3 the board's int8 answer differs from this host's.")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    from pipeline.core.params import DEFAULT_BUILDS

    # The first default build (pipeline/core/params.py), not a name of its own.
    parser.add_argument("--build", default=DEFAULT_BUILDS[0].name,
                        help="build name (default %(default)s)")
    parser.add_argument("--artifacts", type=Path,
                        default=artifact_root(os.environ),
                        help="artifact tree (default $PIPELINE_ARTIFACTS or artifacts/)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--show", action="store_true",
                        help="write the model's input beside each image as <image>.input.png")
    parser.add_argument("--keras", action="store_true",
                        help="also run the Keras model (imports TensorFlow: 5-20 s more)")
    parser.add_argument("--board", help="also run the int8 model on this board of the inventory "
                        "(on a board without TFLite: the ONNX model that answers as it does)")
    parser.add_argument("--variant", help="the variant the board runs (default: as above)")
    parser.add_argument("--boards", type=Path,
                        default=Path(os.environ.get("PIPELINE_BOARDS", "board/boards.toml")),
                        help="board inventory (default $PIPELINE_BOARDS or board/boards.toml)")
    args = parser.parse_args(argv)
    from pipeline.core.console import quiet_third_party, verbose_requested

    quiet_third_party(verbose_requested(os.environ))
    from pipeline.core.layout import Layout

    layout = Layout(args.artifacts)
    model_dir = layout.model_dir(args.build)
    try:
        card = load_card(model_dir, args.build)
        models = {name: path for name, path in model_files(card, model_dir, args.build).items()
                  if args.keras or name != KERAS}
        board = find_board(args.boards, args.board) if args.board else None
        if args.variant and args.variant not in models:
            raise PipelineError(f"--variant {args.variant}: the build {args.build} has no such "
                                f"model (it has: {', '.join(models)})")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISSING
    dataset = card.get("dataset", "mnist")
    limits = ink_limits(layout.dataset_npz(dataset))
    results = predict_files(args.images, card, models, args.show, board, limits, args.variant)
    ran = next((column for r in results for column in r.get("predictions", {})
                if board and column.endswith(f"@{board.name}")), None)
    columns = [*models, *([ran] if ran else [])]
    if args.json:
        print(json.dumps({"build": args.build, "results": results}, indent=2))
    elif any("predictions" in r for r in results):
        print(render_table(results, columns))
    for line in problems(results, board.name if board else None):
        print(f"error: {line}", file=sys.stderr)
    return exit_status(results, board.name if board else None)

if __name__ == "__main__":
    sys.exit(main())
