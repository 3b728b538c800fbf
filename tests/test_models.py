"""Your own model and your own data: model references (pipeline/core/models.py), the checks the
train stage makes on a user's model, and one real `doit` run of the whole graph with a user
model from a file and a dataset declared in the params file."""

import hashlib
import json
import textwrap

import numpy as np
import pytest

from pipeline.core.models import ModelSourceError, resolve
from tests.conftest import REPO, copy_project, executed_tasks, run_doit, synthetic_images
from tests.project import BUILD_STAGES

TINY_MODEL = '''
import keras
from keras import layers


def build(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape, name="image"),
        layers.Rescaling(1 / 255, name="rescale"),
        layers.Flatten(name="flatten"),
        layers.Dense({units}, activation="relu", name="hidden"),
        layers.Dense(num_classes, activation="softmax", name="classes"),
    ], name="tiny")
'''


def bars_npz(path, classes=4, n_train=600, n_test=200):
    """A learnable dataset in the user's .npz format: a bright bar at a class-specific row."""
    rng = np.random.default_rng(5)
    y_train, y_test = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=synthetic_images(y_train, 1), y_train=y_train.astype(np.int64),
             x_test=synthetic_images(y_test, 2), y_test=y_test.astype(np.int64))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_params(digest, builds):
    """params/smoke.toml with a declared dataset and the given [[builds]] instead of its own."""
    # The preset holds no [[builds]] (the defaults): these replace them.
    head = (REPO / "params" / "smoke.toml").read_text()
    declared = textwrap.dedent(f'''
        [[datasets]]
        name = "bars"
        format = "npz"
        files = ["data/bars.npz"]
        sha256 = ["{digest}"]
        class_names = ["top", "upper", "lower", "bottom"]
        framing = "object"
        ''')
    return head + declared + "".join(
        f'\n[[builds]]\nname = "{name}"\ndataset = "bars"\nmodel = "{model}"\n'
        for name, model in builds)


def test_references_resolve_to_their_files(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kws.py").write_text("def build(s, n): pass\n")
    (tmp_path / "net.keras").write_bytes(b"")
    assert resolve("cnn", tmp_path).kind == "builtin"
    own = resolve("models/kws.py:build", tmp_path)
    assert (own.kind, own.file, own.function) == ("callable", tmp_path / "models" / "kws.py",
                                                  "build")
    module = resolve("pipeline.stages.train:build_model", tmp_path)
    assert module.kind == "callable" and module.file == REPO / "pipeline" / "stages" / "train.py"
    assert resolve("net.keras", tmp_path).file == tmp_path / "net.keras"
    for bad, why in [("models/nope.py:build", "no file"), ("models/kws.py:9x", "function name"),
                     ("no_such_pkg.models:build", "no importable module"),
                     ("my_model.h5", "no file"), ("resnet", "unknown model")]:
        with pytest.raises(ModelSourceError, match=why):
            resolve(bad, tmp_path)


def test_whole_graph_with_a_user_model_from_a_file_and_a_declared_dataset(tmp_path):
    project = copy_project(tmp_path / "project")
    digest = bars_npz(project / "data" / "bars.npz")
    (project / "models").mkdir()
    (project / "models" / "tiny.py").write_text(TINY_MODEL.format(units=16))
    (project / "models" / "other.py").write_text(TINY_MODEL.format(units=8))
    (project / "user.toml").write_text(user_params(
        digest, [("bars_tiny", "models/tiny.py:build"), ("bars_other", "models/other.py:build")]))
    env = {"PIPELINE_PARAMS": "user.toml"}
    first = run_doit(project, env=env)
    (tmp_path / "console.log").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ran = executed_tasks(first.stdout)
    for build in ("bars_tiny", "bars_other"):
        assert {f"{stage}:{build}" for stage in ("train", "convert", "evaluate", "card")} <= ran
    assert {"download:bars", "preprocess:bars", "bench:local"} <= ran
    art = project / "artifacts"
    report = json.loads((art / "reports" / "bars_tiny" / "accuracy.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert report["dataset"] == "bars" and report["test_samples"] == 200
    assert rows["keras"]["accuracy"] > 0.9 and rows["int8"]["agreement"] > 0.9
    assert set(rows["keras"]["per_class_accuracy"]) == {"top", "upper", "lower", "bottom"}
    history = json.loads((art / "models" / "bars_tiny" / "history.json").read_text())
    assert history["model"] == "models/tiny.py:build" and history["layer_names_stable"]
    card = json.loads((art / "models" / "bars_tiny" / "model_card.json").read_text())
    assert card["input"]["framing"]["fit_box"] == 28  # the declared "object" framing
    assert card["output"]["class_names"] == ["top", "upper", "lower", "bottom"]
    assert history["parameters"] == 28 * 28 * 16 + 16 + 16 * 4 + 4
    latency = json.loads((art / "reports" / "latency.json").read_text())
    assert {(r["build"], r["variant"]) for r in latency["rows"]} == {
        (b, v) for b in ("bars_tiny", "bars_other")
        for v in ("float32", "int8", "onnx_float32", "onnx_int8", "onnx_int8_tflite")}
    assert all(r["agreement"] == 1.0 for r in latency["rows"])
    # The declared file was verified and cached like MNIST's archives.
    assert (art / "data" / "bars" / "raw" / "bars.npz").read_bytes() == (
        project / "data" / "bars.npz").read_bytes()

    # Editing the user's file retrains that build and no other.
    (project / "models" / "tiny.py").write_text(TINY_MODEL.format(units=12))
    # Every per-build stage, not the bench (which the first run tested): which builds'
    # tasks rerun is the question.
    second = run_doit(project, *BUILD_STAGES, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ran = executed_tasks(second.stdout)
    assert "train:bars_tiny" in ran and "convert:bars_tiny" in ran
    assert not {t for t in ran if t.endswith(":bars_other")}, ran
    assert f"bars_tiny.h5: {28 * 28 * 12 + 12 + 12 * 4 + 4:,} parameters" in second.stdout


def test_a_build_whose_dataset_no_mirror_has_does_not_block_the_others(tmp_path):
    project = copy_project(tmp_path / "project")
    digest = bars_npz(project / "data" / "bars.npz")
    (project / "models").mkdir()
    (project / "models" / "tiny.py").write_text(TINY_MODEL.format(units=8))
    params = user_params(digest, [("bars_tiny", "models/tiny.py:build"),
                                  ("gone_tiny", "models/tiny.py:build")])
    params = params.replace('\n[[builds]]\nname = "gone_tiny"\ndataset = "bars"',
                            '\n[[builds]]\nname = "gone_tiny"\ndataset = "gone"')
    params += textwrap.dedent(f'''
        [[datasets]]
        name = "gone"
        format = "npz"
        files = ["nowhere/gone.npz"]
        sha256 = ["{digest}"]
        class_names = ["top", "upper", "lower", "bottom"]
        framing = "object"
        ''')
    (project / "user.toml").write_text(params)
    # Not even --continue: the missing dataset's download runs last.
    proc = run_doit(project, env={"PIPELINE_PARAMS": "user.toml"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the missing dataset is still a failure
    assert "UnmetDependency" not in out, out[-3000:]
    ran = executed_tasks(proc.stdout)
    assert {"train:bars_tiny", "evaluate:bars_tiny", "bench:local", "download:gone"} <= ran
    assert not {t for t in ran if t.endswith(":gone_tiny")}
    latency = json.loads((project / "artifacts" / "reports" / "latency.json").read_text())
    assert {r["build"] for r in latency["rows"]} == {"bars_tiny"}
    named = [line for line in out.splitlines() if line.startswith("bench:local: not timing")]
    assert len(named) == 1 and "gone_tiny" in named[0] and "gone.npz" in named[0]
    assert "could not download gone/gone.npz" in out
