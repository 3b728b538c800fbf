"""The model card of the smoke build, checked against the files and reports it describes."""

import hashlib
import json

import numpy as np
import pytest


def test_card_matches_the_models_reports_and_training(smoke_project):
    from ai_edge_litert.interpreter import Interpreter

    art = smoke_project / "artifacts"
    models = art / "models" / "mnist_cnn"
    card = json.loads((models / "model_card.json").read_text())
    accuracy = {v["name"]: v["accuracy"] for v in json.loads(
        (art / "reports" / "mnist_cnn" / "accuracy.json").read_text())["variants"]}
    history = json.loads((models / "history.json").read_text())
    assert card["input"]["shape"] == [1, 28, 28, 1] and card["input"]["value_range"] == [0, 255]
    assert card["input"]["polarity"] == "light_on_dark"
    assert card["input"]["framing"]["fit_box"] == 20 and card["input"]["framing"]["center_of_mass"]
    assert card["output"]["class_names"] == [str(d) for d in range(10)]
    assert card["training"]["params"] == history["params"]
    assert [v["name"] for v in card["variants"]] == ["keras", "float32", "int8", "onnx_float32",
                                                     "onnx_int8", "onnx_int8_tflite"]
    for v in card["variants"]:
        data = (models / v["file"]).read_bytes()
        assert v["bytes"] == len(data) and v["sha256"] == hashlib.sha256(data).hexdigest()
        assert v["accuracy"] == accuracy[v["name"]]
    int8 = card["variants"][2]
    interpreter = Interpreter(model_path=str(models / int8["file"]))
    out = interpreter.get_output_details()[0]
    assert int8["output"]["dtype"] == "int8" == np.dtype(out["dtype"]).name
    assert (int8["output"]["scale"], int8["output"]["zero_point"]) == (
        float(out["quantization"][0]), int(out["quantization"][1]))
    assert (int8["input"]["scale"], int8["input"]["zero_point"]) == (1.0, -128)
    markdown = (models / "model_card.md").read_text()
    assert "do NOT divide by 255" in markdown and int8["sha256"][:16] in markdown


def onnx_contract_by_hand(path):
    """Input/output name, dtype and shape, and (integer tensors) the scale and zero point of
    the DequantizeLinear/QuantizeLinear beside them, read with onnx.load alone."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    sides = {}
    for side, value in (("input", graph.input[0]), ("output", graph.output[0])):
        t = value.type.tensor_type
        found = {"name": value.name,
                 "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name,
                 "shape": [d.dim_value for d in t.shape.dim]}
        if found["dtype"] == "int8":
            # follow Reshape/Transpose to the (De)QuantizeLinear that carries the quantization
            name, op = value.name, "DequantizeLinear" if side == "input" else "QuantizeLinear"
            while True:
                node = next(n for n in graph.node
                            if (name in n.input if side == "input" else name in n.output))
                if node.op_type == op:
                    break
                name = node.output[0] if side == "input" else node.input[0]
            found.update(scale=float(init[node.input[1]]), zero_point=int(init[node.input[2]]))
        sides[side] = found
    return sides


def test_card_gives_each_onnx_models_contract_and_every_input_formula(smoke_project):
    models = smoke_project / "artifacts" / "models" / "mnist_cnn"
    card = json.loads((models / "model_card.json").read_text())
    variants = {v["name"]: v for v in card["variants"]}
    assert list(variants) == ["keras", "float32", "int8", "onnx_float32", "onnx_int8",
                              "onnx_int8_tflite"]
    for name in ("onnx_float32", "onnx_int8", "onnx_int8_tflite"):
        v = variants[name]
        assert v["format"] == "onnx"
        expected = onnx_contract_by_hand(models / v["file"])
        for side in ("input", "output"):
            # Key by key: pytest 9's approx refuses nested values (shapes, names).
            for key, want in expected[side].items():
                got = v[side][key]
                if isinstance(want, float):
                    assert got == pytest.approx(want, rel=1e-6), (name, side, key)
                else:
                    assert got == want, (name, side, key)
    # What a C++ user feeds: float variants the pixel itself, int8 ones pixel - 128
    # (zero point -128, scale 1 from the Rescaling(1/255) first layer).
    for name in ("keras", "float32", "onnx_float32", "onnx_int8"):
        assert variants[name]["input"]["formula"].startswith("x = (float) pixel")
        assert variants[name]["input"]["value_range"] == [0, 255]
    for name in ("int8", "onnx_int8_tflite"):
        tensor = variants[name]["input"]
        assert (tensor["scale"], tensor["zero_point"]) == (1.0, -128)
        assert tensor["formula"] == "q = (int8_t) (pixel - 128)  /* -128..127 */"
        assert tensor["value_range"] == [0.0, 255.0]
    markdown = (models / "model_card.md").read_text()
    assert "## Feeding each variant from C/C++" in markdown
    assert "`serving_default_image:0`" in markdown and "`image`" in markdown
