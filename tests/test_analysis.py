"""Error analysis: small exact cases, and the smoke build's real reports checked against
predictions the test makes itself (the board runner's one-image-at-a-time path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.analysis import (CAPTION_H, CELL_W, LABEL_W, OUTPUTS, RIGHT, TILE_SCALE,
                                      WRONG, by_true_class, confusion_matrix, damage_and_fixes,
                                      grid_image, prediction_line, render_grid)


def test_confusion_matrix_counts_true_rows_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(labels, preds, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_damage_is_int8_wrong_keras_right_and_fixes_the_reverse():
    labels = np.array([1, 1, 1, 1, 2])
    keras = np.array([1, 1, 0, 0, 2])
    int8 = np.array([1, 0, 1, 0, 0])
    damage, fixes = damage_and_fixes(labels, keras, int8)
    assert damage.tolist() == [1, 4] and fixes.tolist() == [2]


def test_by_true_class_caps_but_counts_all():
    labels = np.array([3, 3, 3, 1])
    groups = by_true_class(np.array([0, 1, 2, 3]), labels, 4, max_per_class=2)
    assert groups[3][0].tolist() == [0, 1] and groups[3][1] == 3
    assert groups[0][1] == 0


def test_grid_tiles_are_upscaled_and_long_names_fit(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    render_grid("t", [("true Ankle boot\n3 image(s)",
                       [(digit, [("#1", None), ("99% as T-shirt/top", False)])] * 3)],
                tmp_path / "g.png")
    image = np.asarray(Image.open(tmp_path / "g.png").convert("L"))
    ink = np.argwhere(image[40:] < 50)  # the stroke, drawn dark on white
    assert ink[:, 0].max() - ink[:, 0].min() >= 3 * 20 - 1  # 20 px of stroke, 3x


def line_colours(image: np.ndarray, row: int, line: int, tiles: int) -> tuple[int, int]:
    """Green and red pixels in caption line `line` of a grid row's tiles
    (the layout render_grid draws: rows of 28 * TILE_SCALE tiles, 15 px caption lines)."""
    tile = 28 * TILE_SCALE
    top = 40 + row * (tile + CAPTION_H + 6) + tile + 2 + 15 * line
    band = image[top:top + 15, LABEL_W:LABEL_W + tiles * CELL_W].astype(int)
    r, g, b = band[..., 0], band[..., 1], band[..., 2]
    # By hue, since text is antialiased towards white: RIGHT is green, WRONG red.
    assert RIGHT[1] > max(RIGHT[0], RIGHT[2]) and WRONG[0] > max(WRONG[1], WRONG[2])
    return int((g - np.maximum(r, b) > 25).sum()), int((r - np.maximum(g, b) > 40).sum())


def test_right_is_green_and_wrong_red_whatever_the_line():
    probs = np.array([0.1, 0.7, 0.2])
    assert prediction_line("K ", probs, 1, ["a", "b", "c"]) == ("K 70% b", True)
    assert prediction_line("", probs, 2, ["a", "b", "c"], " as ") == ("70% as b", False)
    digit = np.zeros((28, 28), np.uint8)
    fix = [("#7", None), ("K 90% 3", False), ("Q 80% 5", True)]
    image = np.asarray(grid_image("t", [("true 5", [(digit, fix)] * 2)]).convert("RGB"))
    index, keras, int8 = (line_colours(image, 0, line, 2) for line in range(3))
    assert index == (0, 0)
    assert keras[0] == 0 and keras[1] > 20    # wrong: red only
    assert int8[1] == 0 and int8[0] > 20      # right: green only


@pytest.fixture(scope="module")
def smoke_analysis(smoke_project):
    art = smoke_project / "artifacts"
    return art, art / "reports" / "mnist_cnn"


def test_confusion_matrix_sums_to_the_test_set_and_matches_accuracy_json(smoke_analysis):
    _, reports = smoke_analysis
    confusion = json.loads((reports / "confusion.json").read_text())
    accuracy = json.loads((reports / "accuracy.json").read_text())
    scores = {v["name"]: v["accuracy"] for v in accuracy["variants"]}
    for name in ("keras", "int8"):
        counts = np.array(confusion[name])
        assert counts.shape == (10, 10)
        assert counts.sum() == accuracy["test_samples"] == 10_000
        assert np.trace(counts) / counts.sum() == pytest.approx(scores[name], abs=1e-12)
    assert confusion["class_names"] == [str(d) for d in range(10)]


def test_damage_list_equals_the_set_difference_computed_here(smoke_analysis):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline import load_runner
    from pipeline.stages.preprocess import load_arrays
    from pipeline.stages.train import load_model

    art, reports = smoke_analysis
    arrays = load_arrays(art / "data" / "mnist" / "mnist.npz")
    images, labels = arrays["x_test"], arrays["y_test"]
    models = art / "models" / "mnist_cnn"
    keras_pred = np.argmax(load_model(models / "mnist_cnn.h5").predict(
        images[..., None].astype(np.float32), batch_size=1000, verbose=0), axis=1)
    interpreter = Interpreter(model_path=str(models / "mnist_cnn_int8.tflite"))
    interpreter.allocate_tensors()
    int8_pred = np.array(load_runner().predict(interpreter, images))
    keras_right = set(np.flatnonzero(keras_pred == labels).tolist())
    int8_right = set(np.flatnonzero(int8_pred == labels).tolist())

    listed = json.loads((reports / "int8_damage.json").read_text())
    damage = {e["index"] for e in listed["damage"]}
    assert damage == keras_right - int8_right
    assert {e["index"] for e in listed["fixes"]} == int8_right - keras_right
    for e in listed["damage"]:
        assert (e["keras"]["class"], e["int8"]["class"], e["label"]) == (
            keras_pred[e["index"]], int8_pred[e["index"]], labels[e["index"]])
        assert 0 < e["int8"]["probability"] <= 1


def test_report_links_every_file_and_the_pngs_are_images(smoke_analysis):
    _, reports = smoke_analysis
    markdown = (reports / "analysis.md").read_text()
    for name in OUTPUTS:
        assert (reports / name).exists(), name
        if name != "analysis.md":
            assert f"({name})" in markdown, name
        if name.endswith(".png"):
            with Image.open(reports / name) as image:
                assert image.width >= 300 and image.height >= 100


def test_a_full_disk_leaves_no_analysis_file_without_its_siblings(smoke_project, small_disk):
    from pipeline.stages.analysis import run
    from pipeline.core.datasets import MNIST
    from pipeline.core.files import DiskFullError

    art = smoke_project / "artifacts"
    models = art / "models" / "mnist_mlp"
    # 16 KiB: room for confusion.json (written first), not for the heat map.
    report_dir = small_disk(16) / "reports"
    with pytest.raises(DiskFullError, match=rf"writing {report_dir / 'confusion.png'}: "):
        run("mnist_mlp", MNIST.class_names, models / "mnist_mlp.h5",
            models / "mnist_mlp_int8.tflite", art / "data" / "mnist" / "mnist.npz", 500, 12,
            report_dir)
    assert list(report_dir.iterdir()) == []  # no confusion.json without analysis.md


def test_onnx_int8_damage_is_listed_beside_int8s(smoke_analysis):
    """onnx_int8's damage and fixes against Keras predictions computed here, with ONNX
    Runtime driven by hand (float input: the raw pixels as float32)."""
    import onnxruntime as ort

    from pipeline.stages.preprocess import load_arrays
    from pipeline.stages.train import load_model

    art, reports = smoke_analysis
    arrays = load_arrays(art / "data" / "mnist" / "mnist.npz")
    images, labels = arrays["x_test"], arrays["y_test"]
    models = art / "models" / "mnist_cnn"
    keras_pred = np.argmax(load_model(models / "mnist_cnn.h5").predict(
        images[..., None].astype(np.float32), batch_size=1000, verbose=0), axis=1)
    session = ort.InferenceSession(str(models / "mnist_cnn_onnx_int8.onnx"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_pred = np.array([np.argmax(session.run(None, {name: image[None, ..., None].astype(
        np.float32)})[0]) for image in images])
    listed = json.loads((reports / "int8_damage.json").read_text())["others"]["onnx_int8"]
    keras_right, onnx_right = keras_pred == labels, onnx_pred == labels
    assert [e["index"] for e in listed["damage"]] == \
        np.flatnonzero(keras_right & ~onnx_right).tolist()
    assert [e["index"] for e in listed["fixes"]] == \
        np.flatnonzero(~keras_right & onnx_right).tolist()
    assert all(e["onnx_int8"]["class"] == onnx_pred[e["index"]] for e in listed["damage"])
    assert listed["accuracy"] == pytest.approx(onnx_right.mean(), abs=1e-12)
    markdown = (reports / "analysis.md").read_text()
    assert f"- **{len(listed['damage'])}** image(s) onnx_int8 gets wrong that Keras gets " \
           "right" in markdown


def test_fixes_grid_draws_the_right_int8_answer_green(smoke_analysis):
    """int8_fixes.png: Keras wrong (red), int8 right (green) on every row; int8_damage.png
    the other way round. Rows and tiles per row from int8_damage.json."""
    _, reports = smoke_analysis
    damage = json.loads((reports / "int8_damage.json").read_text())
    for kind, keras_right in (("fixes", False), ("damage", True)):
        per_class = {}  # tiles per true class, at most smoke.toml's analysis.max_per_class
        for item in damage[kind]:
            per_class[item["label"]] = min(per_class.get(item["label"], 0) + 1, 12)
        image = np.asarray(Image.open(reports / f"int8_{kind}.png").convert("RGB"))
        for row, tiles in enumerate(per_class[c] for c in sorted(per_class)):
            (k_right, k_wrong), (q_right, q_wrong) = (line_colours(image, row, line, tiles)
                                                      for line in (1, 2))
            assert (k_right > 0, k_wrong > 0) == (keras_right, not keras_right), (kind, row)
            assert (q_right > 0, q_wrong > 0) == (not keras_right, keras_right), (kind, row)
