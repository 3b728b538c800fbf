"""End-to-end: real `doit` runs of the whole project in a temporary directory, on the real
MNIST served over HTTP from 127.0.0.1, with the smoke preset."""

import json
import shutil

from tests.conftest import copy_project, executed_tasks, run_doit

ALL_TASKS = {"download:mnist", "preprocess:mnist", "train:mnist_cnn", "train:mnist_mlp",
             "convert:mnist_cnn", "convert:mnist_mlp", "evaluate:mnist_cnn",
             "evaluate:mnist_mlp", "bench:local"}


def test_first_build_runs_every_task_and_writes_the_artifacts(smoke_project):
    assert executed_tasks((smoke_project / "first_run.log").read_text()) == ALL_TASKS
    art = smoke_project / "artifacts"
    for build in ("mnist_cnn", "mnist_mlp"):
        models = art / "models" / build
        assert {p.name for p in models.iterdir()} == {
            f"{build}.h5", "history.json", f"{build}_float32.tflite", f"{build}_int8.tflite"}
        report = json.loads((art / "reports" / build / "accuracy.json").read_text())
        assert report["build"] == build and report["dataset"] == "mnist"
        assert report["test_samples"] == 10_000
        rows = {v["name"]: v for v in report["variants"]}
        assert set(rows) == {"keras", "float32", "int8"}
        assert rows["keras"]["accuracy"] > 0.7  # one epoch on 3,000 images
        assert rows["float32"]["agreement"] >= 0.999
        assert abs(rows["int8"]["drift_pt"]) <= 5.0
        assert rows["int8"]["bytes"] < rows["float32"]["bytes"] / 3
        assert (art / "reports" / build / "accuracy.md").read_text().startswith("# Accuracy")
    latency = json.loads((art / "reports" / "latency.json").read_text())
    assert {(r["build"], r["variant"]) for r in latency["rows"]} == {
        (b, v) for b in ("mnist_cnn", "mnist_mlp") for v in ("float32", "int8")}
    assert all(r["agreement"] == 1.0 for r in latency["rows"])
    assert not list(art.rglob(".*partial*"))


def test_second_run_executes_nothing_and_never_imports_tensorflow(smoke_project):
    proc = run_doit(smoke_project, python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert executed_tasks(proc.stdout) == set()
    assert {line[3:] for line in proc.stdout.splitlines() if line.startswith("-- ")} == ALL_TASKS
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported or "doit" in imported  # the importtime trace is really there
    assert not any(name.startswith(("tensorflow", "keras")) for name in imported)


def test_convert_param_change_reruns_only_convert_and_downstream(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("representative_samples = 100",
                                               "representative_samples = 120"))
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # bench:local depends on the .tflite bytes, so it follows convert; nothing upstream runs.
    assert executed_tasks(proc.stdout) == {"convert:mnist_cnn", "convert:mnist_mlp",
                                           "evaluate:mnist_cnn", "evaluate:mnist_mlp",
                                           "bench:local"}

    proc = run_doit(project, "clean", "evaluate:mnist_cnn")
    assert proc.returncode == 0
    assert not (project / "artifacts" / "reports" / "mnist_cnn" / "accuracy.json").exists()
    assert (project / "artifacts" / "models" / "mnist_cnn" / "mnist_cnn_int8.tflite").exists()


def test_train_param_change_retrains_without_downloading(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("seed = 1234", "seed = 99", 1))
    proc = run_doit(project, "train")
    assert executed_tasks(proc.stdout) == {"train:mnist_cnn", "train:mnist_mlp"}


def test_artifacts_dir_is_movable_and_listing_reads_like_a_table_of_contents(tmp_path,
                                                                              mnist_url):
    project = copy_project(tmp_path / "p")
    listing = run_doit(project, "list")
    assert listing.returncode == 0
    assert {line.split()[0] for line in listing.stdout.splitlines()} == {
        "download", "preprocess", "train", "convert", "evaluate", "bench"}
    elsewhere = tmp_path / "elsewhere"
    proc = run_doit(project, "preprocess",
                    env={"PIPELINE_ARTIFACTS": str(elsewhere), "PIPELINE_MIRROR": mnist_url})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (elsewhere / "data" / "mnist" / "mnist.npz").exists()
    assert (elsewhere / ".doit.db").exists()
    assert not (project / "artifacts").exists()


def test_unreachable_mirror_fails_download_with_the_fix(tmp_path):
    project = copy_project(tmp_path / "p")
    # run_doit sets PIPELINE_OFFLINE=1: only the local mirror is tried, never the internet.
    proc = run_doit(project, "download", env={"PIPELINE_MIRROR": str(tmp_path / "empty")})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "could not download mnist/train-images-idx3-ubyte.gz from any mirror" in out
    assert f"{tmp_path / 'empty'}: No such file" in out and "PIPELINE_MIRROR=" in out
    assert "storage.googleapis.com" not in out
    assert not list((project / "artifacts" / "data" / "mnist" / "raw").glob("*"))


def test_every_task_depends_on_its_own_stage_module(monkeypatch):
    """Editing a stage's module reruns its tasks: each task lists that module in file_dep."""
    import importlib
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PIPELINE_PARAMS", "params/smoke.toml")
    import dodo

    dodo = importlib.reload(dodo)
    checked = set()
    for name in [n for n in dir(dodo) if n.startswith("task_")]:
        stage = name.removeprefix("task_")
        produced = getattr(dodo, name)()
        for task in [produced] if isinstance(produced, dict) else list(produced):
            functions = [args[0] for action, args in
                         (a for a in task["actions"] if isinstance(a, tuple)) if args]
            expected = {Path(sys.modules[fn.__module__].__file__).relative_to(REPO)
                        for fn in functions if fn.__module__.startswith("pipeline.")}
            if (REPO / "pipeline" / f"{stage}.py").exists():
                expected.add(Path("pipeline") / f"{stage}.py")
            deps = {Path(d) for d in task["file_dep"]}
            assert expected and expected <= deps, (name, task.get("name"), expected - deps)
            checked.add(stage)
    assert {"download", "preprocess", "train", "convert", "evaluate", "bench", "peak"} <= checked
