"""Model card: what a build's models expect, what they return, and how good each variant is.

Writes `models/<build>/model_card.json` and `model_card.md`. The models take raw 0..255
pixels of a light digit on black (the 1/255 scaling is inside the model); tutorials that
feed [0, 1] floats get wrong answers without any error, so the card states the input
contract, and `pipeline.predict.classify` reads it instead of repeating it in code. For every
variant it gives the input tensor (name, dtype, shape, quantization or value range, as the
model file itself says: pipeline/core/runtimes.py's io_contract) and the exact formula a C/C++
application applies to a raw pixel byte to fill it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from pipeline import PipelineError
from pipeline.core.files import outputs_together, sha256_file, write_json, write_text
from pipeline.core.layout import CARD_JSON, CARD_MD, HISTORY_JSON
from pipeline.core.datasets import DATASETS, FRAMINGS
from pipeline.core.variants import KERAS, VARIANTS

# The models take raw pixel bytes: the 1/255 scaling is their first layer.
PIXEL_RANGE = (0, 255)
# numpy dtype name -> the C type an application fills the input tensor with.
C_TYPES = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t"}

# How each built-in dataset frames an image in the input (the card states it; predict does
# it); a declared dataset's framing comes with the call (pipeline/core/datasets.py: FRAMINGS).
FRAMING = {name: FRAMINGS[spec.framing] for name, spec in DATASETS.items()}


def input_formula(tensor: dict[str, Any]) -> str:
    """The C expression that turns one raw pixel byte (`pixel`, 0..255) into this input
    tensor's value: exactly board/runner.py's quantize, q = clip(round(pixel / scale +
    zero_point)) in float32 with round half to even (C's nearbyintf); for scale 1 that is
    plain integer arithmetic."""
    import numpy as np

    ctype = C_TYPES.get(tensor["dtype"], tensor["dtype"])
    if "scale" not in tensor:
        return f"x = ({ctype}) pixel  /* 0..255, do NOT divide by 255 */"
    scale, zero_point = tensor["scale"], tensor["zero_point"]
    info = np.iinfo(tensor["dtype"])
    lo, hi = PIXEL_RANGE[0] + zero_point, PIXEL_RANGE[1] + zero_point
    if scale == 1.0 and info.min <= lo and hi <= info.max:
        shift = "" if zero_point == 0 else f" {'+' if zero_point > 0 else '-'} {abs(zero_point)}"
        return f"q = ({ctype}) (pixel{shift})  /* {lo}..{hi} */"
    sign = "+" if zero_point >= 0 else "-"
    return (f"q = ({ctype}) fminf(fmaxf(nearbyintf((float) pixel / {scale!r}f {sign} "
            f"{abs(zero_point)}.0f), {info.min}.0f), {info.max}.0f)")


def value_range(tensor: dict[str, Any]) -> list[float]:
    """The real input values the tensor can carry: the pixel range for a float input, the
    dequantized range of its integer type for a quantized one."""
    import numpy as np

    if "scale" not in tensor:
        return list(PIXEL_RANGE)
    info = np.iinfo(tensor["dtype"])
    return [(info.min - tensor["zero_point"]) * tensor["scale"],
            (info.max - tensor["zero_point"]) * tensor["scale"]]


def with_formula(contract: dict[str, Any]) -> dict[str, Any]:
    """An io_contract with the input's value range and C formula added."""
    inp = contract["input"]
    return {**contract, "input": {**inp, "value_range": value_range(inp),
                                  "formula": input_formula(inp)}}


def build_card(build: str, dataset: str, class_names: Sequence[str], keras_path: Path,
               variant_paths: dict[str, Path], accuracy: dict[str, Any],
               history: dict[str, Any], framing_name: str | None = None) -> dict[str, Any]:
    """The card as a dict, from the files on disk and the evaluate/train reports;
    `framing_name` (a FRAMINGS key) for a dataset declared in the params file."""
    from pipeline.core.runtimes import open_model

    scores = {v["name"]: v["accuracy"] for v in accuracy["variants"]}
    variants = [{"name": KERAS, "file": Path(keras_path).name, "format": "keras .h5",
                 "bytes": Path(keras_path).stat().st_size, "sha256": sha256_file(keras_path),
                 "accuracy": scores.get(KERAS),
                 "input": {"dtype": "float32", "value_range": list(PIXEL_RANGE),
                           "formula": input_formula({"dtype": "float32"})},
                 "output": {"dtype": "float32"}}]
    for name, path in variant_paths.items():
        variants.append({"name": name, "file": Path(path).name, "format": VARIANTS[name].format,
                         "bytes": Path(path).stat().st_size, "sha256": sha256_file(path),
                         "accuracy": scores.get(name),
                         **with_formula(open_model(path).io_contract())})
    shape = next(v["input"]["shape"] for v in variants if "shape" in v["input"])
    framing = (FRAMINGS[framing_name] if framing_name
               else FRAMING.get(dataset, FRAMING["mnist"]))
    return {
        "build": build, "dataset": dataset, "model": history.get("model"),
        "parameters": history.get("parameters"),
        "input": {
            "shape": shape, "layout": "NHWC, one grey channel",
            "value_range": list(PIXEL_RANGE),
            "values": "raw pixel values, fed to each variant by its input formula (variants:"
                      " input.formula); the 1/255 scaling is inside the model, so do NOT "
                      "divide by 255",
            "polarity": "light_on_dark",
            "polarity_description": "white (255) ink on a black (0) background; invert "
                                    "dark-on-light images",
            "framing": {"height": shape[1], "width": shape[2], **framing},
        },
        "output": {"class_names": list(class_names), "meaning": "softmax probabilities, "
                   "one per class; integer variants dequantize with their output scale"},
        "variants": variants,
        "accuracy_on": f"{accuracy['test_samples']:,} {dataset} test images",
        # No training time: the card describes the model, and the same inputs must give the
        # same card bytes (the nightly checks every artifact for that).
        "training": {"params": history.get("params"),
                     "final": {k: v[-1] for k, v in history.get("history", {}).items() if v}},
    }


def _dequantize_formula(tensor: dict[str, Any]) -> str:
    if "scale" not in tensor:
        return "as is"
    zero_point = tensor["zero_point"]
    shifted = "q" if zero_point == 0 else \
        f"(q {'-' if zero_point > 0 else '+'} {abs(zero_point)})"
    return f"real = {shifted} * {tensor['scale']:.9g}"


def render_markdown(card: dict[str, Any]) -> str:
    from tabulate import tabulate

    inp = card["input"]
    rows = []
    for v in card["variants"]:
        quant = [f"scale {t['scale']:.6g}, zero point {t['zero_point']}"
                 if "scale" in t else "-" for t in (v["input"], v["output"])]
        acc = "" if v["accuracy"] is None else f"{100 * v['accuracy']:.2f}"
        rows.append([v["name"], v["file"], f"{v['bytes']:,}", acc, v["input"]["dtype"], quant[0],
                     v["output"]["dtype"], quant[1], v["sha256"][:16]])
    table = tabulate(rows, headers=["variant", "file", "bytes", "accuracy %", "input", "input q",
                                    "output", "output q", "sha256 (first 16)"],
                     tablefmt="github", disable_numparse=True)
    feeding = tabulate(
        [[v["name"], f"`{v['input']['name']}`" if "name" in v["input"] else "-",
          v["input"]["dtype"], str(v["input"].get("shape", inp["shape"])),
          " .. ".join(f"{x:.6g}" for x in v["input"]["value_range"]),
          f"`{v['input']['formula']}`",
          _dequantize_formula(v["output"])] for v in card["variants"]],
        headers=["variant", "input tensor", "dtype", "shape", "value range", "input formula",
                 "output"], tablefmt="github", disable_numparse=True)
    params = card["training"]["params"] or {}
    return "\n".join([
        f"# Model card: {card['build']}", "",
        f"A `{card['model']}` ({card['parameters']:,} parameters) trained on `{card['dataset']}`. "
        "Machine-readable: [model_card.json](model_card.json).", "",
        "## Input", "",
        f"- shape {inp['shape']} ({inp['layout']}), values **0..255**: {inp['values']}.",
        f"- polarity: {inp['polarity_description']}.",
        f"- framing: {inp['framing']['description']}.",
        "- `python -m pipeline.predict IMAGE...` does all of this for any picture.", "",
        "## Output", "",
        f"{card['output']['meaning']}; classes in order: "
        + ", ".join(f"`{c}`" for c in card["output"]["class_names"]) + ".", "",
        f"## Variants (accuracy on {card['accuracy_on']})", "", table, "",
        "## Feeding each variant from C/C++", "",
        "`pixel` is the raw grey byte (0..255) after the framing above. The formula fills one "
        "element of the input tensor, exactly as the on-board runner does (float32 "
        "arithmetic, round half to even); the output column turns an output element into "
        "the class probability.", "", feeding, "",
        "## Training", "",
        ", ".join(f"{k} = {v}" for k, v in params.items()) + ".", ""])


def run(build: str, dataset: str, class_names: Sequence[str], keras_path: Path,
        variant_paths: dict[str, Path], accuracy_path: Path, history_path: Path,
        out_dir: Path, framing_name: str | None = None) -> dict[str, Any]:
    """The doit action: write model_card.json and model_card.md into the build's model folder."""
    card = build_card(build, dataset, class_names, keras_path, variant_paths,
                      json.loads(Path(accuracy_path).read_text()),
                      json.loads(Path(history_path).read_text()), framing_name)
    with outputs_together():
        write_json(Path(out_dir) / CARD_JSON, card)
        write_text(Path(out_dir) / CARD_MD, render_markdown(card))
    return card


def load_card(model_dir: Path, build: str) -> dict[str, Any]:
    """The build's card; a missing one names the doit task that writes it."""
    path = Path(model_dir) / CARD_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        models = Path(model_dir).parent
        known = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
        if not known:
            raise PipelineError(f"no built models under {models} (run from the project root, "
                                "give --artifacts, or build with `doit`)") from None
        if build not in known:
            raise PipelineError(f"unknown build {build!r} under {models} (built: "
                                f"{', '.join(known)})") from None
        raise PipelineError(f"{path} is missing: build it with `doit card:{build}`") from None


def main(argv: Sequence[str] | None = None) -> None:
    from pipeline.stages.convert import variant_of
    from pipeline.core.datasets import DATASETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("model", type=Path, help="the .h5 written by train (history.json beside)")
    parser.add_argument("accuracy", type=Path, help="accuracy.json written by evaluate")
    parser.add_argument("models", type=Path, nargs="+", help="<build>_<variant> model files")
    args = parser.parse_args(argv)
    variants = {variant_of(p)[1]: p for p in args.models}
    card = run(args.build, args.dataset, DATASETS[args.dataset].class_names, args.model, variants,
               args.accuracy, args.model.with_name(HISTORY_JSON), args.model.parent)
    print(render_markdown(card))


if __name__ == "__main__":
    main()
