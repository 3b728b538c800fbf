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
