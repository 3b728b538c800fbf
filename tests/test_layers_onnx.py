"""Per-layer quantization error of the smoke build's onnx_int8 (layers_onnx.json, written by
the `layers` task): each row redone here with the `onnx` API and numpy, from the two models
run by ONNX Runtime on the test images the report names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.stages.layers_onnx import quantized_activations

# Each figure agrees within this many quantization steps of its tensor. ONNX Runtime's
# float32 sums depend on its thread count (measured: 1e-5 of a value apart between 1 thread
# and the default), which could move an int8 value across a rounding boundary: 1 thread
# here, as the report runs.
STEPS = 1e-4


def _outputs(path, names, images):
    """`names` of the model at `path` over `images`, added as graph outputs by hand here."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    runs = [session.run(list(names), {feed: image[None, ..., None].astype(np.float32)})
            for image in images]
    return [np.stack([r[i] for r in runs]).astype(np.float64) for i in range(len(names))]


def _dequantized_of(int8_path, tensor):
    """The DequantizeLinear output after the QuantizeLinear of `tensor` in onnx_int8, that
    QuantizeLinear's scale and the node making its input: read off the graph directly."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(int8_path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] in (tensor, f"{tensor}_QuantizeLinear_Input"))
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] == q.output[0])
    maker = next((n.name for n in graph.node if q.input[0] in n.output), "")
    return dq.output[0], float(consts[q.input[1]]), maker


@pytest.fixture(scope="module")
def report(smoke_project):
    from pipeline.stages.preprocess import load_arrays

    art = smoke_project / "artifacts"
    models = art / "models" / "mnist_cnn"
    data = json.loads((art / "reports" / "mnist_cnn" / "layers_onnx.json").read_text())
    images = load_arrays(art / "data" / "mnist" / "mnist.npz")["x_test"][data["test_indices"]]
    return (models / "mnist_cnn_onnx_float32.onnx", models / "mnist_cnn_onnx_int8.onnx",
            data, images, art / "reports" / "mnist_cnn")


def test_each_row_is_the_numpy_error_in_quantization_steps(report):
    float_path, int8_path, data, images, _ = report
    rows = data["rows"]
    assert len(images) == len(data["test_indices"]) >= 10 and len(rows) >= 5
    pairs = [(r, *_dequantized_of(int8_path, r["tensor"])) for r in rows]
    floats = _outputs(float_path, [r["tensor"] for r, _, _, _ in pairs], images)
    ints = _outputs(int8_path, [dq for _, dq, _, _ in pairs], images)
    for (row, _, scale, maker), reference, quantized in zip(pairs, floats, ints):
        assert row["node"] == maker, row["tensor"]
        error = quantized - reference
        rmse = np.sqrt(np.mean(error ** 2))
        assert row["scale"] == pytest.approx(scale, rel=1e-7), row["tensor"]
        tolerance = STEPS * scale
        assert row["rmse"] == pytest.approx(rmse, abs=tolerance), row["tensor"]
        assert row["rmse_over_scale"] == pytest.approx(rmse / scale, abs=STEPS), row["tensor"]
        assert row["max_abs_error"] == pytest.approx(np.abs(error).max(), abs=tolerance)
        assert row["mean_error"] == pytest.approx(error.mean(), abs=tolerance)
        assert row["elements"] == reference[0].size
    # The figures are not all zero: the classifier's logits carry error from every layer.
    assert rows[0]["rmse_over_scale"] > 0.1


def test_rows_are_ranked_worst_first_and_cover_every_quantized_activation(report):
    import onnx

    float_path, int8_path, data, _, reports = report
    rows = data["rows"]
    steps = [r["rmse_over_scale"] for r in rows]
    assert steps == sorted(steps, reverse=True)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    # Every QuantizeLinear of an activation that a DequantizeLinear of the same scale and
    # zero point undoes (hand count from the graph) has its row.
    from onnx import numpy_helper

    graph = onnx.load(str(int8_path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def undone(q):
        return any(n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]
                   and consts[n.input[1]] == consts[q.input[1]]
                   and consts[n.input[2]] == consts[q.input[2]] for n in graph.node)

    count = sum(n.op_type == "QuantizeLinear" and n.input[0] not in consts and undone(n)
                for n in graph.node)
    assert len(rows) == count
    assert len(quantized_activations(onnx.load(str(float_path)), onnx.load(str(int8_path)))) \
        == count
    # The default build keeps nothing in float: every Conv/Gemm reads dequantized weights.
    assert data["float_nodes"] == []
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert all(n.op_type == "DequantizeLinear" for n in graph.node if n.output[0] in weights)
    markdown = (reports / "layers_onnx.md").read_text()
    assert "Every Conv, Gemm and MatMul runs in int8." in markdown
    assert f"The worst tensor is `{rows[0]['tensor']}`" in markdown
    assert f"{rows[0]['rmse_over_scale']:.3f}" in markdown
