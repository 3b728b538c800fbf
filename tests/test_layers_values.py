"""Per-layer quantization error of an untrained CNN, without a smoke build: each row compared
with TensorFlow's QuantizationDebugger statistics taken here (the same calibration and debug
images), so RMSE, its ratio to the scale, the ranking and the columns are checked as values."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from pipeline.stages.layers import layer_errors
from tests.conftest import synthetic_images


@pytest.fixture(scope="module")
def rows_and_reference():
    import tensorflow as tf

    from pipeline.stages.train import build_model

    model = build_model("cnn", (28, 28), 10)
    representative = synthetic_images(np.arange(30) % 10, 3)
    # Debug images unlike the calibration ones (brighter noise): different statistics.
    debug = np.clip(synthetic_images(np.arange(12) % 10, 9).astype(int) * 3, 0, 255).astype(
        np.uint8)
    rows = layer_errors(model, representative, debug)

    def images(x):
        def gen():
            for image in x:
                yield [image[np.newaxis, ..., np.newaxis].astype(np.float32)]
        return gen

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = images(representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                         debug_dataset=images(debug))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    reference = {int(r["tensor_idx"]): r for r in csv.DictReader(io.StringIO(dump.getvalue()))}
    return rows, reference


def test_each_row_is_the_debuggers_rmse_in_quantization_steps(rows_and_reference):
    rows, reference = rows_and_reference
    assert len(rows) == len(reference) >= 3
    for row in rows:
        r = reference[row["tensor_index"]]
        scale = float(r["scale"])
        rmse = math.sqrt(float(r["mean_squared_error"]))
        assert row["scale"] == pytest.approx(scale, rel=1e-6)
        assert row["rmse"] == pytest.approx(rmse, rel=1e-3, abs=1e-9)
        assert row["rmse_over_scale"] == pytest.approx(rmse / scale, rel=1e-3, abs=1e-9)
        assert row["max_abs_error"] == pytest.approx(float(r["max_abs_error"]), rel=1e-3,
                                                     abs=1e-9)
        assert row["mean_error"] == pytest.approx(float(r["mean_error"]), rel=1e-3, abs=1e-9)
        assert row["zero_point"] == int(r["zero_point"])
    # At least one tensor's error is not a whole step: sqrt matters (x != x**2 there).
    assert any(abs(row["rmse_over_scale"] - 1) > 0.05 for row in rows)


def test_rows_are_ranked_worst_first_in_steps_from_one(rows_and_reference):
    rows, reference = rows_and_reference
    steps = sorted((math.sqrt(float(r["mean_squared_error"])) / float(r["scale"])
                    for r in reference.values()), reverse=True)
    assert [row["rmse_over_scale"] for row in rows] == pytest.approx(steps, rel=1e-3, abs=1e-9)
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
