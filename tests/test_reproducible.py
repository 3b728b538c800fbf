"""Reproducible bytes: the same inputs give the same artifact files, whatever order or
grouping of tasks produced them (each build in its own cold artifact tree, real doit)."""

import hashlib

from tests.conftest import copy_project, executed_tasks, run_doit

BUILDS = ("mnist_cnn", "mnist_mlp")
MODEL_FILES = [f"models/{b}/{name}" for b in BUILDS
               for name in (f"{b}.h5", f"{b}_float32.tflite", f"{b}_int8.tflite")]


def test_task_order_and_grouping_do_not_change_any_model_byte(smoke_project, tmp_path,
                                                               mnist_url):
    # smoke_project was built by a plain `doit`: every task in the default order, one process.
    # Here: a cold tree, the MLP trained alone first, then both converted in the other order,
    # so Keras' process-wide name counters and the converter's state differ from the first.
    project = copy_project(tmp_path / "p")
    env = {"PIPELINE_MIRROR": mnist_url}
    first = run_doit(project, "train:mnist_mlp", env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = run_doit(project, "convert:mnist_mlp", "convert:mnist_cnn", env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "train:mnist_cnn" in executed_tasks(second.stdout)

    different = []
    for name in MODEL_FILES:
        a = (smoke_project / "artifacts" / name).read_bytes()
        b = (project / "artifacts" / name).read_bytes()
        if a != b:
            different.append(f"{name}: {len(a):,} B sha256 {hashlib.sha256(a).hexdigest()[:12]}"
                             f" vs {len(b):,} B sha256 {hashlib.sha256(b).hexdigest()[:12]}")
    assert not different, "\n".join(different)
    # Not pinned: history.json holds the measured training seconds, which differ by design.


def test_building_saving_and_converting_twice_in_one_process_gives_the_same_bytes(tmp_path):
    # What doit does when one process handles several builds: the second model is made
    # after the first has used Keras' name counters and the converter once already.
    import keras
    import numpy as np

    from pipeline.stages.convert import convert
    from pipeline.stages.train import build_model, load_model, save_model

    representative = np.random.default_rng(0).integers(0, 256, (20, 28, 28)).astype(np.uint8)
    files = []
    for attempt in range(2):
        keras.utils.set_random_seed(1)
        save_model(build_model("cnn", (28, 28), 10), tmp_path / f"{attempt}.h5")
        model = load_model(tmp_path / f"{attempt}.h5")
        files.append([(tmp_path / f"{attempt}.h5").read_bytes(),
                      convert(model, "float32"), convert(model, "int8", representative)])
    assert files[0] == files[1]
