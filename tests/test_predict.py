"""predict on real MNIST test digits rendered the ways users draw them, with a CNN trained
here (the smoke build is too weak to demand 95 %), and on files that are not images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import predict
from pipeline.params import ConvertParams, TrainParams

BUILD = "good_cnn"
VARIANTS = ("keras", "float32", "int8")


@pytest.fixture(scope="module")
def build(tmp_path_factory, mnist_dir):
    """A real build tree: CNN trained 2 epochs on 30,000 images (98.6 % on the test set),
    converted, evaluated, with its model card, through the pipeline's own stage functions."""
    from pipeline import card, convert, evaluate, train
    from pipeline.datasets import MNIST
    from pipeline.preprocess import preprocess, save_arrays

    art = tmp_path_factory.mktemp("predict_artifacts")
    npz = art / "data" / "mnist.npz"
    save_arrays(npz, preprocess(MNIST, mnist_dir))
    model_dir = art / "models" / BUILD
    train.run("cnn", npz, TrainParams(epochs=2, batch_size=128, learning_rate=0.004,
                                      lr_schedule="cosine", validation_fraction=0.1,
                                      max_train_samples=30_000, seed=1234, tensorboard=False),
              model_dir / f"{BUILD}.h5", model_dir / "history.json")
    params = ConvertParams(representative_samples=200, seed=1234, int8_io="int8",
                           extra_variants=(), onnx=False,
                           onnx_tflite_max_steps=0)
    convert.run(model_dir / f"{BUILD}.h5", npz, params, BUILD, model_dir)
    variants = {v: convert.variant_path(model_dir, BUILD, v) for v in ("float32", "int8")}
    evaluate.run(BUILD, "mnist", MNIST.class_names, model_dir / f"{BUILD}.h5", variants, npz,
                 500, 100.0, art / "reports" / BUILD)
    card.run(BUILD, "mnist", MNIST.class_names, model_dir / f"{BUILD}.h5", variants,
             art / "reports" / BUILD / "accuracy.json", model_dir / "history.json", model_dir)
    return art


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """100 seeded test digits (white on black, 28x28) and their labels."""
    from pipeline.datasets import MNIST
    from pipeline.preprocess import preprocess

    arrays = preprocess(MNIST, mnist_dir)
    idx = np.random.default_rng(8).choice(len(arrays["y_test"]), 100, replace=False)
    return arrays["x_test"][idx], arrays["y_test"][idx]


def _scaled(digit: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)


def _adaptive_palette(image: Image.Image) -> Image.Image:
    return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


def rgb_on_white(d):            # dark blue ink on white paper, 3x
    ink = np.asarray(_scaled(d, 84), np.float64) / 255
    rgb = np.stack([255 * (1 - ink), 255 * (1 - ink), 255 * (1 - 0.6 * ink)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def rgba_transparent(d):        # black strokes on a fully transparent layer
    rgba = np.zeros((84, 84, 4), np.uint8)
    rgba[..., 3] = np.asarray(_scaled(d, 84))
    return Image.fromarray(rgba, "RGBA")


def inverted(d):                # the digit itself, dark on light
    return Image.fromarray(255 - d, "L")


def canvas_200(d):              # 120 px digit on a 200x200 black canvas
    canvas = Image.new("L", (200, 200), 0)
    canvas.paste(_scaled(d, 120), (40, 40))
    return canvas


def canvas_37x91_16bit(d):      # tall narrow 16-bit canvas
    canvas = np.zeros((91, 37), np.uint16)
    canvas[27:64, :] = np.asarray(_scaled(d, 37), np.uint16) * 257
    return Image.fromarray(canvas)


def off_centre_palette(d):      # small digit in a corner of a wide white page, palette mode
    page = Image.new("L", (150, 100), 255)
    page.paste(Image.fromarray(255 - np.asarray(_scaled(d, 56))), (4, 3))
    return _adaptive_palette(page)


RENDERINGS = (rgb_on_white, rgba_transparent, inverted, canvas_200, canvas_37x91_16bit,
              off_centre_palette)


def test_renderings_cover_the_modes_they_claim(digits):
    modes = {r.__name__: r(digits[0][0]) for r in RENDERINGS}
    assert modes["rgba_transparent"].mode == "RGBA"
    assert modes["canvas_37x91_16bit"].mode == "I;16"
    assert modes["canvas_37x91_16bit"].size == (37, 91)
    assert modes["off_centre_palette"].mode == "P"


def test_at_least_95_of_100_real_digits_in_every_rendering_and_every_model(build, digits):
    from pipeline.card import load_card

    images, labels = digits
    card = load_card(build / "models" / BUILD, BUILD)
    models = predict.model_files(card, build / "models" / BUILD, BUILD)
    batch = np.stack([predict.prepare(render(d), card) for render in RENDERINGS for d in images])
    probs = predict.classify(models, batch)
    for variant in VARIANTS:
        correct = (np.argmax(probs[variant], axis=1).reshape(len(RENDERINGS), -1) == labels)
        for render, hits in zip(RENDERINGS, correct.sum(axis=1)):
            assert hits >= 95, f"{variant} on {render.__name__}: {hits}/100"


def test_normalized_digit_is_light_on_black_and_centred_by_mass():
    page = Image.new("L", (300, 120), 250)  # a dark bar far off-centre on light paper
    page.paste(0, (10, 10, 22, 70))
    out = predict.normalize(predict.to_gray(page))
    assert out.shape == (28, 28) and out.max() == 255 and out[0].max() == 0
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 13.5) < 0.6
    assert abs((xs * out).sum() / out.sum() - 13.5) < 0.6
    assert np.count_nonzero(out.max(axis=1) > 128) == 20  # the long side fits the 20 px box


def test_transparent_layer_keeps_light_strokes_too():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[5:35, 18:22] = (255, 255, 255, 255)  # white stroke, hidden pixels white as well
    rgba[..., :3] = 255
    gray = predict.to_gray(Image.fromarray(rgba, "RGBA"))
    assert gray[20, 20] == 255 and gray[0, 0] == 0


def _write(path, image):
    image.save(path)
    return path


def test_cli_reports_each_bad_file_in_one_line_and_classifies_the_rest(build, digits, tmp_path,
                                                                     capsys):
    images, labels = digits
    good = _write(tmp_path / "seven.png", rgb_on_white(images[0]))
    other = _write(tmp_path / "other.png", canvas_200(images[1]))
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.png"
    status = predict.main([str(good), str(text), str(truncated), str(missing), str(other),
                           "--build", BUILD, "--artifacts", str(build), "--json", "--show"])
    out, err = capsys.readouterr()
    assert status == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {text}: not an image Pillow can read",
                      f"error: {truncated}: unreadable image (image file is truncated)",
                      f"error: {missing}: no such file"]
    results = {r["image"]: r for r in json.loads(out)["results"]}
    for path, label in ((good, labels[0]), (other, labels[1])):
        assert {v: results[str(path)]["predictions"][v]["class"] for v in VARIANTS} == {
            v: int(label) for v in VARIANTS}
        shown = Image.open(results[str(path)]["input_png"])
        assert shown.size == (280, 280) and shown.mode == "L"
    assert predict.main([str(good), "--build", BUILD, "--artifacts", str(build)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["image", *VARIANTS]
    assert f"{labels[0]}  " in table.splitlines()[2]


def test_missing_models_name_the_task_that_builds_them(build, tmp_path, capsys):
    import shutil

    image = _write(tmp_path / "x.png", Image.new("L", (28, 28), 0))
    copy = tmp_path / "art"
    shutil.copytree(build / "models", copy / "models")
    (copy / "models" / BUILD / f"{BUILD}_int8.tflite").unlink()
    assert predict.main([str(image), "--build", BUILD, "--artifacts", str(copy)]) == 2
    assert f"{BUILD}_int8.tflite is missing: build it with `doit convert:{BUILD}`" in \
        capsys.readouterr().err
    (copy / "models" / BUILD / "model_card.json").unlink()
    assert predict.main([str(image), "--build", BUILD, "--artifacts", str(copy)]) == 2
    assert f"model_card.json is missing: build it with `doit card:{BUILD}`" in \
        capsys.readouterr().err
    assert predict.main([str(image), "--build", "nope", "--artifacts", str(copy)]) == 2
    assert f"unknown build 'nope' under {copy / 'models'} (built: {BUILD})" in \
        capsys.readouterr().err
    assert predict.main([str(image), "--artifacts", str(tmp_path / "elsewhere")]) == 2
    assert "no built models under" in capsys.readouterr().err


def test_blank_image_is_an_error_not_a_guess(build, tmp_path, capsys):
    blank = _write(tmp_path / "blank.png", Image.new("RGB", (50, 50), "white"))
    assert predict.main([str(blank), "--build", BUILD, "--artifacts", str(build)]) == 1
    assert f"error: {blank}: no digit found: the image is blank" in capsys.readouterr().err


def test_board_column_runs_the_int8_model_through_the_runner(build, digits, tmp_path, capsys):
    from tests.conftest import REPO

    images, labels = digits
    paths = [_write(tmp_path / f"d{i}.png", inverted(images[i])) for i in range(3)]
    args = [*map(str, paths), "--build", BUILD, "--artifacts", str(build), "--json",
            "--boards", str(REPO / "board" / "boards.toml")]
    assert predict.main([*args, "--board", "local"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    for r, label in zip(results, labels[:3]):
        board, host = r["predictions"]["int8@local"], r["predictions"]["int8"]
        assert board == {"class": host["class"], "name": host["name"], "same_as_host": True}
        assert host["class"] == label
    assert predict.main([*args, "--board", "k9"]) == 2
    assert "error: board 'k9' is not in" in capsys.readouterr().err
    differs = {"image": "x.png", "predictions": {
        "int8": {"name": "7", "probability": 0.9},
        "int8@k1": {"class": None, "name": None, "same_as_host": False}}}
    assert "DIFFERS from host int8" in predict.render_table([differs], ["int8", "int8@k1"])
