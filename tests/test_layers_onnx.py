"""Per-layer quantization error of the smoke build's onnx_int8 (layers_onnx.json, written by
the `layers` task): each row redone here with the `onnx` API and numpy, from the two models
run by ONNX Runtime on the test images the report names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.stages.layers_onnx import (float_nodes, layer_errors, quantized_activations,
                                         render_markdown, write_reports)
from tests.conftest import synthetic_images

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
    return dq.output[0], float(consts[q.input[1]]), maker, int(consts[q.input[2]])


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
    check_rows(float_path, int8_path, rows, images)


def check_rows(float_path, int8_path, rows, images):
    """Each row's figures against the `onnx` API and numpy (helpers above)."""
    import onnx

    pairs = [(r, *_dequantized_of(int8_path, r["tensor"])) for r in rows]
    floats = _outputs(float_path, [r["tensor"] for r, *_ in pairs], images)
    ints = _outputs(int8_path, [dq for _, dq, *_ in pairs], images)
    float_graph = onnx.load(str(float_path)).graph
    for (row, _, scale, maker, zero_point), reference, quantized in zip(pairs, floats, ints):
        assert row["node"] == maker and row["zero_point"] == zero_point, row["tensor"]
        assert row["op"] == next((n.op_type for n in float_graph.node
                                  if row["tensor"] in n.output), "input"), row["tensor"]
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
    check_ranks_and_count(float_path, int8_path, rows)
    # The default build keeps nothing in float: every Conv/Gemm reads dequantized weights.
    assert data["float_nodes"] == []
    graph = onnx.load(str(int8_path)).graph
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert all(n.op_type == "DequantizeLinear" for n in graph.node if n.output[0] in weights)
    markdown = (reports / "layers_onnx.md").read_text()
    assert "Every Conv, Gemm and MatMul runs in int8." in markdown
    assert f"The worst tensor is `{rows[0]['tensor']}`" in markdown
    assert f"{rows[0]['rmse_over_scale']:.3f}" in markdown


def check_ranks_and_count(float_path, int8_path, rows):
    """Worst first, ranked 1..n, one row per quantized activation (hand count)."""
    import onnx

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


# --- the same checks on the committed fixture models (fast: no build) ----------------------


def test_the_committed_models_rows_are_the_numpy_error_in_quantization_steps(tiny_onnx_models):
    float_path = tiny_onnx_models["tiny_cnn/onnx_float32"]
    int8_path = tiny_onnx_models["tiny_cnn/onnx_int8"]
    images = synthetic_images(np.arange(12) % 10, 2)
    rows = layer_errors(float_path, int8_path, images)
    assert len(rows) >= 3
    check_rows(float_path, int8_path, rows, images)
    check_ranks_and_count(float_path, int8_path, rows)
    assert float_nodes(int8_path) == []


def test_a_node_kept_float_is_named_with_its_op(tiny_onnx_models, tmp_path):
    import onnx

    from pipeline.stages.convert_onnx import quantize_int8

    content = tiny_onnx_models["tiny_mlp/onnx_float32"].read_bytes()
    matmuls = [n.name for n in onnx.load_from_string(content).graph.node
               if n.op_type == "MatMul"]
    path = tmp_path / "kept.onnx"
    path.write_bytes(quantize_int8(content, synthetic_images(np.arange(10), 1),
                                   nodes_to_exclude=matmuls[-1:]))
    assert float_nodes(path) == [{"op": "MatMul", "node": matmuls[-1]}]


ROWS = [{"rank": 1, "op": "Gemm", "tensor": "dense/out", "node": "dense/MatMul",
         "elements": 1234, "rmse_over_scale": 0.41234, "rmse": 0.01, "mean_error": -0.000123,
         "max_abs_error": 0.0456, "scale": 0.0123456, "zero_point": -128},
        {"rank": 2, "op": "input", "tensor": "image", "node": "", "elements": 784,
         "rmse_over_scale": 0.2887, "rmse": 0.2, "mean_error": 0.05,
         "max_abs_error": 0.5, "scale": 1.0, "zero_point": 0}]


def test_the_page_shows_each_figure_as_its_format_says():
    page = render_markdown("b", ROWS, 7)
    assert page.startswith("# Per-layer quantization error: b onnx_int8\n\n")
    assert "both run by ONNX Runtime on 7 seeded test images" in page
    # Rounding alone: a uniform error over one step has RMSE 1/sqrt(12) = 0.2887 steps.
    assert ("The worst tensor is `dense/out` (Gemm): RMSE 0.41 quantization steps; rounding "
            "alone gives 0.29.\n\n") in page
    assert "Every Conv, Gemm and MatMul runs in int8." in page
    lines = [line for line in page.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "rank", "tensor", "made by node", "RMSE / scale", "mean error", "max abs error",
        "scale", "zero point", "elements"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "1", "Gemm `dense/out`", "`dense/MatMul`", "0.412", "-1.23e-04", "4.56e-02", "0.0123",
        "-128", "1,234"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        "2", "input `image`", "", "0.289", "+5.00e-02", "5.00e-01", "1", "0", "784"]
    assert len(lines) == 4


def test_no_rows_no_worst_line_and_the_nodes_kept_in_float_are_named():
    kept = [{"op": "Gemm", "node": "dense/MatMul"}, {"op": "Conv", "node": "conv/Conv2D"}]
    page = render_markdown("b", [], 0, kept)
    assert "The worst tensor" not in page and "runs in int8" not in page
    assert ("Kept in float (the build's `nodes_to_exclude`): Gemm `dense/MatMul`, Conv "
            "`conv/Conv2D`.\n\n") in page


def test_the_json_names_the_images_and_the_nodes_kept(tmp_path):
    kept = [{"op": "Gemm", "node": "dense/MatMul"}]
    write_reports("b", ROWS, [3, 1, 4], tmp_path, kept)
    assert json.loads((tmp_path / "layers_onnx.json").read_text()) == {
        "build": "b", "test_indices": [3, 1, 4], "float_nodes": kept, "rows": ROWS}
    assert (tmp_path / "layers_onnx.md").read_text() == render_markdown("b", ROWS, 3, kept)


def qdq_graphs():
    """A float graph and a hand-made int8 graph with every case quantized_activations must
    tell apart (nothing is run: only the graph is read)."""
    import onnx
    from onnx import helper, numpy_helper

    def const(name, value):
        return numpy_helper.from_array(np.array(value), name)

    float_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
         helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
         helper.make_node("Relu", ["b"], ["c"], name="relu_c"),
         helper.make_node("Relu", ["c"], ["d_QuantizeLinear_Input"], name="relu_d")],
        "f", [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])
              for name in ("x", "w")], [])  # w: a constant of the int8 graph
    n = helper.make_node
    int8_graph = helper.make_graph([
        # 1. no DequantizeLinear undoes it (another scale): skipped, the next still found
        n("QuantizeLinear", ["x", "s1", "z0"], ["xq"], name="qx"),
        n("DequantizeLinear", ["xq", "s2", "z0"], ["xdq"]),
        # 2. a constant (a weight): skipped
        n("QuantizeLinear", ["w", "s1", "z0"], ["wq"]),
        n("DequantizeLinear", ["wq", "s1", "z0"], ["wdq"]),
        # 3. no zero point (2 inputs), per-channel scale, per-channel zero point: skipped
        n("QuantizeLinear", ["a", "s1"], ["aq2"]),
        n("DequantizeLinear", ["aq2", "s1"], ["adq2"]),
        n("QuantizeLinear", ["a", "sv", "z0"], ["aqv"]),
        n("DequantizeLinear", ["aqv", "sv", "z0"], ["adqv"]),
        n("QuantizeLinear", ["a", "s1", "zv"], ["aqz"]),
        n("DequantizeLinear", ["aqz", "s1", "zv"], ["adqz"]),
        # 4. a tensor the float graph lacks: skipped, the next still found
        n("QuantizeLinear", ["only_int8", "s1", "z0"], ["oq"]),
        n("DequantizeLinear", ["oq", "s1", "z0"], ["odq"]),
        # 5. found: made by node "relu_b"; ORT's renamed graph output; a float tensor whose
        #    own name ends like a renamed one
        n("Relu", ["a"], ["b"], name="relu_b"),
        n("QuantizeLinear", ["b", "s2", "z5"], ["bq"]),
        n("DequantizeLinear", ["bq", "s2", "z5"], ["bdq"]),
        n("QuantizeLinear", ["c_QuantizeLinear_Input", "s1", "z0"], ["cq"]),
        n("DequantizeLinear", ["cq", "s1", "z0"], ["cdq"]),
        n("QuantizeLinear", ["d_QuantizeLinear_Input", "s1", "z0"], ["dq_"]),
        n("DequantizeLinear", ["dq_", "s1", "z0"], ["ddq"]),
    ], "q", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [],
        initializer=[const("s1", np.float32(0.5)), const("s2", np.float32(0.25)),
                     const("z0", np.int8(0)), const("z5", np.int8(-5)),
                     const("sv", np.float32([0.5, 0.5])), const("zv", np.int8([0, 0])),
                     const("w", np.float32([1.0]))])
    return helper.make_model(float_graph), helper.make_model(int8_graph)


def test_only_activations_a_same_scale_dequantize_undoes_are_matched():
    float_model, int8_model = qdq_graphs()
    assert quantized_activations(float_model, int8_model) == [
        {"tensor": "b", "dequantized": "bdq", "op": "Relu", "node": "relu_b", "scale": 0.25,
         "zero_point": -5},
        {"tensor": "c", "dequantized": "cdq", "op": "Relu", "node": "", "scale": 0.5,
         "zero_point": 0},
        {"tensor": "d_QuantizeLinear_Input", "dequantized": "ddq", "op": "Relu", "node": "",
         "scale": 0.5, "zero_point": 0}]


def test_a_graph_input_is_matched_as_input():
    import onnx
    from onnx import helper, numpy_helper

    float_model, _ = qdq_graphs()
    int8 = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"])], "q",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [],
        initializer=[numpy_helper.from_array(np.array(np.float32(1 / 255)), "s"),
                     numpy_helper.from_array(np.array(np.int8(-128)), "z")]))
    [found] = quantized_activations(float_model, int8)
    assert (found["tensor"], found["op"], found["zero_point"]) == ("x", "input", -128)
    assert found["scale"] == pytest.approx(1 / 255, rel=1e-7)


def test_the_pages_link_and_the_jsons_layout(tmp_path):
    page = render_markdown("b", [], 3, [{"op": "Gemm", "node": "g"}])
    # No rows: no worst line, the float line right after the intro's link to the values.
    assert "Values: [layers_onnx.json](layers_onnx.json).\n\nKept in float" in page
    write_reports("b", ROWS, [0], tmp_path)
    assert (tmp_path / "layers_onnx.json").read_text().startswith('{\n  "build": "b",\n  "')
