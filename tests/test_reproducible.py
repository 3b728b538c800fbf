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
