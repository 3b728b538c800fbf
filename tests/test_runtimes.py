"""The host inference seam against LiteRT driven by hand, on real converted models."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import load_runner
from pipeline.core.runtimes import (BACKENDS, LiteRTModel, OnnxRuntimeModel,
                                    UnsupportedModelError, onnx_quantization, open_model,
                                    open_model_content, rebuild_hint)
from tests.conftest import REPO, synthetic_images


def direct_probabilities(path, images):
    """LiteRT driven directly, one image per invoke, with numpy (de)quantization written out
    here: q = clip(round(x / scale + zero_point)), real = (q - zero_point) * scale."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in images:
        x = image.reshape(1, 28, 28, 1).astype(np.float64)
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero_point = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero_point = out["quantization"]
            y = (y - zero_point) * scale
        rows.append(y)
    return np.array(rows)


@pytest.fixture(scope="module")
def images():
    return synthetic_images(np.arange(40) % 10, 21)


@pytest.mark.parametrize("key", ["tiny_cnn/float32", "tiny_cnn/int8", "tiny_mlp/float32",
                                 "tiny_mlp/int8"])
def test_probabilities_equal_litert_driven_by_hand(tiny_models, images, key):
    model = open_model(tiny_models[key])
    # batch of 16 over 40 images: the last batch is short, and batching must not matter
    probs = model.probabilities(images, 16)
    assert probs.shape == (40, 10) and probs.dtype == np.float32
    # Batched integer kernels may round an output one step differently from one image per
    # invoke (measured: 1 step, 0.0039, on a few of 400 values), never more.
    out = model.io_contract()["output"]
    step = out["scale"] * 1.001 if "scale" in out else 1e-5
    np.testing.assert_allclose(probs, direct_probabilities(tiny_models[key], images), atol=step)
    np.testing.assert_array_equal(model.predict(images, 16), np.argmax(probs, axis=1))


def test_an_int8_output_is_dequantized_with_its_zero_point(tiny_models, images):
    model = open_model(tiny_models["tiny_cnn/int8"])
    out = model.io_contract()["output"]
    assert out["dtype"] == "int8" and out["zero_point"] != 0  # else the test proves nothing
    probs = model.probabilities(images, 40)
    # A softmax: the dequantized classes sum to 1 within the rounding of 10 int8 steps. A
    # dropped zero point shifts each of the 10 by zero_point * scale (here 0.5).
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=10 * out["scale"])
    np.testing.assert_allclose(probs, direct_probabilities(tiny_models["tiny_cnn/int8"],
                                                           images), atol=out["scale"] * 1.001)


def test_input_is_quantized_bit_identically_to_the_runner(tiny_models, images):
    """Host and board feed identical tensors: the seam's input is the runner's quantize."""
    from ai_edge_litert.interpreter import Interpreter

    path = tiny_models["tiny_cnn/int8"]
    batch = images[..., np.newaxis]
    interpreter = Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], batch.shape)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    fed = load_runner().quantize(batch, detail)
    scale, zero_point = detail["quantization"]
    # In float32, as the runner (and TFLite's own QUANTIZE kernel) computes it: float64 would
    # round ~2 % of these pixels the other way, where x / scale lands next to .5.
    exact = np.round(batch.astype(np.float32) / np.float32(scale) + np.float32(zero_point))
    np.testing.assert_array_equal(fed, np.clip(exact, -128, 127))
    interpreter.set_tensor(detail["index"], fed)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    raw = interpreter.get_tensor(out["index"]).astype(np.float32)
    # Same batch, same tensor in: the very same output bits.
    np.testing.assert_array_equal(
        open_model(path).probabilities(images, len(images)),
        (raw - out["quantization"][1]) * np.float32(out["quantization"][0]))
    # board_predictions is the runner's own predict, one invoke per image
    single = Interpreter(model_path=str(path))
    single.allocate_tensors()
    assert open_model(path).board_predictions(images).tolist() == \
        load_runner().predict(single, images)


def test_io_contract_states_what_an_application_feeds(tiny_models):
    from ai_edge_litert.interpreter import Interpreter

    for key, path in tiny_models.items():
        contract = open_model(path).io_contract()
        details = Interpreter(model_path=str(path))
        for side, detail in (("input", details.get_input_details()[0]),
                             ("output", details.get_output_details()[0])):
            tensor = contract[side]
            assert tensor["name"] == detail["name"]
            assert tensor["dtype"] == np.dtype(detail["dtype"]).name
            assert tensor["shape"] == [int(d) for d in detail["shape"]]
            if key.endswith("int8"):
                assert (tensor["scale"], tensor["zero_point"]) == (
                    float(detail["quantization"][0]), int(detail["quantization"][1]))
            else:
                assert "scale" not in tensor and "zero_point" not in tensor
        assert contract["input"]["shape"] == [1, 28, 28, 1]


def test_float_tensors_and_ops_describe_the_graph(tiny_models):
    int8 = open_model(tiny_models["tiny_cnn/int8"])
    assert int8.float_tensors() == {}
    floats = open_model(tiny_models["tiny_cnn/float32"]).float_tensors()
    assert floats and set(floats.values()) == {"float32"}
    content = open_model_content(tiny_models["tiny_cnn/float32"].read_bytes(), "tflite")
    assert content.float_tensors() == floats and content.path is None
    ops = [op["op"] for op in int8.ops()]
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    fc = next(op for op in int8.ops() if op["op"] == "FULLY_CONNECTED")
    assert fc["inputs"][1][0] == 10 or fc["outputs"][0][-1] != 10  # weights are out x in


def test_threads_are_passed_to_the_runtime(tiny_models, images):
    one = open_model(tiny_models["tiny_mlp/float32"], threads=1).probabilities(images, 40)
    two = open_model(tiny_models["tiny_mlp/float32"], threads=2).probabilities(images, 40)
    np.testing.assert_allclose(one, two, atol=1e-5)


def test_the_backend_follows_the_format_and_an_unknown_one_is_named(tmp_path, tiny_models):
    assert isinstance(open_model(tiny_models["tiny_cnn/int8"]), LiteRTModel)
    assert BACKENDS == {"tflite": LiteRTModel, "onnx": OnnxRuntimeModel}
    with pytest.raises(ValueError, match=r"m\.pt: no variant has the suffix '\.pt'"):
        open_model(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"^no host runtime for the 'pt' format \(have: onnx, "
                                         r"tflite\)$"):
        open_model_content(b"", "pt")


def test_a_truncated_model_names_the_task_that_rebuilds_it(tiny_models, tmp_path):
    from pipeline.core.runtimes import DamagedModelError, open_model

    good = tiny_models["tiny_cnn/int8"].read_bytes()
    cut = tmp_path / "mnist_cnn_int8.tflite"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedModelError) as err:
        open_model(cut)
    assert str(err.value) == (
        f"{cut}: cannot be read as a tflite model (The model is not a valid Flatbuffer buffer; "
        f"{len(good) // 2:,} bytes - truncated or overwritten?): rebuild it with "
        "`doit forget convert:mnist_cnn && doit convert:mnist_cnn`")
    assert err.value.__cause__ is None and err.value.__suppress_context__


# --- ONNX Runtime ------------------------------------------------------------------------

ONNX_KEYS = [f"tiny_{kind}/{variant}" for kind in ("cnn", "mlp")
             for variant in ("onnx_float32", "onnx_int8", "onnx_int8_tflite")]


def onnx_graph_io(path):
    """Input and output (name, numpy dtype name, shape) read with onnx.load alone."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph
    return [(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name,
             [d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (graph.input[0], graph.output[0])]


def ort_by_hand(path, images, quantization=None):
    """ONNX Runtime driven directly, one image per run; an int8 input quantized here with
    numpy in float32 (q = clip(round(x / scale + zero_point))), an int8 output dequantized."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    rows = []
    for image in images:
        x = image.reshape(1, 28, 28, 1).astype(np.float32)
        if inp.type == "tensor(int8)":
            (scale, zero_point), _ = quantization
            x = np.clip(np.round(x / np.float32(scale) + np.float32(zero_point)), -128, 127)
            x = x.astype(np.int8)
        y = session.run([out.name], {inp.name: x})[0][0].astype(np.float32)
        if out.type == "tensor(int8)":
            _, (scale, zero_point) = quantization
            y = (y - zero_point) * np.float32(scale)
        rows.append(y)
    return np.array(rows)


def tflite_quantization(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return (interpreter.get_input_details()[0]["quantization"],
            interpreter.get_output_details()[0]["quantization"])


@pytest.mark.parametrize("key", ONNX_KEYS)
def test_onnx_probabilities_equal_ort_driven_by_hand(tiny_models, tiny_onnx_models, images, key):
    path = tiny_onnx_models[key]
    model = open_model(path)
    assert isinstance(model, OnnxRuntimeModel) and model.format == "onnx"
    # The translated model's scale and zero point are the .tflite's (LiteRT reads them).
    quantization = (tflite_quantization(tiny_models[key.replace("onnx_int8_tflite", "int8")])
                    if key.endswith("tflite") else None)
    # batch_size 16 over 40 images: the models' static batch of 1 takes one at a time
    probs = model.probabilities(images, 16)
    assert probs.shape == (40, 10) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs, ort_by_hand(path, images, quantization))
    np.testing.assert_array_equal(model.predict(images, 16), np.argmax(probs, axis=1))
    np.testing.assert_array_equal(model.board_predictions(images), np.argmax(probs, axis=1))


def test_onnx_board_predictions_are_the_runners_own_loop(tiny_onnx_models, images):
    """The runner's predict drives the session (through the interpreter calls it makes), so
    a change of the runner's quantize changes the host's board predictions too."""
    model = open_model(tiny_onnx_models["tiny_cnn/onnx_int8_tflite"])
    runner = load_runner()
    original = runner.quantize
    try:
        # every image fed as all-zero input: one answer for all 40
        runner.quantize = lambda image, detail: np.zeros((1, 28, 28, 1), detail["dtype"])
        assert len(set(model.board_predictions(images).tolist())) == 1
        assert len(set(model.probabilities(images, 1).argmax(axis=1).tolist())) == 1
    finally:
        runner.quantize = original
    assert len(set(model.board_predictions(images).tolist())) > 1


@pytest.mark.parametrize("key", ONNX_KEYS)
def test_onnx_io_contract_is_the_graphs(tiny_models, tiny_onnx_models, key):
    contract = open_model(tiny_onnx_models[key]).io_contract()
    graph_in, graph_out = onnx_graph_io(tiny_onnx_models[key])
    for side, (name, dtype, shape) in (("input", graph_in), ("output", graph_out)):
        tensor = contract[side]
        assert (tensor["name"], tensor["dtype"], tensor["shape"]) == (name, dtype, shape)
    assert contract["input"]["shape"] == [1, 28, 28, 1]  # static batch of 1
    if key.endswith("tflite"):
        (in_scale, in_zp), (out_scale, out_zp) = tflite_quantization(
            tiny_models[key.replace("onnx_int8_tflite", "int8")])
        assert (contract["input"]["scale"], contract["input"]["zero_point"]) == (
            pytest.approx(in_scale, rel=1e-7), in_zp)
        assert (contract["output"]["scale"], contract["output"]["zero_point"]) == (
            pytest.approx(out_scale, rel=1e-7), out_zp)
        assert contract["input"]["dtype"] == "int8" == contract["output"]["dtype"]
    else:  # float I/O: the QDQ model quantizes inside
        assert "scale" not in contract["input"] and "scale" not in contract["output"]
        assert contract["input"]["dtype"] == "float32"


def test_an_integer_onnx_input_without_its_quantization_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.INT8, [1, 28, 28, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 28, 28, 1])])
    path = tmp_path / "m_onnx_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="pixels: an integer graph input with no per-tensor "
                                         "DequantizeLinear"):
        open_model(path)


def cast_model(tmp_path, **metadata):
    """int8 pixels -> Cast -> float: no DequantizeLinear states the input's quantization."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.INT8, [1, 28, 28, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 28, 28, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, metadata)
    path = tmp_path / "m_onnx_int8.onnx"
    onnx.save(model, path)
    return path


def test_an_integer_onnx_inputs_quantization_from_its_metadata(tmp_path, images):
    """The metadata states it where no DequantizeLinear does: the runner's quantize of the
    pixels with that scale and zero point, which the Cast hands back as floats."""
    model = open_model(cast_model(tmp_path, input_quantization="[0.5, -100]"))
    contract = model.io_contract()["input"]
    assert (contract["scale"], contract["zero_point"]) == (0.5, -100)
    expected = np.clip(np.rint(images[:2] / np.float32(0.5)) - 100, -128, 127)
    assert np.array_equal(model.probabilities(images[:2], 1)[..., 0], expected)


def test_unreadable_quantization_metadata_is_one_line_naming_the_file(tmp_path):
    path = cast_model(tmp_path, input_quantization="0.5")
    with pytest.raises(UnsupportedModelError) as caught:
        open_model(path)
    assert str(caught.value) == (f"{path}: the model's metadata input_quantization is '0.5', "
                                 "not [scale, zero_point]: rebuild the model")


def test_onnx_threads_float_tensors_and_ops(tiny_onnx_models, images):
    path = tiny_onnx_models["tiny_cnn/onnx_int8"]
    two = open_model(path, threads=2)
    assert two.session.get_session_options().intra_op_num_threads == 2
    assert two.session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(two.probabilities(images, 1),
                                  open_model(path, threads=1).probabilities(images, 1))
    content = open_model_content(path.read_bytes(), "onnx")
    assert content.path is None and content.io_contract() == two.io_contract()
    ops = [op["op"] for op in two.ops()]
    assert ops.count("Conv") == 3 and ops.count("MatMul") == 2 and "QuantizeLinear" in ops
    conv = next(op for op in two.ops() if op["op"] == "Conv")
    assert conv["outputs"] == [(1, 4, 26, 26)]  # NCHW inside (conv1: 4 filters), inferred
    floats = two.float_tensors()
    assert floats["image"] == "float32" and set(floats.values()) == {"float32"}
    translated = open_model(tiny_onnx_models["tiny_cnn/onnx_int8_tflite"]).float_tensors()
    assert "serving_default_image:0" not in translated  # the int8 graph input


NOTICE_SCRIPT = """
import sys
import numpy as np
from pipeline.core.console import quiet_third_party
quiet_third_party(verbose=sys.argv[2] == "verbose")
from pipeline.core.runtimes import open_model
model = open_model(sys.argv[1])
images = np.zeros((3, 28, 28), np.uint8)
model.board_predictions(images)
model.probabilities(images, 2)
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_opening_a_tflite_model_prints_nothing_unless_verbose(tiny_models, mode):
    """The XNNPACK notice comes from C++ once per process, at the first allocation: a fresh
    process shows whether it reaches the console (bench of the virtual K1 printed it)."""
    done = subprocess.run([sys.executable, "-c", NOTICE_SCRIPT, str(tiny_models["tiny_cnn/int8"]),
                           mode], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "PIPELINE_VERBOSE"})
    assert done.returncode == 0, done.stderr
    notice = "Created TensorFlow Lite XNNPACK delegate"
    if mode == "quiet":
        assert done.stdout + done.stderr == ""
    else:  # the check can see the notice at all
        assert notice in done.stdout + done.stderr


# --- the seam's edges on hand-made inputs -------------------------------------------------


def hand_made_onnx() -> bytes:
    """x (batch N symbolic) -> Relu -> Reshape(s) -> Clip(no min, max 6); u (no shape) ->
    Relu: a symbolic dimension, a tensor of unknown shape, an omitted optional input and a
    scalar constant, as ONNX writes them."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["u"], ["v"]),
         helper.make_node("Reshape", ["y", "s"], ["r"]),
         helper.make_node("Clip", ["r", "", "max"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(6.0, np.float32), "max")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_onnx_ops_give_unknown_dimensions_as_minus_1_and_unknown_shapes_as_none():
    model = open_model_content(hand_made_onnx(), "onnx")
    assert model.ops() == [
        {"op": "Relu", "inputs": [(-1, 4)], "outputs": [(-1, 4)]},
        {"op": "Relu", "inputs": [None], "outputs": [None]},
        {"op": "Reshape", "inputs": [(-1, 4), (2,)], "outputs": [(-1, -1)]},
        {"op": "Clip", "inputs": [(-1, -1), None, ()], "outputs": [(-1, -1)]}]
    assert model.float_tensors() == dict.fromkeys(["max", "x", "u", "y", "v", "r", "z"],
                                                  "float32")


def test_threads_reach_onnx_runtimes_session_and_none_is_its_default():
    assert open_model_content(hand_made_onnx(), "onnx", threads=3).session \
        .get_session_options().intra_op_num_threads == 3
    assert open_model_content(hand_made_onnx(), "onnx").session \
        .get_session_options().intra_op_num_threads == 0


@pytest.mark.parametrize("backend", [LiteRTModel, OnnxRuntimeModel])
def test_a_backend_takes_exactly_one_of_path_and_content(backend, tiny_models,
                                                         tiny_onnx_models):
    path = (tiny_models["tiny_mlp/int8"] if backend is LiteRTModel
            else tiny_onnx_models["tiny_mlp/onnx_int8"])
    for kwargs in ({}, {"path": path, "content": path.read_bytes()}):
        with pytest.raises(ValueError, match="^give exactly one of path and content$"):
            backend(**kwargs)
    assert backend(path=str(path)).path == path  # a str is taken as a Path
    assert backend(content=path.read_bytes()).path is None


def test_an_integer_tensors_contract_says_how_to_read_it(tiny_models):
    contract = open_model(tiny_models["tiny_mlp/int8"]).io_contract()
    assert contract["output"]["real_value"] == "(q - zero_point) * scale"
    assert "real_value" not in open_model(tiny_models["tiny_mlp/float32"]).io_contract()["output"]


def test_a_file_whose_name_no_task_writes_gets_the_general_hint(tmp_path):
    assert rebuild_hint(tmp_path / "mine.tflite") == \
        "rebuild it with the task that wrote it (`doit list` names them)"
    assert rebuild_hint(tmp_path / "b_onnx_int8_tflite.onnx") == \
        "rebuild it with `doit forget translate_onnx:b && doit translate_onnx:b`"


def quantization_graph(nodes, initializers):
    from onnx import TensorProto, helper, numpy_helper

    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1])],
        initializer=[numpy_helper.from_array(np.array(v), k) for k, v in initializers.items()])


SCALARS = {"s": np.float32(0.5), "z": np.int8(-3), "s1": np.float32([0.25]),
           "z1": np.int8([7]), "sv": np.float32([0.5, 0.25]), "zv": np.int8([0, 0])}


def test_an_inputs_quantization_is_its_dequantizelinears_through_layout_ops():
    from onnx import helper

    n = helper.make_node
    chain = [n("Reshape", ["x", "shape"], ["a"]), n("Transpose", ["a"], ["b"]),
             n("DequantizeLinear", ["b", "s", "z"], ["c"]), n("Relu", ["c"], ["d"]),
             n("QuantizeLinear", ["d", "s1", "z1"], ["e"]), n("Identity", ["e"], ["y"])]
    graph = quantization_graph(chain, SCALARS)
    assert onnx_quantization(graph, "x", "input") == (0.5, -3)
    # An output's is the QuantizeLinear that writes it, back through layout ops; a
    # one-element (1,) scale and zero point are per-tensor too.
    assert onnx_quantization(graph, "y", "output") == (0.25, 7)
    # Not through any other op.
    assert onnx_quantization(graph, "d", "input") is None
    assert onnx_quantization(graph, "c", "output") is None


@pytest.mark.parametrize("dq, why", [
    (["b", "sv", "zv"], "per channel"),
    (["b", "s"], "no zero point"),
    (["b", "scale_made_at_run_time", "z"], "a scale no initializer holds"),
])
def test_an_input_without_a_per_tensor_dequantizelinear_has_none(dq, why):
    from onnx import helper

    n = helper.make_node
    graph = quantization_graph([n("Identity", ["x"], ["b"]), n("DequantizeLinear", dq, ["y"])],
                               SCALARS)
    assert onnx_quantization(graph, "x", "input") is None, why


def test_an_input_read_twice_or_never_and_an_output_nobody_writes_have_none():
    from onnx import helper

    n = helper.make_node
    twice = quantization_graph([n("DequantizeLinear", ["x", "s", "z"], ["a"]),
                                n("DequantizeLinear", ["x", "s", "z"], ["y"])], SCALARS)
    assert onnx_quantization(twice, "x", "input") is None
    assert onnx_quantization(twice, "unread", "input") is None
    assert onnx_quantization(twice, "nobody_writes", "output") is None
    # A loop of layout ops ends (each tensor is visited once).
    loop = quantization_graph([n("Identity", ["x"], ["a"]), n("Identity", ["a"], ["x"])],
                              SCALARS)
    assert onnx_quantization(loop, "x", "input") is None
    assert onnx_quantization(loop, "x", "output") is None


def test_a_symbolic_batch_runs_batch_size_images_at_a_time():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_model = open_model_content(model.SerializeToString(), "onnx")
    images = np.array([[-1, 2, 0, 1], [3, -4, 5, 0], [0, 0, 1, 0], [1, 1, 1, 9]], np.float32)
    assert onnx_model.predict(images, 2).ravel().tolist() == [1, 2, 2, 3]
    with pytest.raises(ValueError, match=r"^None: a static batch of 3 cannot take 4 images$"):
        onnx_model.predict(images, 3)  # 4 images are no whole number of batches of 3
    assert onnx_model.io_contract()["input"]["shape"] == [-1, 4, 1]  # N reads -1


def test_the_translated_models_metadata_states_its_quantization_and_the_graph_is_the_fallback(
        tiny_models, tiny_onnx_models):
    import json

    import onnx

    litert = open_model(tiny_models["tiny_mlp/int8"]).io_contract()
    proto = onnx.load(str(tiny_onnx_models["tiny_mlp/onnx_int8_tflite"]))
    stated = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert stated["output_quantization"] == [litert["output"]["scale"],
                                             litert["output"]["zero_point"]]
    # Without its metadata (a model built before it), the output's QuantizeLinear says the
    # same.
    del proto.metadata_props[:]
    plain = open_model_content(proto.SerializeToString(), "onnx").io_contract()
    assert (plain["output"]["scale"], plain["output"]["zero_point"]) == (
        litert["output"]["scale"], litert["output"]["zero_point"])
    # With metadata, the metadata wins over the graph, on both sides.
    moved = onnx.load(str(tiny_onnx_models["tiny_mlp/onnx_int8_tflite"]))
    for prop in moved.metadata_props:
        scale, zero_point = json.loads(prop.value)
        prop.value = json.dumps([scale * 2, zero_point + 1])
    contract = open_model_content(moved.SerializeToString(), "onnx").io_contract()
    for side in ("input", "output"):
        assert (contract[side]["scale"], contract[side]["zero_point"]) == (
            litert[side]["scale"] * 2, litert[side]["zero_point"] + 1)
