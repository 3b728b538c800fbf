import dataclasses

import numpy as np
import pytest

from pipeline.stages.convert import (ConvertError, check_integer_only, convert, float_tensors,
                              representative_indices, run, variant_of, variant_path)
from pipeline.stages.evaluate import model_predict
from pipeline.core.params import load_params
from pipeline.stages.train import build_model, save_model
from tests.conftest import REPO, synthetic_images


def test_representative_indices_are_stratified_seeded_and_exact():
    labels = np.repeat(np.arange(10), [100, 200, 50, 50, 100, 100, 100, 100, 100, 100])
    idx = representative_indices(labels, 100, seed=1)
    assert len(idx) == len(set(idx)) == 100
    counts = np.bincount(labels[idx], minlength=10)
    assert counts[1] == 20 and counts[2] == 5 and counts[0] == 10
    assert np.array_equal(idx, representative_indices(labels, 100, seed=1))
    assert not np.array_equal(idx, representative_indices(labels, 100, seed=2))
    assert len(representative_indices(labels, len(labels), seed=1)) == len(labels)
    with pytest.raises(ValueError, match="cannot draw 1001 of 1000"):
        representative_indices(labels, len(labels) + 1, seed=1)  # never clipped silently


def test_more_calibration_images_than_the_training_split_is_refused_before_work(tmp_path):
    labels = np.arange(40) % 10
    data = tmp_path / "d.npz"
    np.savez(data, x_train=synthetic_images(labels, 1), y_train=labels,
             x_test=synthetic_images(labels[:10], 2), y_test=labels[:10])
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").convert,
                                 representative_samples=41)
    # No model at all: the check comes before the .h5 is even loaded.
    with pytest.raises(ConvertError, match=r"convert.representative_samples = 41 but .*d.npz "
                                           r"has only 40 training images: lower it to at most 40"):
        run(tmp_path / "missing.h5", data, params, "b", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_int8_model_is_integer_only_and_float_model_is_not(tiny_models):
    check_integer_only(tiny_models["tiny_cnn/int8"].read_bytes(), "int8")
    with pytest.raises(ConvertError, match="is not integer-only: .* float tensor"):
        check_integer_only(tiny_models["tiny_cnn/float32"].read_bytes(), "cnn_float32.tflite")


def test_int8_io_types():
    from ai_edge_litert.interpreter import Interpreter

    model = build_model("mlp", (28, 28), 10)
    images = synthetic_images(np.arange(20) % 10, 0)
    for io_type in ("int8", "uint8"):
        content = convert(model, "int8", images, io_type)
        interp = Interpreter(model_content=content)
        assert interp.get_input_details()[0]["dtype"] == np.dtype(io_type)
        assert interp.get_output_details()[0]["dtype"] == np.dtype(io_type)
        assert float_tensors(content) == []


def test_tflite_variants_agree_with_keras(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    labels = np.arange(600) % 10
    images = synthetic_images(labels, 5)
    model = build_model("cnn", (28, 28), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[100:, ..., None].astype(np.float32), labels[100:], epochs=3, verbose=0)
    test = images[:100]
    keras_top1 = np.argmax(model.predict(test[..., None].astype(np.float32), verbose=0), 1)
    assert (keras_top1 == labels[:100]).mean() > 0.9
    for variant in ("float32", "float16", "dynamic_range", "int8"):
        path = tmp_path / f"m_{variant}.tflite"
        path.write_bytes(convert(model, variant, images[100:300]))
        agreement = (model_predict(path, test, 50) == keras_top1).mean()
        # float32 must match Keras exactly; quantized variants of a trained net, closely.
        assert agreement == 1.0 if variant == "float32" else agreement >= 0.95, variant


def test_run_converts_from_the_saved_h5(tmp_path, tiny_dataset_dir):
    from pipeline.core.datasets import MNIST
    from pipeline.stages.preprocess import preprocess, save_arrays

    save_arrays(tmp_path / "d.npz", preprocess(MNIST, tiny_dataset_dir))
    save_model(build_model("mlp", (28, 28), 10), tmp_path / "b.h5")
    params = dataclasses.replace(load_params(REPO / "params.toml").convert,
                                 extra_variants=("float16",), representative_samples=50)
    sizes = run(tmp_path / "b.h5", tmp_path / "d.npz", params, "b", tmp_path)
    assert set(sizes) == {"float32", "int8", "float16"}
    for variant, size in sizes.items():
        assert variant_path(tmp_path, "b", variant).stat().st_size == size
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert not list(tmp_path.glob(".*partial*"))


def test_run_refuses_an_int8_model_with_float_tensors(tmp_path, tiny_dataset_dir, monkeypatch):
    """convert.run itself applies the integer-only check before writing the int8 file."""
    from pipeline.stages import convert as convert_module
    from pipeline.core.datasets import MNIST
    from pipeline.stages.preprocess import preprocess, save_arrays

    save_arrays(tmp_path / "d.npz", preprocess(MNIST, tiny_dataset_dir))
    save_model(build_model("mlp", (28, 28), 10), tmp_path / "b.h5")
    real = convert_module.convert
    # A converter that silently fell back to float for the int8 variant.
    monkeypatch.setattr(convert_module, "convert",
                        lambda model, variant, *a, **k: real(model, "float32"))
    params = dataclasses.replace(load_params(REPO / "params.toml").convert,
                                 representative_samples=50)
    with pytest.raises(ConvertError, match="b_int8.tflite is not integer-only"):
        run(tmp_path / "b.h5", tmp_path / "d.npz", params, "b", tmp_path)
    assert not variant_path(tmp_path, "b", "int8").exists()


def test_variant_of():
    assert variant_of("x/mnist_cnn_dynamic_range.tflite") == ("mnist_cnn", "dynamic_range")
    assert variant_of("mnist_cnn_int8.tflite") == ("mnist_cnn", "int8")
    assert variant_of("mnist_cnn_int8_selective.tflite") == ("mnist_cnn", "int8_selective")
    with pytest.raises(ValueError):
        variant_of("model.tflite")


def test_int8_selective_honours_int8_io():
    from ai_edge_litert.interpreter import Interpreter

    model = build_model("mlp", (28, 28), 10)
    images = synthetic_images(np.arange(30) % 10, 0)
    # A name as the per-layer report (the int8 graph) gives it.
    keep = next(t["name"] for t in Interpreter(model_content=convert(model, "int8", images))
                .get_tensor_details() if t["name"].startswith("mlp_1/dense_1/MatMul;"))
    outputs = {}
    for io_type, zero_point in (("int8", -128), ("uint8", 0)):
        content = convert(model, "int8_selective", images, io_type, [keep])
        interp = Interpreter(model_content=content)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        assert inp["dtype"] == out["dtype"] == np.dtype(io_type)
        assert inp["quantization"][1] == zero_point  # the same as the int8 variant's
        assert keep in {name.split(" (")[0] for name in float_tensors(content)}
        interp.allocate_tensors()
        x = images[:1, ..., None]
        interp.set_tensor(inp["index"], x if io_type == "uint8"
                          else (x.astype(np.int16) - 128).astype(np.int8))
        interp.invoke()
        outputs[io_type] = interp.get_tensor(out["index"]).astype(np.int16)
    # Same model, same quantization: the uint8 output is the int8 one shifted by 128.
    assert np.array_equal(outputs["uint8"], outputs["int8"] + 128)


def test_switched_off_variants_are_removed_but_never_a_file_the_pipeline_did_not_make(
        tmp_path, tiny_dataset_dir):
    import json

    from pipeline.stages.convert import remove_stale_variants
    from pipeline.core.datasets import MNIST
    from pipeline.core.files import sha256_file
    from pipeline.stages.preprocess import preprocess, save_arrays

    save_arrays(tmp_path / "d.npz", preprocess(MNIST, tiny_dataset_dir))
    save_model(build_model("mlp", (28, 28), 10), tmp_path / "b.h5")
    base = dataclasses.replace(load_params(REPO / "params.toml").convert,
                               representative_samples=50)
    run(tmp_path / "b.h5", tmp_path / "d.npz",
        dataclasses.replace(base, extra_variants=("float16", "dynamic_range")), "b", tmp_path)
    # The card lists what the build shipped (as card.py writes it).
    files = [variant_path(tmp_path, "b", v) for v in ("float32", "int8", "float16",
                                                      "dynamic_range")]
    (tmp_path / "model_card.json").write_text(json.dumps({"variants": [
        {"file": p.name, "sha256": sha256_file(p)} for p in files]}))
    # Someone's own file under a variant's name: not in the card with this content.
    variant_path(tmp_path, "b", "dynamic_range").write_bytes(b"my own model")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    log = []
    run(tmp_path / "b.h5", tmp_path / "d.npz", base, "b", tmp_path)
    assert not variant_path(tmp_path, "b", "float16").exists()
    assert variant_path(tmp_path, "b", "dynamic_range").read_bytes() == b"my own model"
    assert notes.exists() and variant_path(tmp_path, "b", "int8").exists()
    assert remove_stale_variants(tmp_path, "b", ["float32", "int8"], log.append) == []
    assert "did not make it" in log[0]


def test_a_layer_with_no_int8_kernel_is_named(tmp_path, tiny_dataset_dir):
    import keras

    from pipeline.core.datasets import MNIST
    from pipeline.stages.preprocess import preprocess, save_arrays

    save_arrays(tmp_path / "d.npz", preprocess(MNIST, tiny_dataset_dir))
    layers = keras.layers
    model = keras.Sequential([keras.Input((28, 28, 1), name="image"),
                              layers.Flatten(name="flatten"), layers.Dense(8, name="dense"),
                              layers.Activation("elu", name="smooth"),  # TFLite: no int8 ELU
                              layers.Dense(10, activation="softmax", name="classes")], name="e")
    save_model(model, tmp_path / "e.h5")
    params = dataclasses.replace(load_params(REPO / "params.toml").convert,
                                 representative_samples=50)
    with pytest.raises(ConvertError, match=r"e_int8.tflite is not integer-only: .*layer\(s\) "
                                           r"with no int8 kernel: smooth \("):
        run(tmp_path / "e.h5", tmp_path / "d.npz", params, "e", tmp_path)
