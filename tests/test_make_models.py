"""tests/fixtures/make_models.py: the committed fixture models are the bytes their manifest
records, and a rebuild that gives other bytes fails in one line naming the files."""

import hashlib
import json

import numpy as np
import pytest

from tests.fixtures import make_models

MODELS = make_models.MODELS


def test_the_committed_files_are_the_manifests():
    manifest = json.loads(make_models.MANIFEST.read_text())
    on_disk = {p.name for p in MODELS.iterdir() if p.name != make_models.MANIFEST.name}
    assert on_disk == set(manifest["sha256"]) == set(make_models.file_names().values())
    for name, digest in manifest["sha256"].items():
        # hashlib here, not make_models.digests: an independent count of the same bytes
        assert hashlib.sha256((MODELS / name).read_bytes()).hexdigest() == digest, name
    assert make_models.difference(manifest, make_models.digests(MODELS),
                                  manifest["made_with"]) is None


def test_every_file_is_a_few_kb():
    sizes = {p.name: p.stat().st_size for p in MODELS.iterdir()}
    assert max(sizes.values()) < 32 * 1024, sizes


def test_another_output_fails_in_one_line_naming_the_files_and_the_versions():
    manifest = {"made_with": {"tensorflow-cpu": "2.21.0", "onnx": "1.23.2"},
                "sha256": {"a.tflite": "1" * 64, "b.onnx": "2" * 64, "c.onnx": "3" * 64}}
    same = dict(manifest["sha256"])
    assert make_models.difference(manifest, same, manifest["made_with"]) is None
    rebuilt = {**same, "b.onnx": "4" * 64}
    del rebuilt["c.onnx"]  # a file the rebuild no longer makes differs too
    line = make_models.difference(manifest, rebuilt,
                                  {"tensorflow-cpu": "2.22.0", "onnx": "1.23.2"})
    assert "\n" not in line
    assert line.startswith("2 of 3 fixture models rebuild to other bytes than manifest.json "
                           "records (b.onnx, c.onnx; versions changed: tensorflow-cpu "
                           "2.21.0 -> 2.22.0)")
    assert "--write" in line
    assert "same package versions" in make_models.difference(manifest, rebuilt,
                                                            manifest["made_with"])


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_the_fixtures_are_what_the_tests_take_them_for(kind):
    """Integer-only int8 and float32 .tflite of 28x28x1 -> 10 classes; the ONNX forms have the
    same I/O shape and the float ONNX answers as the float .tflite."""
    from pipeline.core.runtimes import open_model
    from pipeline.stages.convert import ConvertError, check_integer_only
    from tests.conftest import synthetic_images

    paths = {key.split("/")[1]: MODELS / name for key, name in make_models.file_names().items()
             if key.startswith(f"tiny_{kind}/")}
    check_integer_only(paths["int8"].read_bytes(), "int8")
    with pytest.raises(ConvertError):
        check_integer_only(paths["float32"].read_bytes(), "float32")
    for variant, path in paths.items():
        contract = open_model(path).io_contract()
        assert contract["input"]["shape"][1:3] == [28, 28], variant
        assert contract["output"]["shape"] == [1, 10], variant
    images = synthetic_images(np.arange(20) % 10, 4)
    np.testing.assert_allclose(open_model(paths["onnx_float32"]).probabilities(images, 1),
                               open_model(paths["float32"]).probabilities(images, 1), atol=1e-5)
