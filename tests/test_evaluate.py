import json

import numpy as np
import pytest

from pipeline.stages.evaluate import DriftError, check_drift, run, score
from pipeline.core.files import sha256_file
from pipeline.stages.train import build_model, save_model
from tests.conftest import synthetic_images


def test_score_counts_accuracy_agreement_and_drift(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"12345")
    labels = np.array([0, 1, 1, 2])
    keras = np.array([0, 1, 1, 1])     # 75 %
    variant = np.array([0, 1, 0, 2])   # 75 %, agrees with Keras on 2 of 4
    r = score("int8", path, variant, keras, labels, ["a", "b", "c"])
    assert (r.accuracy, r.agreement, r.drift_pt, r.bytes) == (0.75, 0.5, 0.0, 5)
    assert r.per_class_accuracy == {"a": 1.0, "b": 0.5, "c": 1.0}


def test_drift_gate():
    report = {"build": "b", "variants": [{"name": "keras", "drift_pt": 0.0, "accuracy": 0.99},
                                         {"name": "int8", "drift_pt": -1.5, "accuracy": 0.975}]}
    check_drift(report, 2.0)
    with pytest.raises(DriftError, match="1.50 points below Keras, more than max_drift_pt = 1.0"):
        check_drift(report, 1.0)
    # the limit itself is allowed; a hair beyond it is not
    check_drift(report, 1.5)
    with pytest.raises(DriftError):
        check_drift(report, 1.49)
    # only int8 is gated, and a gain is never a failure
    check_drift({"build": "b", "variants": [{"name": "float16", "drift_pt": -9.0,
                                             "accuracy": 0.9},
                                            {"name": "int8", "drift_pt": 2.0,
                                             "accuracy": 0.99}]}, 0.0)


def test_run_writes_reports_before_failing_the_gate(tmp_path, tiny_models):
    import keras

    from pipeline.stages.convert import convert
    from pipeline.core.datasets import FASHION_MNIST
    from pipeline.stages.preprocess import save_arrays

    labels = np.arange(600) % 10
    images = synthetic_images(labels, 4)
    save_arrays(tmp_path / "d.npz", {"x_test": images[:200], "y_test": labels[:200]})
    keras.utils.set_random_seed(0)
    model = build_model("mlp", (28, 28), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[200:, ..., None].astype(np.float32), labels[200:], epochs=5, verbose=0)
    save_model(model, tmp_path / "m.h5")
    (tmp_path / "good_float32.tflite").write_bytes(convert(model, "float32"))
    # An int8 file of an untrained network stands in for a quantization that went wrong.
    variants = {"float32": tmp_path / "good_float32.tflite", "int8": tiny_models["tiny_mlp/int8"]}
    with pytest.raises(DriftError, match="int8 accuracy .* points below Keras"):
        run("b", "fashion_mnist", FASHION_MNIST.class_names, tmp_path / "m.h5", variants,
            tmp_path / "d.npz", 50, 1.0, tmp_path / "reports")
    report = json.loads((tmp_path / "reports" / "accuracy.json").read_text())
    assert report["test_samples"] == 200 and report["dataset"] == "fashion_mnist"
    keras_row, float_row, int8_row = report["variants"]
    assert [keras_row["name"], float_row["name"], int8_row["name"]] == ["keras", "float32", "int8"]
    assert keras_row["accuracy"] > 0.9
    assert float_row["agreement"] == 1.0 and float_row["drift_pt"] == 0.0
    assert int8_row["drift_pt"] < -1.0
    markdown = (tmp_path / "reports" / "accuracy.md").read_text()
    assert "Ankle boot" in markdown and report["made_utc"] in markdown
    assert int8_row["sha256"] == sha256_file(tiny_models["tiny_mlp/int8"])
    assert f"`tiny_mlp_int8.tflite` {int8_row['sha256'][:12]}" in markdown
    # Every figure of the rows against its own count: the files' lengths, LiteRT driven by
    # hand over the 200 test images, Keras' own predictions, per class by counting.
    from ai_edge_litert.interpreter import Interpreter

    x, y = images[:200], labels[:200]
    keras_top1 = np.argmax(model.predict(x[..., None].astype(np.float32), verbose=0), 1)
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in markdown.splitlines() if line.startswith("| ")}
    for row, path in ((keras_row, tmp_path / "m.h5"), (float_row, variants["float32"]),
                      (int8_row, variants["int8"])):
        assert row["bytes"] == len(path.read_bytes()), row["name"]
        assert int(cells[row["name"]][0].replace(",", "")) == len(path.read_bytes())
        if row is keras_row:
            top1 = keras_top1
        else:
            interpreter = Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
            inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            top1 = []
            for image in x:
                q = image[None, ..., None].astype(np.float64)
                if inp["dtype"] != np.float32:
                    scale, zero = inp["quantization"]
                    q = np.clip(np.round(q / scale + zero), -128, 127)
                interpreter.set_tensor(inp["index"], q.astype(inp["dtype"]))
                interpreter.invoke()
                top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
            top1 = np.array(top1)
        if row is int8_row:
            # The untrained int8 network's outputs tie often, and a batched integer kernel
            # may round one step differently from one image per invoke (test_runtimes),
            # which moves a tied top-1: within one image of 200, and no per-class check.
            assert abs(row["accuracy"] - np.sum(top1 == y) / 200) <= 1 / 200 + 1e-12
            assert abs(row["agreement"] - np.sum(top1 == keras_top1) / 200) <= 1 / 200 + 1e-12
            continue
        assert row["accuracy"] == pytest.approx(np.sum(top1 == y) / 200, abs=1e-12), row["name"]
        assert row["agreement"] == pytest.approx(np.sum(top1 == keras_top1) / 200, abs=1e-12)
        drift = 100 * (np.sum(top1 == y) - np.sum(keras_top1 == y)) / 200
        assert row["drift_pt"] == pytest.approx(drift, abs=1e-4), row["name"]
        assert cells[row["name"]][1] == f"{100 * np.sum(top1 == y) / 200:.2f}"
        for c, name in enumerate(FASHION_MNIST.class_names):
            assert row["per_class_accuracy"][name] == pytest.approx(
                np.sum((top1 == y) & (y == c)) / np.sum(y == c), abs=1e-12), (row["name"], name)
    # The int8 row's drift is its own accuracy minus Keras', in points (4 decimals).
    assert int8_row["drift_pt"] == pytest.approx(
        100 * (int8_row["accuracy"] - keras_row["accuracy"]), abs=1e-4)


def test_drift_gate_applies_to_onnx_int8_at_its_boundary():
    def report(drift):
        return {"build": "b", "variants": [
            {"name": "keras", "drift_pt": 0.0, "accuracy": 0.99},
            {"name": "int8", "drift_pt": 0.0, "accuracy": 0.99},
            {"name": "onnx_int8", "drift_pt": drift, "accuracy": 0.99 + drift / 100}]}

    check_drift(report(-0.8), 0.8)  # the limit itself is allowed
    with pytest.raises(DriftError, match=r"b: onnx_int8 accuracy 98\.20 % is 0\.80 points below "
                                         r"Keras, more than max_drift_pt = 0\.79"):
        check_drift(report(-0.8), 0.79)
    # onnx_int8_tflite equals int8 bit for bit (its task checks it): int8's gate covers it
    check_drift({"build": "b", "variants": [{"name": "onnx_int8_tflite", "drift_pt": -9.0,
                                             "accuracy": 0.9}]}, 0.0)


def test_agreement_with_each_compared_model_and_its_column(tmp_path):
    from pipeline.stages.evaluate import render_markdown

    labels = np.array([0, 1, 2, 3])
    keras = np.array([0, 1, 2, 0])
    int8 = np.array([0, 1, 0, 0])
    onnx = np.array([0, 2, 0, 0])   # agrees with Keras on 2 of 4, with int8 on 3 of 4
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    r = score("onnx_int8", path, onnx, keras, labels, list("abcd"), {"int8": int8})
    plain = score("int8", path, int8, keras, labels, list("abcd"))
    assert r.agreement_with == {"keras": 0.5, "int8": 0.75} and r.agreement == 0.5
    assert plain.agreement_with == {"keras": 0.75}
    report = {"build": "b", "dataset": "mnist", "test_samples": 4, "made_utc": "t",
              "variants": [vars(plain), vars(r)]}
    table = render_markdown(report)
    assert "| agree w/ Keras %   | agree w/ int8 %   |" in table
    assert "| 50.00              | 75.00             |" in table  # onnx_int8's row
    assert "| 75.00              | -                 |" in table  # int8: not compared with itself


def test_score_against_a_count_by_hand_loop_and_drift_to_four_decimals(tmp_path):
    import hashlib

    path = tmp_path / "m.tflite"
    path.write_bytes(b"model bytes")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 301)           # no label 3: that class has no row
    keras = np.where(rng.random(301) < 0.9, labels, (labels + 1) % 3)
    variant = np.where(rng.random(301) < 0.8, labels, (labels + 2) % 3)
    other = rng.integers(0, 3, 301)
    r = score("int8", path, variant, keras, labels, ["a", "b", "c", "d"], {"x": other})
    n = len(labels)
    right = sum(1 for p, y in zip(variant, labels) if p == y)
    keras_right = sum(1 for p, y in zip(keras, labels) if p == y)
    same = sum(1 for p, k in zip(variant, keras) if p == k)
    assert r.accuracy == right / n and r.agreement == same / n
    assert r.drift_pt == round(100 * (right / n - keras_right / n), 4) != 0
    assert r.agreement_with == {"keras": same / n,
                                "x": sum(1 for p, o in zip(variant, other) if p == o) / n}
    assert r.per_class_accuracy == {
        name: sum(1 for p, y in zip(variant, labels) if y == c and p == y)
        / sum(1 for y in labels if y == c) for c, name in enumerate("abc")}
    assert (r.name, r.path, r.bytes) == ("int8", str(path), len(b"model bytes"))
    assert r.sha256 == hashlib.sha256(b"model bytes").hexdigest()


def test_the_accuracy_page_shows_each_figure_in_percent_and_names_the_files():
    from pipeline.stages.evaluate import render_markdown

    variant = {"name": "int8", "path": "/x/models/b/int8.tflite", "sha256": "ab" * 32,
               "bytes": 12345, "accuracy": 0.98765, "agreement": 0.5, "drift_pt": -1.234,
               "per_class_accuracy": {"a": 0.25, "b": 1.0}, "agreement_with": {"keras": 0.5}}
    page = render_markdown({"build": "b", "dataset": "mnist", "test_samples": 10000,
                            "made_utc": "2026-12-06T00:00:00Z", "variants": [variant]})
    assert page.startswith("# Accuracy drift: b\n\nMade 2026-12-06T00:00:00Z from "
                           "`int8.tflite` ababababab" "ab (SHA-256 prefix).\n\n"
                           "Dataset `mnist`, 10,000 test images.")
    assert "| int8      | 12,345  | 98.77        | 50.00              | -1.23      |" in page
    assert "## Per-class accuracy (%)" in page
    assert "| a       | 25.00  |" in page and "| b       | 100.00 |" in page


def test_a_report_from_before_agreement_with_renders_and_the_headers_are_the_pages():
    from pipeline.stages.evaluate import render_markdown

    old = {"name": "int8", "path": "m.tflite", "sha256": "0" * 64, "bytes": 1, "accuracy": 1.0,
           "agreement": 1.0, "drift_pt": 0.0, "per_class_accuracy": {"a": 1.0}}
    page = render_markdown({"build": "b", "dataset": "d", "test_samples": 1, "made_utc": "t",
                            "variants": [old, {**old, "name": "onnx_int8",
                                               "agreement_with": {"int8": 1.0}}]})
    assert "| variant   | bytes   | accuracy %   | agree w/ Keras %   | agree w/ int8 %" in page
    assert "| int8      | 1       | 100.00       | 100.00             | -" in page
    assert "| class   | int8   | onnx_int8   |" in page
