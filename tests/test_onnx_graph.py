"""The integer-form pass on real translations (ONNX Runtime's optimized graph is the judge)
and on small graphs built here by hand, each rule at its boundary."""

from collections import Counter

import numpy as np
import pytest

from pipeline.stages.convert_onnx import translate_tflite
from pipeline.stages.onnx_graph import integer_form, state_quantization


def optimized_ops(content: bytes, tmp_path) -> tuple[Counter, int]:
    """ORT's optimized graph of `content`: op counts, and how many DequantizeLinear read a
    constant (a weight dequantized on every run)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # the "hardware specific optimizations" warning
    ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    constants = {t.name for t in graph.initializer}
    weight_dqs = sum(n.op_type == "DequantizeLinear" and n.input[0] in constants
                     for n in graph.node)
    return Counter(n.op_type for n in graph.node), weight_dqs


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_ort_runs_the_translation_in_integer_kernels(tiny_models, kind, tmp_path):
    tflite = tiny_models[f"tiny_{kind}/int8"]
    ops, weight_dqs = optimized_ops(translate_tflite(tflite), tmp_path)
    assert not {"Conv", "Gemm", "MatMul"} & set(ops), ops
    assert weight_dqs == 0
    # Untrained, the dense layers' biases are 0 and tf2onnx leaves out the Add: QLinearMatMul.
    assert ops["QGemm"] + ops["QLinearMatMul"] == 2, ops
    assert ops["QLinearConv"] == (3 if kind == "cnn" else 0), ops
    # Without the pass ORT keeps float layers: what the pass is for.
    plain_ops, plain_weight_dqs = optimized_ops(translate_tflite(tflite, integer=False),
                                                tmp_path)
    assert {"Conv", "Gemm", "MatMul"} & set(plain_ops) and plain_weight_dqs > 0


def graph(nodes, inputs, outputs, initializers):
    from onnx import TensorProto, helper

    return helper.make_model(
        helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                          initializer=initializers),
        opset_imports=[helper.make_opsetid("", 17)])


def clamp_then_quantize(op: str, scale: float, zero_point: int):
    """x -> Relu or Clip(0, 6) -> QuantizeLinear(scale, zero_point) -> int8 output."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(scale), "s"),
             numpy_helper.from_array(np.int8(zero_point), "z"),
             numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi")]
    clamp = helper.make_node(op, ["x", "lo", "hi"] if op == "Clip" else ["x"], ["c"])
    quantize = helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"])
    return graph([clamp, quantize], [("x", [64])], [("y", TensorProto.INT8, [64])], inits)


def run(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("op, scale, zero_point, folds", [
    ("Relu", 0.05, -128, True),       # q(0) = -128: the type's minimum already clamps at 0
    ("Relu", 0.05, -127, False),      # q(0) = -127: Relu clamps what Q would not
    ("Clip", 6 / 255, -128, True),    # q(6) = 255 - 128 = 127
    ("Clip", 6 / 254.4, -128, False),  # q(6) = rint(254.4) - 128 = 126: the 6 clamps
])
def test_a_clamp_is_folded_exactly_when_quantization_already_clamps(op, scale, zero_point,
                                                                     folds):
    model = clamp_then_quantize(op, scale, zero_point)
    # Values across and beyond both bounds, and the bounds themselves.
    x = {"x": np.concatenate([np.linspace(-2, 9, 62), [0, 6]]).astype(np.float32)}
    expected = np.clip(np.rint(np.clip(x["x"], 0, 6 if op == "Clip" else np.inf)
                               / np.float32(scale)) + zero_point, -128, 127)
    assert np.array_equal(run(model, x), expected)  # the hand-built model is what we think
    summary = integer_form(model)
    assert summary.clamps_removed == int(folds)
    assert [n.op_type for n in model.graph.node] == \
        (["QuantizeLinear"] if folds else [op, "QuantizeLinear"])
    assert np.array_equal(run(model, x), expected)


def dense(weight_is_constant: bool):
    """x [1, 4] -> MatMul(W [4, 3]) -> Add(b [3]) -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b")]
    inputs = [("x", [1, 4])]
    if weight_is_constant:
        inits.append(numpy_helper.from_array(w, "w"))
    else:
        inputs.append(("w", [4, 3]))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    return graph(nodes, inputs, [("y", TensorProto.FLOAT, [1, 3])], inits), w, b


def test_matmul_and_add_of_constants_become_one_gemm():
    model, w, b = dense(weight_is_constant=True)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    summary = integer_form(model)
    assert summary.gemms == 1
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    np.testing.assert_allclose(run(model, {"x": x}), x @ w + b, rtol=1e-6)


def test_a_graph_the_pass_does_not_recognise_is_left_as_it_was_and_named():
    model, w, _ = dense(weight_is_constant=False)
    before = model.SerializeToString()
    summary = integer_form(model)
    assert model.SerializeToString() == before
    assert (summary.gemms, summary.clamps_removed, summary.requantized_layouts) == (0, 0, 0)
    assert summary.left_in_float == ["MatMul m"]
    assert "not recognised, left as translated (float in ONNX Runtime): MatMul" in \
        summary.describe()


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_onnx_int8_dequantizes_no_constant_at_run_time_and_answers_as_ort_quantized_it(
        tiny_onnx_models, kind, tmp_path):
    """ORT's quantizer leaves the Rescaling layer's int8 constants behind DequantizeLinear;
    the pass stores them dequantized. Reference: quantize_static called here directly."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)

    from pipeline.stages.convert_onnx import quantize_int8
    from tests.conftest import synthetic_images

    float_path = tiny_onnx_models[f"tiny_{kind}/onnx_float32"]
    representative = synthetic_images(np.arange(50) % 10, 3)  # as tiny_onnx_models'
    ours = quantize_int8(float_path.read_bytes(), representative)
    ops, weight_dqs = optimized_ops(ours, tmp_path)
    assert weight_dqs == 0 and not {"Conv", "Gemm", "MatMul"} & set(ops), ops

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"image": i[None, ..., None].astype(np.float32)}
                               for i in representative])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(float_path), str(tmp_path / "ort.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    _, their_dqs = optimized_ops((tmp_path / "ort.onnx").read_bytes(), tmp_path)
    assert their_dqs > 0  # what the pass is for
    x = synthetic_images(np.arange(100) % 10, 12)[..., None].astype(np.float32)
    outputs = []
    for model in (ours, str(tmp_path / "ort.onnx")):
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, {"image": x[i:i + 1]})[0]
                                       for i in range(len(x))]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def rescale_between_quantizations(factor: float, out_scale: float):
    """x -> Q(1, -128) -> DQ -> Mul(factor) -> Q(out_scale, -128) -> DQ -> y: the Rescaling
    layer between ORT's input quantization and the next one."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(1), "s1"),
             numpy_helper.from_array(np.int8(-128), "z"),
             numpy_helper.from_array(np.float32(factor), "c"),
             numpy_helper.from_array(np.float32(out_scale), "s2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z"], ["d1"]),
             helper.make_node("Mul", ["d1", "c"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["y"])]
    return graph(nodes, [("x", [256])], [("y", TensorProto.FLOAT, [256])], inits)


@pytest.mark.parametrize("factor, out_scale, bypassed", [
    (1 / 255, 1 / 255, True),              # q -> q: the three nodes go
    (2 / 255, 1 / 255, False),             # q -> 2q + 128: a real change, kept
    (1 / 255, 1 / 255 * 1.002, False),     # 255 / 1.002 = 254.49: not q, and near a boundary
    (1 / 255, 1 / 255.3, False),           # every q to itself, but 255 lands 0.3 step off
                                           # an integer (> 0.25): a kernel could round it away
])
def test_a_requantization_that_maps_every_value_to_itself_is_bypassed(factor, out_scale,
                                                                     bypassed):
    model = rescale_between_quantizations(factor, out_scale)
    pixels = {"x": np.arange(256, dtype=np.float32)}
    # numpy's reference of the whole chain, independent of the pass.
    q1 = np.clip(np.rint(pixels["x"]) - 128, -128, 127)
    m = ((q1 + 128) * np.float32(factor)).astype(np.float32)
    q2 = np.clip(np.rint(m / np.float32(out_scale)) - 128, -128, 127)
    expected = ((q2 + 128) * np.float32(out_scale)).astype(np.float32)
    assert np.array_equal(run(model, pixels), expected)
    summary = integer_form(model)
    assert summary.identities_bypassed == int(bypassed)
    assert [n.op_type for n in model.graph.node] == (
        ["QuantizeLinear", "DequantizeLinear"] if bypassed else
        ["QuantizeLinear", "DequantizeLinear", "Mul", "QuantizeLinear", "DequantizeLinear"])
    assert np.array_equal(run(model, pixels), expected)
    if bypassed:  # the DQ now reads the input's quantization with the second's scale
        assert model.graph.node[1].input[0] == "q1"


def int8_input_rescale():
    """The translated model's int8 input q1 -> DQ(1, -128) -> Mul(1/255) -> Q(1/255, -128)
    -> DQ -> y: its first DequantizeLinear states the input's scale."""
    from onnx import TensorProto, helper

    model = rescale_between_quantizations(1 / 255, 1 / 255)
    graph_ = model.graph
    graph_.node.remove(graph_.node[0])  # the input is now q1 itself, int8
    graph_.input[0].CopyFrom(helper.make_tensor_value_info("q1", TensorProto.INT8, [256]))
    return model


def test_an_identity_right_after_an_int8_graph_input_is_kept_without_metadata():
    """A model whose metadata does not state the input's quantization (an older build's):
    its readers find it in that DequantizeLinear, so the rescale after it stays."""
    model = int8_input_rescale()
    before = model.SerializeToString()
    assert integer_form(model).identities_bypassed == 0
    assert model.SerializeToString() == before


def test_an_identity_right_after_an_int8_graph_input_goes_once_the_metadata_states_it():
    from pipeline.core.runtimes import onnx_detail, onnx_metadata

    model = int8_input_rescale()
    q = {"q1": np.arange(-128, 128).astype(np.int8)}
    # numpy's reference: (q + 128) * 1, times 1/255, requantized to q, dequantized at 1/255.
    expected = ((q["q1"].astype(np.float32) + 128) * np.float32(1 / 255)).astype(np.float32)
    assert np.array_equal(run(model, q), expected)
    assert state_quantization(model) == {"input": (1.0, -128)}  # the float output: none
    assert {p.key: p.value for p in model.metadata_props} == {
        "input_quantization": "[1.0, -128]"}
    summary = integer_form(model)
    assert summary.identities_bypassed == 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear"]
    assert np.array_equal(run(model, q), expected)
    # The DQ left has the next one's scale: the input's contract is the metadata's ...
    graph_ = model.graph
    assert onnx_detail(graph_, graph_.input[0], "input",
                       onnx_metadata(model))["quantization"] == (1.0, -128)
    # ... where the DequantizeLinear alone would read 1/255.
    assert onnx_detail(graph_, graph_.input[0], "input")["quantization"] == (
        pytest.approx(1 / 255), -128)


def test_quantization_is_stated_from_the_nodes_beside_an_int8_input_and_output():
    """Both sides integer: each read from its own node (the input's DQ, the output's Q)."""
    from onnx import TensorProto, helper

    model = int8_input_rescale()
    graph_ = model.graph
    graph_.node.remove(graph_.node[-1])  # the output is now q2, int8
    graph_.output[0].CopyFrom(helper.make_tensor_value_info("q2", TensorProto.INT8, [256]))
    stated = state_quantization(model)
    assert stated == {"input": (1.0, -128), "output": (pytest.approx(1 / 255), -128)}
    # The Q writes the graph output: kept, and nothing bypassed.
    assert integer_form(model).identities_bypassed == 0
