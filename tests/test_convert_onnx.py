"""The ONNX converters on real models: Keras export, ONNX Runtime's QDQ quantization, the
int8 .tflite translated with tf2onnx and checked against LiteRT, reproducible bytes."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.stages.convert_onnx import (OnnxConvertError, check_same_outputs, export_float,
                                   quantize_int8, run, run_translate, translate_tflite)
from pipeline.core.params import ConvertParams
from tests.conftest import REPO, synthetic_images


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def litert_raw(path, images):
    """The .tflite's raw integer outputs under LiteRT, one image per invoke, with the input
    quantized here in float32: q = clip(round(x / scale + zero_point))."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    rows = []
    for image in images:
        x = np.round(image.reshape(1, 28, 28, 1).astype(np.float32) / np.float32(scale)
                     + np.float32(zero_point))
        interpreter.set_tensor(inp["index"], np.clip(x, -128, 127).astype(np.int8))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.int32))
    return np.array(rows), (scale, zero_point)


def ort_raw(content, images, quantization):
    import onnxruntime as ort

    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scale, zero_point = quantization
    rows = []
    for image in images:
        x = np.round(image.reshape(1, 28, 28, 1).astype(np.float32) / np.float32(scale)
                     + np.float32(zero_point))
        rows.append(session.run(None, {name: np.clip(x, -128, 127).astype(np.int8)})[0][0])
    return np.array(rows).astype(np.int32)


@pytest.fixture(scope="module")
def test_images():
    return synthetic_images(np.arange(200) % 10, 11)


@pytest.fixture(scope="module")
def seeded_int8(tmp_path_factory):
    """Int8 .tflite files of seeded untrained networks. Seeded: whether ORT's requantization
    rounds exactly like LiteRT's depends on the weights (an unlucky model differs by a step
    on a few images, as the smoke models do: seed 0's differs in 1 of 2,000 outputs here),
    so the bit-for-bit case needs fixed ones; seeds 1 and 2 are bit for bit."""
    import keras

    from pipeline.stages.convert import convert
    from pipeline.stages.train import build_model

    out = tmp_path_factory.mktemp("seeded")
    paths = {}
    for kind in ("cnn", "mlp"):
        keras.utils.set_random_seed(1)
        path = out / f"seeded_{kind}_int8.tflite"
        path.write_bytes(convert(build_model(kind, (28, 28), 10), "int8",
                                 synthetic_images(np.arange(50) % 10, 3)))
        paths[kind] = path
    return paths


def test_the_translation_equals_litert_bit_for_bit(seeded_int8, test_images):
    for kind in ("cnn", "mlp"):
        tflite = seeded_int8[kind]
        content = translate_tflite(tflite)
        expected, quantization = litert_raw(tflite, test_images)
        np.testing.assert_array_equal(ort_raw(content, test_images, quantization), expected)
        assert check_same_outputs(content, tflite, test_images, "t.onnx") == (200, 0)


def perturbed(content: bytes, steps: int, column: int = 0) -> bytes:
    """The translated model with the output layer's int8 weights of class `column` moved by
    `steps` where they have room: a model that is almost, not quite, the .tflite."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(content)
    # The last DequantizeLinear of a weight initializer feeds the classes layer.
    initializers = {t.name: t for t in model.graph.initializer}
    node = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in initializers and len(initializers[n.input[0]].dims) == 2][-1]
    tensor = initializers[node.input[0]]
    weights = numpy_helper.to_array(tensor).astype(np.int32)
    weights[:, column] = np.clip(weights[:, column] + steps, -127, 127)
    tensor.CopyFrom(numpy_helper.from_array(weights.astype(np.int8), tensor.name))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory):
    """The CNN trained briefly on the learnable synthetic images: confident outputs (an
    untrained network's are near uniform, ties everywhere, and any changed output step can
    change its top-1)."""
    import keras

    from pipeline.stages.convert import convert
    from pipeline.stages.train import build_model

    keras.utils.set_random_seed(3)
    labels = np.arange(600) % 10
    model = build_model("cnn", (28, 28), 10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy")
    model.fit(synthetic_images(labels, 4)[..., None].astype(np.float32), labels, epochs=2,
              batch_size=60, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "trained_cnn_int8.tflite"
    path.write_bytes(convert(model, "int8", synthetic_images(np.arange(50) % 10, 3)))
    return path


def test_a_different_model_is_caught_naming_the_first_differing_image(trained_int8,
                                                                      test_images):
    tflite = trained_int8
    expected, quantization = litert_raw(tflite, test_images)
    wrong = perturbed(translate_tflite(tflite), 40, 9)
    got = ort_raw(wrong, test_images, quantization)
    # The step gate alone: the images whose top-1 the change leaves alone.
    same_top1 = got.argmax(axis=1) == expected.argmax(axis=1)
    test_images, got, expected = test_images[same_top1], got[same_top1], expected[same_top1]
    steps = np.abs(got - expected).max(axis=1)
    first, worst = int(np.flatnonzero(steps)[0]), int(steps.max())
    assert worst > 1  # the test needs a model that really differs
    identical = int((steps == 0).sum())
    with pytest.raises(OnnxConvertError, match=(
            rf"^m\.onnx: ONNX Runtime's output differs from LiteRT's for trained_cnn_int8\.tflite "
            rf"by {steps[first]} output steps on test image {first} \(more than "
            rf"convert\.onnx_tflite_max_steps = 0; {np.count_nonzero(steps)} of "
            rf"{len(test_images)} images "
            rf"beyond it, at most {worst} steps, {identical} bit-identical\)")):
        check_same_outputs(wrong, tflite, test_images, "m.onnx")
    # The tolerance at its boundary: `worst` steps pass, one fewer does not.
    assert check_same_outputs(wrong, tflite, test_images, "m.onnx", worst) == (identical, worst)
    with pytest.raises(OnnxConvertError, match=f"more than convert.onnx_tflite_max_steps = "
                                               f"{worst - 1}"):
        check_same_outputs(wrong, tflite, test_images, "m.onnx", worst - 1)


def test_a_changed_top1_fails_whatever_the_step_tolerance(trained_int8, test_images):
    tflite = trained_int8
    expected, quantization = litert_raw(tflite, test_images)
    wrong = perturbed(translate_tflite(tflite), 127, 0)
    got = ort_raw(wrong, test_images, quantization)
    changed = np.flatnonzero(got.argmax(axis=1) != expected.argmax(axis=1))
    assert changed.size  # raising class 0 makes it first somewhere
    identical = int((np.abs(got - expected).max(axis=1) == 0).sum())
    with pytest.raises(OnnxConvertError, match=(
            rf"^m\.onnx: ONNX Runtime's top-1 class differs from LiteRT's for "
            rf"trained_cnn_int8\.tflite on test image {changed[0]} \({changed.size} of 200 images; "
            rf"{identical} bit-identical")):
        check_same_outputs(wrong, tflite, test_images, "m.onnx", 255)


def test_another_networks_translation_is_caught(tiny_models, test_images):
    mlp = translate_tflite(tiny_models["tiny_mlp/int8"])
    with pytest.raises(OnnxConvertError, match=r"^m\.onnx: (its output is .* the \.tflite's|"
                                               r"ONNX Runtime's top-1 class differs|"
                                               r"ONNX Runtime's output differs)"):
        check_same_outputs(mlp, tiny_models["tiny_cnn/int8"], test_images, "m.onnx")


def test_the_translation_has_the_tflites_static_shape_and_opset(tiny_models):
    import onnx

    model = onnx.load_from_string(translate_tflite(tiny_models["tiny_cnn/int8"]))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.output[0])]
    assert dims == [[1, 28, 28, 1], [1, 10]]
    assert not any(d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim)


def test_float_export_is_static_batch_one_and_equals_keras(test_images):
    import keras
    import onnx
    import onnxruntime as ort

    from pipeline.stages.train import build_model

    keras.utils.set_random_seed(3)
    model = build_model("cnn", (28, 28), 10)
    content = export_float(model)
    graph = onnx.load_from_string(content).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 28, 28, 1]
    # a static batch: none of the Shape/Slice/Concat a dynamic one adds
    assert not {"Shape", "Slice", "Concat"} & {n.op_type for n in graph.node}
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    x = test_images[:20, ..., None].astype(np.float32)
    got = np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(20)])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_same_inputs_give_the_same_bytes_in_any_process(tiny_models):
    """tf2onnx names nodes from a process-wide counter in an order that depends on string
    hashes: a conversion after another one, or in a process with another hash seed, must
    still give the same bytes."""
    from pipeline.stages.train import build_model

    tflite = tiny_models["tiny_cnn/int8"]
    first = translate_tflite(tflite)
    translate_tflite(tiny_models["tiny_mlp/int8"])  # moves tf2onnx's counter on
    assert sha256(translate_tflite(tflite)) == sha256(first)
    model = build_model("mlp", (28, 28), 10)
    exported = export_float(model)
    assert sha256(export_float(model)) == sha256(exported)
    representative = synthetic_images(np.arange(30) % 10, 5)
    assert sha256(quantize_int8(exported, representative)) == \
        sha256(quantize_int8(exported, representative))
    code = ("import sys, hashlib; from pipeline.stages.convert_onnx import translate_tflite; "
            "print(hashlib.sha256(translate_tflite(sys.argv[1])).hexdigest())")
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", code, str(tflite)], cwd=REPO,
                              env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-1] == sha256(first)


@pytest.fixture(scope="module")
def calibration_data(tmp_path_factory):
    """A trained-enough MLP and a dataset whose training images each have their own maximum
    pixel value: a calibration range then tells which images calibrated it."""
    import keras

    from pipeline.stages.preprocess import save_arrays
    from pipeline.stages.train import build_model, save_model

    out = tmp_path_factory.mktemp("calibration")
    labels = np.arange(400) % 10
    images = synthetic_images(labels, 9)
    for i in range(len(images)):  # the bright bar at 100..249, distinct per 150 images
        images[i][images[i] == 250] = 100 + i % 150
    save_arrays(out / "d.npz", {"x_train": images, "y_train": labels,
                                "x_test": images[:50], "y_test": labels[:50]})
    keras.utils.set_random_seed(0)
    model = build_model("mlp", (28, 28), 10)
    save_model(model, out / "b.h5")
    return out


def onnx_input_scale(path):
    """The scale of the QuantizeLinear that reads the graph input, read with onnx alone."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] == model.graph.input[0].name)
    return float(initializers[node.input[1]])


def test_onnx_int8_is_calibrated_on_the_int8_tflites_images(calibration_data):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.stages import convert

    params = ConvertParams(representative_samples=20, seed=7, int8_io="int8",
                           extra_variants=(), onnx=True, onnx_tflite_max_steps=0)
    out = calibration_data
    sizes = run(out / "b.h5", out / "d.npz", params, "b", out)
    assert set(sizes) == {"onnx_float32", "onnx_int8"}
    for variant, size in sizes.items():
        assert (out / f"b_{variant}.onnx").stat().st_size == size
    assert not list(out.glob(".*partial*"))
    convert.run(out / "b.h5", out / "d.npz", params, "b", out)
    interpreter = Interpreter(model_path=str(out / "b_int8.tflite"))
    tflite_scale = interpreter.get_input_details()[0]["quantization"][0]
    # Both ranges are the largest pixel of the same 20 images, over 255 int8 steps.
    assert onnx_input_scale(out / "b_onnx_int8.onnx") == pytest.approx(tflite_scale, rel=1e-6)
    # Another draw of 20 has another maximum: the check can tell the images apart.
    other = ConvertParams(**{**vars(params), "seed": 8})
    run(out / "b.h5", out / "d.npz", other, "b", out)
    assert onnx_input_scale(out / "b_onnx_int8.onnx") != pytest.approx(tflite_scale, rel=1e-3)


def test_run_translate_writes_only_a_model_that_passed(calibration_data, capsys):
    out = calibration_data
    from pipeline.stages import convert

    params = ConvertParams(representative_samples=20, seed=7, int8_io="int8",
                           extra_variants=(), onnx=True, onnx_tflite_max_steps=0)
    convert.run(out / "b.h5", out / "d.npz", params, "b", out)
    size = run_translate(out / "b_int8.tflite", out / "d.npz", "b", out)
    assert (out / "b_onnx_int8_tflite.onnx").stat().st_size == size
    assert ("b_onnx_int8_tflite.onnx: outputs equal LiteRT's bit for bit on 50 of 50 test "
            "images") in capsys.readouterr().out
    assert not list(out.glob(".*partial*"))


def test_an_unknown_calibration_method_is_one_line_naming_the_key(tiny_onnx_models):
    content = tiny_onnx_models["tiny_mlp/onnx_float32"].read_bytes()
    with pytest.raises(OnnxConvertError, match=r"^convert\.onnx_calibration: unknown method "
                                               r"'Histogram'; choose from \['MinMax', "
                                               r"'Entropy', 'Percentile'\]$"):
        quantize_int8(content, synthetic_images(np.arange(10), 1), "Histogram")


def test_each_calibration_method_gives_reproducible_bytes_of_its_own(tiny_onnx_models):
    content = tiny_onnx_models["tiny_cnn/onnx_float32"].read_bytes()
    representative = synthetic_images(np.arange(30) % 10, 5)
    made = {(method, pre): quantize_int8(content, representative, method, pre)
            for method in ("MinMax", "Entropy", "Percentile") for pre in (False, True)}
    assert len({sha256(c) for c in made.values()}) >= 3  # each method its own ranges
    assert sha256(quantize_int8(content, representative, "Entropy", True)) == \
        sha256(made["Entropy", True])


def test_a_translation_that_fails_its_check_leaves_no_older_model_nor_its_card(
        calibration_data):
    # What a translation made under a looser convert.onnx_tflite_max_steps left: the model,
    # and the card that describes it. A limit below every difference (-1: even identical
    # outputs are "beyond" it) fails the check whatever the model, as a tightened one does.
    from pipeline.stages import convert

    out = calibration_data
    params = ConvertParams(representative_samples=20, seed=7, int8_io="int8",
                           extra_variants=(), onnx=True, onnx_tflite_max_steps=0)
    convert.run(out / "b.h5", out / "d.npz", params, "b", out)
    older = {name: out / name for name in ("b_onnx_int8_tflite.onnx", "model_card.md",
                                           "model_card.json")}
    for path in older.values():
        path.write_text("made under the looser limit")
    with pytest.raises(OnnxConvertError, match="more than convert.onnx_tflite_max_steps = -1"):
        run_translate(out / "b_int8.tflite", out / "d.npz", "b", out, -1)
    assert [name for name, path in older.items() if path.exists()] == []
    assert (out / "b_int8.tflite").exists()  # the translation's input stays


def test_an_unknown_node_to_exclude_is_one_line_listing_the_valid_names(tiny_onnx_models):
    import onnx

    content = tiny_onnx_models["tiny_mlp/onnx_float32"].read_bytes()
    names = [n.name for n in onnx.load_from_string(content).graph.node]
    with pytest.raises(OnnxConvertError) as caught:
        quantize_int8(content, synthetic_images(np.arange(10), 1),
                      nodes_to_exclude=[names[-2], "dense/nope"])
    message = str(caught.value)
    assert message == (f"nodes_to_exclude: no node named ['dense/nope'] in the float model; "
                       f"valid names (reports/<build>/layers_onnx.md names them): {names}")
    assert "\n" not in message


def optimized_graph(path, tmp_path):
    """ORT's optimized graph of the model at `path`, under the pipeline's session options
    (the runner's disabled optimizers)."""
    import onnx
    import onnxruntime as ort

    from pipeline import load_runner

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(load_runner().ORT_DISABLED_OPTIMIZERS))
    return onnx.load(str(tmp_path / "optimized.onnx")).graph


def test_a_build_keeps_its_nodes_to_exclude_float_in_onnx_int8(smoke_project, tmp_path):
    """A real build: the smoke project with nodes_to_exclude naming the Gemm the ONNX layer
    report ranks worst among the nodes with weights. onnx_int8 reads that node's weight as a
    float constant, ONNX Runtime runs it as a float Gemm, and layers_onnx says so."""
    import json
    import shutil

    import onnx

    from tests.conftest import executed_tasks, run_doit
    from tests.project import edit_params

    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    models, reports = (project / "artifacts" / d / "mnist_cnn" for d in ("models", "reports"))
    int8 = models / "mnist_cnn_onnx_int8.onnx"
    before = json.loads((reports / "layers_onnx.json").read_text())
    assert before["float_nodes"] == []
    node = next(r["node"] for r in before["rows"] if "Gemm" in r["node"])
    ops_before = [n.op_type for n in optimized_graph(int8, tmp_path).node]
    edit_params(project / "params" / "smoke.toml", builds=[
        {"name": "mnist_cnn", "dataset": "mnist", "model": "cnn", "nodes_to_exclude": [node]},
        {"name": "mnist_mlp", "dataset": "mnist", "model": "mlp"}])
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = executed_tasks(proc.stdout)
    assert {"convert_onnx:mnist_cnn", "layers:mnist_cnn", "evaluate:mnist_cnn"} <= ran
    assert not ran & {"convert:mnist_cnn", "convert_onnx:mnist_mlp", "train:mnist_cnn"}
    graph = onnx.load(str(int8)).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    [gemm] = [n for n in graph.node if n.name == node]
    assert gemm.op_type == "Gemm" and gemm.input[1] in floats  # no DequantizeLinear
    ops = [n.op_type for n in optimized_graph(int8, tmp_path).node]
    assert ops.count("QGemm") == ops_before.count("QGemm") - 1
    assert ops.count("Gemm") == ops_before.count("Gemm") + 1
    after = json.loads((reports / "layers_onnx.json").read_text())
    assert after["float_nodes"] == [{"op": "Gemm", "node": node}]
    assert (f"Kept in float (the build's `nodes_to_exclude`): Gemm `{node}`."
            in (reports / "layers_onnx.md").read_text())
    # A name the model does not have: the build stops on one line naming the key.
    edit_params(project / "params" / "smoke.toml", builds=[
        {"name": "mnist_cnn", "dataset": "mnist", "model": "cnn",
         "nodes_to_exclude": ["cnn_1/nope"]}])
    failed = run_doit(project, "convert_onnx")
    assert failed.returncode != 0
    assert ("builds[mnist_cnn].nodes_to_exclude: no node named ['cnn_1/nope'] in the float "
            "model; valid names" in failed.stdout + failed.stderr)
    assert "Traceback" not in failed.stdout + failed.stderr
