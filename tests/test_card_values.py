"""The model card built from real (untrained) .tflite files and hand-made reports, without a
smoke build: every figure compared with the files, the reports, or a numpy computation."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from pipeline.stages.card import build_card, input_formula, value_range
from pipeline.core.datasets import DATASETS, FRAMINGS


def c_formula_as_python(formula: str):
    """The card's C expression as a Python function of `pixel` (round() is half to even,
    as C's nearbyintf in the default rounding mode)."""
    expr = formula.split("=", 1)[1].split("/*")[0]
    expr = re.sub(r"^\s*\((?:int8_t|uint8_t|int16_t|float)\)", "", expr)
    expr = expr.replace("(float) ", "").replace("fminf", "min").replace("fmaxf", "max")
    expr = expr.replace("nearbyintf", "round")
    expr = re.sub(r"(\d)f\b", r"\1", expr)
    return lambda pixel: eval(expr, {"min": min, "max": max, "round": round}, {"pixel": pixel})


@pytest.mark.parametrize("tensor", [
    {"dtype": "int8", "scale": 1.0, "zero_point": -128},
    {"dtype": "uint8", "scale": 1.0, "zero_point": 0},
    {"dtype": "int8", "scale": 0.5, "zero_point": -3},      # negative zero point, clipped
    {"dtype": "int8", "scale": 1.5, "zero_point": 7},
    {"dtype": "int8", "scale": 1.0, "zero_point": 10},      # 255 + 10 overflows int8: clipped
])
def test_input_formula_equals_numpy_quantization_for_every_pixel(tensor):
    info = np.iinfo(tensor["dtype"])
    pixels = np.arange(256, dtype=np.float32)
    want = np.clip(np.round(pixels / np.float32(tensor["scale"]) + tensor["zero_point"]),
                   info.min, info.max)
    formula = input_formula(tensor)
    f = c_formula_as_python(formula)
    assert [f(int(p)) for p in pixels] == want.astype(int).tolist(), formula
    comment = re.search(r"/\* (-?\d+)\.\.(-?\d+) \*/", formula)
    # Scale 1 with every pixel in the type's range: the plain integer form, whose comment
    # states the range the formula produces.
    plain = tensor["scale"] == 1.0 and info.min <= tensor["zero_point"] and \
        255 + tensor["zero_point"] <= info.max
    assert bool(comment) == plain, formula
    if comment:
        assert (int(comment[1]), int(comment[2])) == (int(want[0]), int(want[-1]))
    lo, hi = value_range(tensor)
    assert lo == pytest.approx((info.min - tensor["zero_point"]) * tensor["scale"])
    assert hi == pytest.approx((info.max - tensor["zero_point"]) * tensor["scale"])


def test_card_figures_come_from_the_files_reports_and_last_epoch(tiny_models, tmp_path):
    keras = tmp_path / "b.h5"
    keras.write_bytes(b"k" * 1234)  # only its size and hash are read
    paths = {"float32": tiny_models["tiny_cnn/float32"], "int8": tiny_models["tiny_mlp/int8"]}
    accuracy = {"test_samples": 200, "variants": [
        {"name": "keras", "accuracy": 0.91, "agreement": 1.0},
        {"name": "float32", "accuracy": 0.905, "agreement": 0.97},
        {"name": "int8", "accuracy": 0.88, "agreement": 0.95}]}
    history = {"model": "cnn", "params": {"epochs": 3},
               "history": {"accuracy": [0.5, 0.7, 0.8], "loss": [2.0, 1.0, 0.6],
                           "val_accuracy": [0.4, 0.6, 0.75]}}
    card = build_card("b", "fashion_mnist", DATASETS["fashion_mnist"].class_names, keras, paths,
                      accuracy, history)
    assert card["training"]["final"] == {"accuracy": 0.8, "loss": 0.6, "val_accuracy": 0.75}
    want_framing = FRAMINGS[DATASETS["fashion_mnist"].framing]
    assert want_framing != FRAMINGS[DATASETS["mnist"].framing]  # else nothing is tested
    framing = card["input"]["framing"]
    assert {k: framing[k] for k in want_framing} == dict(want_framing)
    assert (framing["height"], framing["width"]) == (28, 28)
    by_name = {v["name"]: v for v in card["variants"]}
    assert {n: v["accuracy"] for n, v in by_name.items()} == {"keras": 0.91, "float32": 0.905,
                                                              "int8": 0.88}
    for name, path in [("keras", keras), *paths.items()]:
        data = path.read_bytes()
        assert by_name[name]["bytes"] == len(data), name
        assert by_name[name]["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert card["accuracy_on"] == "200 fashion_mnist test images"


def test_the_cards_quantization_cells_and_output_formula_are_litert_s_own(tiny_models, tmp_path):
    """model_card.md's input q / output q cells and its output formula against the scale and
    zero point LiteRT itself reports for the int8 model, the formula evaluated for every q."""
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.stages.card import render_markdown

    keras = tmp_path / "b.h5"
    keras.write_bytes(b"k" * 10)
    path = tiny_models["tiny_mlp/int8"]
    accuracy = {"test_samples": 10, "variants": [{"name": "int8", "accuracy": 0.5}]}
    card = build_card("b", "mnist", DATASETS["mnist"].class_names, keras, {"int8": path},
                      accuracy, {"model": "mlp", "parameters": 6442, "history": {}})
    lines = render_markdown(card).splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
            if line.startswith("| int8 ")]
    [variants_row, feeding_row] = rows
    interpreter = Interpreter(model_path=str(path))
    (in_scale, in_zp), (out_scale, out_zp) = (interpreter.get_input_details()[0]["quantization"],
                                              interpreter.get_output_details()[0]["quantization"])
    assert variants_row[5] == f"scale {in_scale:.6g}, zero point {in_zp}"
    assert variants_row[7] == f"scale {out_scale:.6g}, zero point {out_zp}"
    assert variants_row[2:4] == [f"{path.stat().st_size:,}", "50.00"]
    shifted = re.fullmatch(r"real = (?:q|\(q ([+-]) (\d+)\)) \* (\S+)", feeding_row[-1])
    assert shifted, feeding_row[-1]
    offset = 0 if shifted[1] is None else int(shifted[2]) * (1 if shifted[1] == "+" else -1)
    q = np.arange(-128, 128)
    # rel 1e-8: the card prints the float32 scale to 9 significant digits (exact for float32)
    assert (q + offset) * float(shifted[3]) == pytest.approx((q - out_zp) * out_scale, rel=1e-8)
