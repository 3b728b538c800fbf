import tomllib

import pytest

from pipeline.core.params import ParamsError, load_params, parse_params
from tests.conftest import REPO, copy_project, run_doit


def doc(path=REPO / "params.toml"):
    return tomllib.loads(path.read_text())


def test_shipped_params_load():
    params = load_params(REPO / "params.toml")
    assert [b.name for b in params.builds] == ["mnist_cnn", "mnist_mlp"]
    assert params.datasets == ("mnist",)
    assert params.convert.int8_io == "int8"
    assert params.convert.onnx is True  # ONNX variants by default
    smoke = load_params(REPO / "params" / "smoke.toml")
    assert smoke.train.max_train_samples > 0 and smoke.train.epochs == 1


def test_params_are_frozen():
    params = load_params(REPO / "params.toml")
    with pytest.raises(AttributeError):
        params.train.epochs = 3


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["train"].update(epochz=3), "train.epochz: unknown key"),
    (lambda d: d.update(extra={}), "extra: unknown section"),
    (lambda d: d["train"].update(epochs="2"), "train.epochs: must be int, got str"),
    (lambda d: d["train"].update(epochs=True), "train.epochs: must be int, got bool"),
    (lambda d: d["train"].update(epochs=0), "train.epochs: must be in 1..1000"),
    (lambda d: d["train"].pop("seed"), "train.seed: missing"),
    (lambda d: d["convert"].update(int8_io="int16"), "convert.int8_io: must be 'int8' or 'uint8'"),
    (lambda d: d["convert"].update(extra_variants=["bf16"]), "unknown variant 'bf16'"),
    (lambda d: d["convert"].update(onnx="yes"), "convert.onnx: must be bool, got str"),
    (lambda d: d["convert"].pop("onnx"), "convert.onnx: missing"),
    (lambda d: d["evaluate"].update(max_drift_pt=-1), "evaluate.max_drift_pt: must be >= 0"),
    (lambda d: d["builds"][0].update(dataset="cifar"), "unknown dataset 'cifar'"),
    (lambda d: d["builds"][0].update(model="resnet"), "unknown model 'resnet'"),
    (lambda d: d["builds"][1].update(name="mnist_cnn"), "duplicate build names"),
    (lambda d: d.update(builds=[]), "declare at least one [[builds]]"),
    (lambda d: d["analysis"].update(max_per_class=0), "analysis.max_per_class: must be in"),
    (lambda d: d["layers"].pop("samples"), "layers.samples: missing"),
    (lambda d: d["layers"].update(sample=5), "layers.sample: unknown key"),
    (lambda d: d.pop("layers"), "layers: missing section"),
    (lambda d: d["builds"][0].update(float_layers="dense"), "builds.float_layers: must be a list"),
    (lambda d: d["builds"][0].update(float_layers=["a", "a"]),
     "builds[mnist_cnn].float_layers: names must be non-empty and unique"),
    (lambda d: d["builds"][0].update(float_layer=["a"]), "builds.float_layer: unknown key"),
    (lambda d: d["nightly"].update(min_accuracy=0.9), "nightly.min_accuracy: unknown key"),
    (lambda d: d["nightly"].update(min_accuracy_int8=97), "nightly.min_accuracy_int8: must be "
                                                          "a fraction in [0, 1]"),
    (lambda d: d["nightly"].pop("keep_runs"), "nightly.keep_runs: missing"),
    (lambda d: d.pop("nightly"), "nightly: missing section"),
])
def test_bad_params_are_rejected_naming_the_key(mutate, message):
    d = doc()
    mutate(d)
    with pytest.raises(ParamsError) as err:
        parse_params(d)
    assert message in str(err.value)


def test_int_is_accepted_for_float():
    d = doc()
    d["train"]["learning_rate"] = 0  # still rejected by range, but as a value, not a type
    with pytest.raises(ParamsError, match="train.learning_rate: must be in"):
        parse_params(d)
    d["evaluate"]["max_drift_pt"] = 2
    d["train"]["learning_rate"] = 0.001
    assert parse_params(d).evaluate.max_drift_pt == 2.0


def test_float_layers_are_optional_per_build_and_add_the_selective_variant():
    from pipeline.stages.convert import variant_names

    d = doc()
    d["builds"][0]["float_layers"] = ["cnn_1/classes_1/MatMul;cnn_1/classes_1/BiasAdd"]
    params = parse_params(d)
    cnn, mlp = params.builds
    assert cnn.float_layers == ("cnn_1/classes_1/MatMul;cnn_1/classes_1/BiasAdd",)
    assert mlp.float_layers == ()
    onnx = ["onnx_float32", "onnx_int8", "onnx_int8_tflite"]
    assert variant_names(params.convert, cnn.float_layers) == ["float32", "int8",
                                                               "int8_selective", *onnx]
    assert variant_names(params.convert, mlp.float_layers) == ["float32", "int8", *onnx]


def test_fashion_mnist_is_a_valid_dataset_for_any_build():
    d = doc()
    d["builds"].append({"name": "fashion_cnn", "dataset": "fashion_mnist", "model": "cnn"})
    assert parse_params(d).datasets == ("mnist", "fashion_mnist")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(ParamsError, match="not valid TOML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.toml")


def test_doit_refuses_bad_params_before_any_work(tmp_path):
    project = copy_project(tmp_path / "p")
    text = (project / "params" / "smoke.toml").read_text()
    (project / "params" / "smoke.toml").write_text(text.replace("[train]", "[train]\nepoch = 3"))
    proc = run_doit(project)
    assert proc.returncode != 0
    assert "train.epoch: unknown key" in proc.stderr
    assert not (project / "artifacts").exists()


def test_doit_refuses_a_default_board_missing_from_the_inventory(tmp_path):
    project = copy_project(tmp_path / "p")
    smoke = project / "params" / "smoke.toml"
    smoke.write_text(smoke.read_text().replace('default_boards = ["local"]',
                                               'default_boards = ["k9"]'))
    proc = run_doit(project)
    assert proc.returncode != 0
    assert "bench.default_boards names ['k9']" in proc.stderr


# Every numeric range at its boundary: the last accepted value and the first refused one.
@pytest.mark.parametrize("section, key, ok, bad, message", [
    ("train", "seed", 0, -1, "train.seed: must be in 0..4294967295"),
    ("train", "seed", 2**32 - 1, 2**32, "train.seed: must be in 0..4294967295"),
    ("convert", "seed", 0, -5, "convert.seed: must be in 0..4294967295"),
    ("convert", "seed", 2**32 - 1, 2**63 - 1, "convert.seed: must be in 0..4294967295"),
    ("layers", "seed", 2**32 - 1, 2**32, "layers.seed: must be in 0..4294967295"),
    ("train", "epochs", 1000, 1001, "train.epochs: must be in 1..1000"),
    ("train", "epochs", 1, 0, "train.epochs: must be in 1..1000"),
    ("convert", "representative_samples", 10_000, 10_001,
     "convert.representative_samples: must be in 10..10000"),
    ("convert", "representative_samples", 10, 9,
     "convert.representative_samples: must be in 10..10000"),
])
def test_numeric_ranges_hold_at_their_boundaries(section, key, ok, bad, message):
    d = doc()
    d[section][key] = ok
    assert getattr(getattr(parse_params(d), section), key) == ok
    d[section][key] = bad
    with pytest.raises(ParamsError) as err:
        parse_params(d)
    assert message in str(err.value) and str(bad) in str(err.value)


def test_builds_are_capped_and_looked_up_by_name():
    from pipeline.core.params import MAX_BUILDS

    d = doc()
    template = d["builds"][0]
    d["builds"] = [{**template, "name": f"b{i}"} for i in range(MAX_BUILDS)]
    params = parse_params(d)
    assert params.build("b0") is params.builds[0]
    assert params.build(f"b{MAX_BUILDS - 1}") is params.builds[-1]
    d["builds"].append({**template, "name": "one_too_many"})
    with pytest.raises(ParamsError, match=f"builds: 1,001 .*at most {MAX_BUILDS:,} per params"):
        parse_params(d)
DECLARED = {"name": "bars", "format": "npz", "files": ["data/bars.npz"], "sha256": ["a" * 64],
            "class_names": ["x", "y"], "framing": "object"}


def test_declared_dataset_and_user_models(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kws.py").write_text("def build(s, n): pass\n")
    (tmp_path / "given.h5").write_bytes(b"")
    d = doc()
    d["datasets"] = [dict(DECLARED)]
    d["builds"] = [{"name": "own", "dataset": "bars", "model": "models/kws.py:build"},
                   {"name": "given", "dataset": "mnist", "model": "given.h5",
                    "fine_tune": False, "max_parameters": 10}]
    params = parse_params(d, tmp_path)
    spec = params.dataset_specs()["bars"]
    assert spec.format == "npz" and spec.archive.name == "bars.npz"
    assert spec.archive.location == str(tmp_path / "data") and spec.framing == "object"
    assert params.datasets == ("bars", "mnist")
    assert params.model_source("own").file == tmp_path / "models" / "kws.py"
    assert params.model_source("given").kind == "saved"
    assert params.build("given").max_parameters == 10


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["datasets"][0].update(format="csv"), r"datasets\[bars\].format: must be one of"),
    (lambda d: d["datasets"][0].update(files=["a.npz", "b.npz"]),
     r"datasets\[bars\].files: format 'npz' takes 1 file"),
    (lambda d: d["datasets"][0].update(format="idx"),
     r"takes 4 file\(s\) \(train images, train labels, test images, test labels"),
    (lambda d: d["datasets"][0].update(sha256=["abc"]), "'abc' is not a SHA-256"),
    (lambda d: d["datasets"][0].update(sha256=[]), "1 file.s., 0 checksum"),
    (lambda d: d["datasets"][0].update(class_names=["x"]), "at least 2 distinct"),
    (lambda d: d["datasets"][0].update(framing="centre"), r"framing: must be one of \['digit'"),
    (lambda d: d["datasets"][0].update(name="mnist"), "'mnist' is a built-in dataset"),
    (lambda d: d["datasets"][0].update(labels=[]), r"datasets.labels: unknown key"),
    (lambda d: d["builds"][0].update(dataset="barz"),
     r"unknown dataset 'barz'; choose from \['bars', 'fashion_mnist', 'mnist'\]"),
    (lambda d: d["builds"][0].update(model="models/none.py:build"), r"builds\[mnist_cnn\].model: "
     r"'models/none.py:build': no file"),
    (lambda d: d["builds"][0].update(fine_tune=False), r"builds\[mnist_cnn\].fine_tune: false "
     "converts a saved model"),
    (lambda d: d["builds"][0].update(max_parameters=0), "max_parameters: must be >= 1"),
])
def test_bad_declarations_name_the_key(mutate, message, tmp_path):
    d = doc()
    d["datasets"] = [dict(DECLARED)]
    mutate(d)
    with pytest.raises(ParamsError, match=message):
        parse_params(d, tmp_path)
