import dataclasses

import numpy as np
import pytest

from pipeline.core.params import load_params
from pipeline.stages.preprocess import preprocess
from pipeline.core.datasets import MNIST
from pipeline.stages.train import (build_model, load_model, run, save_model, split_train_validation,
                            train_model)
from tests.conftest import REPO


def test_cnn_is_the_k1_tutorial_model():
    model = build_model("cnn", (28, 28), 10)
    assert model.count_params() == 93_322
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Rescaling", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "Flatten", "Dense", "Dense"]


def test_mlp_shape():
    model = build_model("mlp", (28, 28), 10)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling", "Flatten", "Dense", "Dropout", "Dense"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


def test_split_is_seeded_disjoint_and_capped():
    train, val = split_train_validation(1000, 0.1, 0, seed=3)
    assert len(train) == 900 and len(val) == 100 and not set(train) & set(val)
    again, _ = split_train_validation(1000, 0.1, 0, seed=3)
    assert np.array_equal(train, again)
    capped, capped_val = split_train_validation(1000, 0.1, 200, seed=3)
    assert len(capped) + len(capped_val) == 200


@pytest.fixture(scope="module")
def tiny_arrays(tiny_dataset_dir):
    return preprocess(MNIST, tiny_dataset_dir)


def test_same_params_give_the_same_weights(tiny_arrays):
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, batch_size=64)
    first, history, stable = train_model("mlp", tiny_arrays, params, verbose=0)
    assert stable  # the built-ins name every layer
    second, _, _ = train_model("mlp", tiny_arrays, params, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    other, _, _ = train_model("mlp", tiny_arrays, dataclasses.replace(params, seed=99),
                              verbose=0)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_run_writes_h5_and_history_and_reloads(tiny_arrays, tmp_path):
    from pipeline.stages.preprocess import save_arrays

    save_arrays(tmp_path / "d.npz", tiny_arrays)
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, epochs=3, batch_size=32)
    record = run("cnn", tmp_path / "d.npz", params, tmp_path / "m" / "m.h5",
                 tmp_path / "m" / "history.json")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["history.json", "m.h5"]
    assert record["parameters"] == 93_322 and len(record["history"]["loss"]) == 3
    # The synthetic classes are easy: training must actually learn them.
    assert record["history"]["val_accuracy"][-1] > 0.9
    reloaded = load_model(tmp_path / "m" / "m.h5")
    x = tiny_arrays["x_test"][:8, ..., None].astype(np.float32)
    assert reloaded.predict(x, verbose=0).shape == (8, 10)


def test_save_writes_the_whole_file_at_once_and_the_same_bytes_each_time(tmp_path):
    model = build_model("mlp", (28, 28), 10)
    save_model(model, tmp_path / "a.h5")
    save_model(model, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]  # no temporaries
    reloaded = load_model(tmp_path / "a.h5")
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(),
                                                    model.get_weights()))


def test_tensorboard_logs_are_written_and_leave_the_weights_unchanged(tiny_arrays, tmp_path):
    from pipeline.stages.preprocess import save_arrays

    save_arrays(tmp_path / "d.npz", tiny_arrays)
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, epochs=2, batch_size=64)
    logs = tmp_path / "logs" / "b"
    (logs / "stale").mkdir(parents=True)  # a previous training's logs are replaced
    weights, histories = {}, {}
    for tensorboard in (False, True):
        out = tmp_path / str(tensorboard)
        record = run("mlp", tmp_path / "d.npz", dataclasses.replace(params, tensorboard=tensorboard),
                     out / "m.h5", out / "history.json", logs)
        if not tensorboard:
            assert (logs / "stale").exists()  # off: the log directory is not touched
        weights[tensorboard] = load_model(out / "m.h5").get_weights()
        histories[tensorboard] = record["history"]
    events = sorted(p.relative_to(logs).parts[0] for p in logs.rglob("events.out.tfevents.*"))
    assert events == ["train", "validation"]
    assert not (logs / "stale").exists()
    assert all(np.array_equal(a, b) for a, b in zip(weights[False], weights[True]))
    assert histories[False] == histories[True]


def test_layer_names_do_not_depend_on_what_was_built_before():
    # The per-layer report names tensors after layers, and build.float_layers quotes them.
    first = [layer.name for layer in build_model("cnn", (28, 28), 10).layers]
    build_model("mlp", (28, 28), 10)
    assert [layer.name for layer in build_model("cnn", (28, 28), 10).layers] == first


def test_a_full_disk_keeps_no_history_without_its_model(tiny_arrays, tmp_path, small_disk):
    from pipeline.core.files import DiskFullError
    from pipeline.stages.preprocess import save_arrays

    save_arrays(tmp_path / "d.npz", tiny_arrays)
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, epochs=1, batch_size=64)
    # Room for history.json (a few KiB) but not for the CNN's .h5 (~1.1 MiB with Adam's slots).
    disk = small_disk(256)
    with pytest.raises(DiskFullError, match=r"^no space left on the device writing "
                                            rf"{disk / 'm' / 'm.h5'}: .*need more than"):
        run("cnn", tmp_path / "d.npz", params, disk / "m" / "m.h5", disk / "m" / "history.json")
    assert list((disk / "m").iterdir()) == []  # neither the history nor a partial .h5


def test_a_truncated_h5_names_the_task_that_rebuilds_it(tmp_path):
    from pipeline.stages.train import TrainError

    good = tmp_path / "good.h5"
    save_model(build_model("mlp", (28, 28), 10), good)
    cut = tmp_path / "mnist_mlp.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TrainError, match=rf"^{cut}: cannot be read as a Keras model \(.*truncated"
                                         r".*\): rebuild it with `doit forget train:mnist_mlp && "
                                         r"doit train:mnist_mlp`$"):
        load_model(cut)
    with pytest.raises(FileNotFoundError):  # a missing file stays what it is
        load_model(tmp_path / "missing.h5")


# --- the user's own model -------------------------------------------------------------------

USER_MODEL = '''
import keras
from keras import layers
COUNTER = [0]


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape, name="image"),
                             layers.Rescaling(1 / 255, name="rescale"),
                             layers.Flatten(name="flatten"),
                             layers.Dense(num_classes, activation="softmax", name="classes")])


def unnamed(input_shape, num_classes):
    # Default names: Keras numbers them from a process-wide counter.
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                             layers.Dense(num_classes, activation="softmax")])


def drifting(input_shape, num_classes):
    COUNTER[0] += 1  # the user's own process state in a name
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(name="f"),
                             layers.Dense(num_classes, activation="softmax",
                                          name=f"out{COUNTER[0]}")])


def not_a_model(input_shape, num_classes):
    return "a string"


def wide_input(input_shape, num_classes):
    return keras.Sequential([keras.Input((32, 32, 1)), layers.Flatten(),
                             layers.Dense(num_classes, activation="softmax")])


def three_classes(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                             layers.Dense(3, activation="softmax")])


def logits(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                             layers.Dense(num_classes)])


def big(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                             layers.Dense(2, name="d"),
                             layers.Dense(num_classes, activation="softmax", name="c")])


class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def custom_layer(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), Doubling(name="twice"), layers.Flatten(),
                             layers.Dense(num_classes, activation="softmax")])
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "mine.py"
    path.write_text(USER_MODEL)
    return path


def source(user_file, function):
    from pipeline.core.models import resolve

    return resolve(f"mine.py:{function}", user_file.parent)


@pytest.mark.parametrize("function, limit, message", [
    ("nope", 10**6, r"has no function 'nope' \(it defines: big, build, custom_layer"),
    ("not_a_model", 10**6, "returned str, not a keras.Model"),
    ("wide_input", 10**6, r"input shape \(32, 32, 1\) does not match the dataset's images "
                          r"\(28, 28, 1\)"),
    ("three_classes", 10**6, r"output shape \(3,\) does not match the dataset's 10 classes"),
    ("logits", 10**6, "not probabilities .* end the model with a softmax"),
    ("custom_layer", 10**6, r"layer\(s\) twice \(.*Doubling\) are not built-in Keras layers"),
    # 784*2+2 + 2*10+10 = 1,600 parameters: the limit's boundary.
    ("big", 1599, "1,600 parameters, more than this build's limit max_parameters = 1,599"),
])
def test_user_model_errors_name_the_cause(user_file, function, limit, message):
    from pipeline.stages.train import TrainError, make_model

    with pytest.raises(TrainError, match=message):
        make_model(source(user_file, function), (28, 28), 10, limit)


def test_user_model_at_its_limit_and_name_stability(user_file):
    from pipeline.stages.train import make_model

    model, stable = make_model(source(user_file, "big"), (28, 28), 10, 1600)
    assert model.count_params() == 1600 and stable
    # Default names are stable too: each call gets a fresh Keras session.
    assert make_model(source(user_file, "unnamed"), (28, 28), 10)[1]
    # A name from the user's own counter is not, and is reported.
    assert not make_model(source(user_file, "drifting"), (28, 28), 10)[1]


def test_user_model_trains_reproducibly_whatever_was_built_before(tiny_arrays, tmp_path,
                                                                  user_file):
    from pipeline.stages.preprocess import save_arrays

    save_arrays(tmp_path / "d.npz", tiny_arrays)
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, batch_size=64)
    first = run(source(user_file, "unnamed"), tmp_path / "d.npz", params, tmp_path / "a" / "m.h5",
                tmp_path / "a" / "history.json")
    build_model("cnn", (28, 28), 10)  # what this process built before must not matter
    run(source(user_file, "unnamed"), tmp_path / "d.npz", params, tmp_path / "b" / "m.h5",
        tmp_path / "b" / "history.json")
    assert (tmp_path / "a" / "m.h5").read_bytes() == (tmp_path / "b" / "m.h5").read_bytes()
    # Default names as in a fresh session (what the user's own `build()` call would give),
    # so the per-layer report's names, which float_layers quotes, are predictable.
    assert [layer.name for layer in load_model(tmp_path / "a" / "m.h5").layers] == [
        "flatten", "dense"]
    assert first["model"] == "mine.py:unnamed" and first["layer_names_stable"]


def test_saved_model_is_converted_as_it_is_or_fine_tuned(tiny_arrays, tmp_path):
    from pipeline.core.models import resolve
    from pipeline.stages.preprocess import save_arrays

    save_arrays(tmp_path / "d.npz", tiny_arrays)
    saved = build_model("mlp", (28, 28), 10)
    saved.save(tmp_path / "given.keras")
    params = dataclasses.replace(load_params(REPO / "params" / "smoke.toml").train,
                                 max_train_samples=0, batch_size=64)
    given = resolve("given.keras", tmp_path)
    record = run(given, tmp_path / "d.npz", params, tmp_path / "as_is" / "m.h5",
                 tmp_path / "as_is" / "history.json", fine_tune=False)
    assert record["history"] == {} and not record["trained"]
    kept = load_model(tmp_path / "as_is" / "m.h5").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, saved.get_weights()))
    tuned = run(given, tmp_path / "d.npz", params, tmp_path / "tuned" / "m.h5",
                tmp_path / "tuned" / "history.json")
    assert len(tuned["history"]["loss"]) == params.epochs
    changed = load_model(tmp_path / "tuned" / "m.h5").get_weights()
    assert not np.array_equal(changed[0], saved.get_weights()[0])


EXITING_MODEL = '''
import os
import sys


def exits(input_shape, num_classes):
    sys.exit(0)


def ends(input_shape, num_classes):
    os._exit(3)
'''


@pytest.mark.parametrize("function, how", [("exits", r"called sys.exit\(0\)"),
                                            ("ends", r"ended its process \(exit status 3\)")])
def test_a_user_model_that_exits_fails_the_task_naming_its_file(tiny_arrays, tmp_path,
                                                               function, how):
    # In doit's own process sys.exit(0) ended the build with status 0 and nothing built.
    from pipeline.core.models import resolve
    from pipeline.stages.preprocess import save_arrays
    from pipeline.stages.train import TrainError

    (tmp_path / "quits.py").write_text(EXITING_MODEL)
    save_arrays(tmp_path / "d.npz", tiny_arrays)
    params = load_params(REPO / "params" / "smoke.toml").train
    with pytest.raises(TrainError, match=rf"^{tmp_path / 'quits.py'}: importing it or calling "
                                         rf"{function}\(\) {how} instead of returning"):
        run(resolve(f"quits.py:{function}", tmp_path), tmp_path / "d.npz", params,
            tmp_path / "m" / "m.h5", tmp_path / "m" / "history.json")
    assert not (tmp_path / "m").exists()  # nothing written
