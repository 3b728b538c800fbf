"""The ONNX converters on real models: Keras export, ONNX Runtime's QDQ quantization, the
int8 .tflite translated with tf2onnx and checked against LiteRT, reproducible bytes."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.stages.convert_onnx import (OnnxConvertError, check_same_outputs,
                                          compare_outputs, export_float, quantize_int8, run,
                                          run_translate, translate_tflite)
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
    for pre in (False, True):
        # Percentile clips the ranges; Entropy keeps MinMax's, as params.py says: ORT's
        # quantize_static gives the entropy search 128 histogram bins for 128 quantized
        # bins, so the full range is its only candidate. If ORT changes that, this fails
        # and the params text must change.
        assert made["Percentile", pre] != made["MinMax", pre]
        assert made["Entropy", pre] == made["MinMax", pre]
    assert made["MinMax", True] != made["MinMax", False]  # pre-processing changes the graph
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


def test_an_unknown_node_after_ort_preprocessing_says_so(tiny_onnx_models):
    content = tiny_onnx_models["tiny_mlp/onnx_float32"].read_bytes()
    with pytest.raises(OnnxConvertError) as caught:
        quantize_int8(content, synthetic_images(np.arange(10), 1), preprocess=True,
                      nodes_to_exclude=["dense/nope"])
    assert str(caught.value).startswith(
        "nodes_to_exclude: no node named ['dense/nope'] in the float model after "
        "quant_pre_process; valid names (reports/<build>/layers_onnx.md names them): [")


def test_the_translations_default_limit_is_bit_for_bit():
    # The committed models translate bit for bit, so no run can tell 0 from 1 here; the
    # documented default ("0: bit for bit") is checked where it is declared.
    import inspect

    for check in (run_translate, check_same_outputs):
        assert inspect.signature(check).parameters["max_steps"].default == 0


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
    from tests.project import BUILD_STAGES, edit_params

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
    proc = run_doit(project, *BUILD_STAGES)  # not the bench: it would re-time every model
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


# --- the translation's checks on the committed fixture models (fast: no training, no
# conversion but the translation itself). Every figure of a message is computed here from
# both runtimes' raw integer outputs (litert_raw, ort_raw), not by the code under test.


def raw_differences(tflite, content, images):
    """LiteRT's and ONNX Runtime's raw int8 outputs, each image's largest difference in
    output steps, and the images whose top-1 class differs (first index on ties, as argmax)."""
    expected, quantization = litert_raw(tflite, images)
    got = ort_raw(content, images, quantization)
    steps = np.abs(got - expected).max(axis=1)
    return steps, np.flatnonzero(got.argmax(axis=1) != expected.argmax(axis=1))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_the_committed_translation_is_bit_for_bit_and_counted_so(tiny_models, tiny_onnx_models,
                                                                 test_images, kind):
    tflite = tiny_models[f"tiny_{kind}/int8"]
    content = tiny_onnx_models[f"tiny_{kind}/onnx_int8_tflite"].read_bytes()
    steps, changed = raw_differences(tflite, content, test_images)
    assert steps.max() == 0 and changed.size == 0  # the fixture's own proof
    agreement = compare_outputs(content, tflite, test_images, "t.onnx")
    assert agreement.steps.tolist() == [0] * 200 and agreement.top1_differs.tolist() == []
    assert (agreement.identical, agreement.worst) == (200, 0)
    assert check_same_outputs(content, tflite, test_images, "t.onnx") == (200, 0)


def test_each_images_steps_and_changed_top1_are_those_of_the_raw_outputs(
        tiny_models, tiny_onnx_models, test_images):
    tflite = tiny_models["tiny_mlp/int8"]
    wrong = perturbed(tiny_onnx_models["tiny_mlp/onnx_int8_tflite"].read_bytes(), 40, 7)
    steps, changed = raw_differences(tflite, wrong, test_images)
    assert steps.max() > 1 and 0 < changed.size < 200  # the test needs a model that differs
    agreement = compare_outputs(wrong, tflite, test_images, "m.onnx")
    assert agreement.steps.dtype == np.int64
    assert agreement.steps.tolist() == steps.tolist()
    assert agreement.top1_differs.tolist() == changed.tolist()
    assert agreement.identical == int((steps == 0).sum())
    assert agreement.worst == int(steps.max())


def test_one_output_step_is_refused_at_limit_0_and_accepted_at_limit_1(
        tiny_models, tiny_onnx_models, test_images):
    tflite = tiny_models["tiny_cnn/int8"]
    # Class 1's weights one step lower: a few outputs one step off, no top-1 changed.
    wrong = perturbed(tiny_onnx_models["tiny_cnn/onnx_int8_tflite"].read_bytes(), -1, 1)
    steps, changed = raw_differences(tflite, wrong, test_images)
    assert steps.max() == 1 and changed.size == 0
    beyond = np.flatnonzero(steps)
    identical = 200 - beyond.size
    with pytest.raises(OnnxConvertError) as caught:
        check_same_outputs(wrong, tflite, test_images, "m.onnx")
    assert str(caught.value) == (
        f"m.onnx: ONNX Runtime's output differs from LiteRT's for tiny_cnn_int8.tflite by 1 "
        f"output steps on test image {beyond[0]} (more than convert.onnx_tflite_max_steps = 0; "
        f"{beyond.size} of 200 images beyond it, at most 1 steps, {identical} bit-identical); "
        "not written. A board running it would not answer as the validated .tflite does: raise "
        "convert.onnx_tflite_max_steps only if that is acceptable, or set convert.onnx = false "
        "to build TFLite only")
    assert check_same_outputs(wrong, tflite, test_images, "m.onnx", 1) == (identical, 1)


def test_every_limit_below_the_worst_difference_is_refused_and_the_worst_accepted(
        tiny_models, tiny_onnx_models, test_images):
    tflite = tiny_models["tiny_mlp/int8"]
    wrong = perturbed(tiny_onnx_models["tiny_mlp/onnx_int8_tflite"].read_bytes(), 40, 7)
    steps, changed = raw_differences(tflite, wrong, test_images)
    # The step gate alone: the images whose top-1 the change leaves alone.
    kept = np.setdiff1d(np.arange(200), changed)
    images, steps = test_images[kept], steps[kept]
    worst, identical = int(steps.max()), int((steps == 0).sum())
    assert worst >= 2 and 0 < identical < len(kept)
    for limit in range(worst):
        beyond = np.flatnonzero(steps > limit)
        with pytest.raises(OnnxConvertError) as caught:
            check_same_outputs(wrong, tflite, images, "m.onnx", limit)
        assert str(caught.value).startswith(
            f"m.onnx: ONNX Runtime's output differs from LiteRT's for tiny_mlp_int8.tflite by "
            f"{steps[beyond[0]]} output steps on test image {beyond[0]} (more than "
            f"convert.onnx_tflite_max_steps = {limit}; {beyond.size} of {len(kept)} images "
            f"beyond it, at most {worst} steps, {identical} bit-identical); not written.")
    assert check_same_outputs(wrong, tflite, images, "m.onnx", worst) == (identical, worst)
    assert check_same_outputs(wrong, tflite, images, "m.onnx", worst + 1) == (identical, worst)


def test_a_changed_top1_is_refused_even_within_the_step_limit(tiny_models, tiny_onnx_models,
                                                              test_images):
    tflite = tiny_models["tiny_mlp/int8"]
    wrong = perturbed(tiny_onnx_models["tiny_mlp/onnx_int8_tflite"].read_bytes(), 40, 7)
    steps, changed = raw_differences(tflite, wrong, test_images)
    worst, identical = int(steps.max()), int((steps == 0).sum())
    for limit in (worst, 127):
        with pytest.raises(OnnxConvertError) as caught:
            check_same_outputs(wrong, tflite, test_images, "m.onnx", limit)
        # Its advice leaves out raising the step limit, which cannot help.
        assert str(caught.value) == (
            f"m.onnx: ONNX Runtime's top-1 class differs from LiteRT's for tiny_mlp_int8.tflite "
            f"on test image {changed[0]} ({changed.size} of 200 images; {identical} "
            f"bit-identical, at most {worst} output steps apart); not written. A board running "
            "it would not answer as the validated .tflite does: set convert.onnx = false to "
            "build TFLite only")
    # One image whose top-1 differs is enough.
    one = test_images[changed[:1]]
    with pytest.raises(OnnxConvertError, match=r"on test image 0 \(1 of 1 images; 0 bit-"):
        check_same_outputs(wrong, tflite, one, "m.onnx", 127)


def litert_contract(tflite, side):
    """One side of the .tflite's I/O contract as compare_outputs compares it, read with
    LiteRT's interpreter directly."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    detail = (interpreter.get_input_details() if side == "input"
              else interpreter.get_output_details())[0]
    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(d) for d in detail["shape"]],
            "scale": float(scale), "zero_point": int(zero_point)}


def test_an_onnx_model_with_a_float_input_is_refused_naming_both_contracts(
        tiny_models, tiny_onnx_models, test_images):
    tflite = tiny_models["tiny_cnn/int8"]
    qdq = tiny_onnx_models["tiny_cnn/onnx_int8"].read_bytes()  # ORT's quantization: float in
    mine = {"dtype": "float32", "shape": [1, 28, 28, 1], "scale": None, "zero_point": None}
    with pytest.raises(OnnxConvertError) as caught:
        check_same_outputs(qdq, tflite, test_images[:3], "q.onnx", 127)
    assert str(caught.value) == (f"q.onnx: its input is {mine}, the .tflite's "
                                 f"{litert_contract(tflite, 'input')}; not written")


def with_output_zero_point(content: bytes, delta: int) -> bytes:
    """The translated model with the output zero point it states (its output_quantization
    metadata, which wins over its QuantizeLinear's) moved by `delta`."""
    import json

    import onnx

    model = onnx.load_from_string(content)
    [prop] = [p for p in model.metadata_props if p.key == "output_quantization"]
    scale, zero_point = json.loads(prop.value)
    prop.value = json.dumps([scale, zero_point + delta])
    return model.SerializeToString()


def test_an_output_zero_point_one_off_is_refused_naming_both_contracts(
        tiny_models, tiny_onnx_models, test_images):
    tflite = tiny_models["tiny_cnn/int8"]
    moved = with_output_zero_point(
        tiny_onnx_models["tiny_cnn/onnx_int8_tflite"].read_bytes(), 1)
    ref = litert_contract(tflite, "output")
    mine = {**ref, "zero_point": ref["zero_point"] + 1}
    with pytest.raises(OnnxConvertError) as caught:
        check_same_outputs(moved, tflite, test_images[:3], "o.onnx", 127)
    assert str(caught.value) == f"o.onnx: its output is {mine}, the .tflite's {ref}; not written"


@pytest.fixture
def translate_inputs(tiny_models, test_images, tmp_path):
    """The committed int8 MLP as build "b"'s .tflite and the test images as its dataset."""
    import shutil

    from pipeline.stages.preprocess import save_arrays

    tflite = tmp_path / "b_int8.tflite"
    shutil.copy(tiny_models["tiny_mlp/int8"], tflite)
    save_arrays(tmp_path / "d.npz", {"x_test": test_images})
    return tflite, tmp_path / "d.npz"


def test_run_translate_writes_the_translation_and_counts_the_identical_images(
        translate_inputs, test_images, capsys):
    tflite, data = translate_inputs
    out = tflite.parent
    plain = translate_tflite(tflite, integer=False)
    before = int((raw_differences(tflite, plain, test_images)[0] == 0).sum())
    size = run_translate(tflite, data, "b", out)
    written = (out / "b_onnx_int8_tflite.onnx").read_bytes()
    assert written == translate_tflite(tflite) and size == len(written) > 1000
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == [
        f"{out / 'b_onnx_int8_tflite.onnx'}: {size:,} bytes",
        printed[-2],
        f"b_onnx_int8_tflite.onnx: outputs equal LiteRT's bit for bit on 200 of 200 test "
        f"images; before the integer rewrite {before}"]
    # The rewrite's first figure, counted on the graphs: the activations (Relu) it folded.
    import onnx

    def relus(content):
        return sum(n.op_type in ("Relu", "Clip") for n in onnx.load_from_string(content).graph.node)

    folded = relus(plain) - relus(written)
    assert folded >= 1 and printed[-2].startswith(
        f"b_onnx_int8_tflite.onnx: {folded} activations folded into QuantizeLinear, ")
    assert sorted(p.name for p in out.iterdir()) == ["b_int8.tflite", "b_onnx_int8_tflite.onnx",
                                                     "d.npz"]


def test_a_failed_translation_removes_only_the_builds_older_model_and_the_card(
        translate_inputs):
    tflite, data = translate_inputs
    out = tflite.parent
    # With nothing older to remove, only the check's own error.
    with pytest.raises(OnnxConvertError, match="max_steps = -1"):
        run_translate(tflite, data, "b", out, -1)
    older = [out / name for name in ("b_onnx_int8_tflite.onnx", "model_card.md",
                                     "model_card.json")]
    others = [out / name for name in ("c_onnx_int8_tflite.onnx", "b_onnx_int8.onnx")]
    for path in older + others:
        path.write_text("made under the looser limit")
    # -1: even identical outputs are beyond it, as for a tightened limit.
    with pytest.raises(OnnxConvertError) as caught:
        run_translate(tflite, data, "b", out, -1)
    assert str(caught.value).startswith(
        f"{out / 'b_onnx_int8_tflite.onnx'}: ONNX Runtime's output differs from LiteRT's for "
        "b_int8.tflite by 0 output steps on test image 0 (more than "
        "convert.onnx_tflite_max_steps = -1; 200 of 200 images beyond it, at most 0 steps, 200 "
        "bit-identical); not written.")
    assert [p.name for p in older if p.exists()] == []
    assert all(p.read_text() == "made under the looser limit" for p in others)
    assert tflite.exists()
