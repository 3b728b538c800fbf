"""The model card of the smoke build, checked against the files and reports it describes."""

import hashlib
import json

import numpy as np


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
    assert [v["name"] for v in card["variants"]] == ["keras", "float32", "int8"]
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
