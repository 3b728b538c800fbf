"""End-to-end: real `doit` runs of the whole project in a temporary directory, on the real
MNIST served over HTTP from 127.0.0.1, with the smoke preset."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import copy_project, executed_tasks, run_doit, third_party_notices
from tests.project import BUILD_STAGES, edit_params

ALL_TASKS = {"download:mnist", "preprocess:mnist", "train:mnist_cnn", "train:mnist_mlp",
             "convert:mnist_cnn", "convert:mnist_mlp", "evaluate:mnist_cnn",
             "evaluate:mnist_mlp", "curves:mnist_cnn", "curves:mnist_mlp",
             "analysis:mnist_cnn", "analysis:mnist_mlp", "layers:mnist_cnn", "layers:mnist_mlp",
             "card:mnist_cnn", "card:mnist_mlp", "peak", "bench:local",
             "convert_onnx:mnist_cnn", "convert_onnx:mnist_mlp", "translate_onnx:mnist_cnn",
             "translate_onnx:mnist_mlp", "params"}
ONNX = ("onnx_float32", "onnx_int8", "onnx_int8_tflite")


def test_first_build_runs_every_task_and_writes_the_artifacts(smoke_project):
    assert executed_tasks((smoke_project / "first_run.log").read_text()) == ALL_TASKS
    art = smoke_project / "artifacts"
    for build in ("mnist_cnn", "mnist_mlp"):
        models = art / "models" / build
        assert {p.name for p in models.iterdir()} == {
            f"{build}.h5", "history.json", f"{build}_float32.tflite", f"{build}_int8.tflite",
            *(f"{build}_{v}.onnx" for v in ONNX), "model_card.json", "model_card.md"}
        report = json.loads((art / "reports" / build / "accuracy.json").read_text())
        assert report["build"] == build and report["dataset"] == "mnist"
        assert report["test_samples"] == 10_000
        rows = {v["name"]: v for v in report["variants"]}
        assert set(rows) == {"keras", "float32", "int8", *ONNX}
        # the ONNX rows are compared with the int8 .tflite too
        assert rows["onnx_int8_tflite"]["agreement_with"]["int8"] >= 0.999
        assert rows["onnx_int8"]["agreement_with"]["int8"] >= 0.99
        assert rows["onnx_float32"]["agreement"] >= 0.999
        assert rows["keras"]["accuracy"] > 0.7  # one epoch on 3,000 images
        assert rows["float32"]["agreement"] >= 0.999
        assert abs(rows["int8"]["drift_pt"]) <= 5.0
        assert rows["int8"]["bytes"] < rows["float32"]["bytes"] / 3
        assert (art / "reports" / build / "accuracy.md").read_text().startswith("# Accuracy")
    latency = json.loads((art / "reports" / "latency.json").read_text())
    assert {(r["build"], r["variant"]) for r in latency["rows"]} == {
        (b, v) for b in ("mnist_cnn", "mnist_mlp") for v in ("float32", "int8", *ONNX)}
    assert all(r["agreement"] == 1.0 for r in latency["rows"])
    runtimes = {r["variant"]: r["runtime"] for r in latency["rows"]}
    assert all(runtimes[v].startswith("onnxruntime") for v in ONNX)
    assert runtimes["int8"].startswith("ai_edge_litert")
    assert not list(art.rglob(".*partial*"))
    from PIL import Image

    for build in ("mnist_cnn", "mnist_mlp"):
        with Image.open(art / "reports" / build / "training.png") as png:
            assert png.format == "PNG" and png.size == (1000, 400)


def test_build_stages_are_every_per_build_task_family():
    """BUILD_STAGES (the rebuild tests' targets) names every task family but the bench."""
    assert set(BUILD_STAGES) == {t.split(":")[0] for t in ALL_TASKS if ":" in t} - {"bench"}


def test_default_build_prints_only_the_pipelines_own_lines(smoke_project):
    out = (smoke_project / "first_run.log").read_text()
    err = (smoke_project / "first_run.err").read_text()
    for noise in ("oneDNN", "I0000", "W0000", "WARNING", "Saved artifact", "Captures:",
                  "legacy", "Statistics for quantized inputs", "fully_quantize", "XNNPACK",
                  "SavedModel", "Traceback"):
        assert noise not in out and noise not in err, noise
    # stderr carries progress only (download bytes, benchmark cases); training shows one
    # line per epoch.
    assert all(re.fullmatch(r"\S+\.gz: \d+ % of [\d,]+ bytes|bench:local \[\d+/\d+\] .*", line)
               for line in err.splitlines()), err[-2000:]
    assert len([line for line in out.splitlines() if re.match(r"\d+/\d+ - ", line)]) == 2
    assert "mnist_cnn_int8.tflite: " in out and "# Accuracy drift: mnist_cnn" in out
    assert re.search(r"mnist_cnn_onnx_int8_tflite\.onnx: outputs equal LiteRT's bit for bit on "
                     r"[\d,]+ of 10,000 test images", out)
    assert "bench:local [1/" in out + err  # benchmark progress as each case finishes


def test_second_run_executes_nothing_and_never_imports_tensorflow(smoke_project):
    proc = run_doit(smoke_project, python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert executed_tasks(proc.stdout) == set()
    assert {line[3:] for line in proc.stdout.splitlines() if line.startswith("-- ")} == ALL_TASKS
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "doit" in imported  # the importtime trace is really there
    # Stage modules (numpy, 0.2 s) are imported only when a task runs; matplotlib and Pillow
    # only when a chart is drawn.
    # absl (TensorFlow's logger, 13 ms) too: it is set up when a stage first runs.
    heavy = ("tensorflow", "keras", "numpy", "matplotlib", "PIL", "tabulate", "absl", "onnx",
             "onnxruntime", "tf2onnx", "sympy")
    assert not [name for name in imported if name.startswith(heavy)]


def test_convert_param_change_reruns_only_convert_and_downstream(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    smoke.write_text(smoke.read_text().replace("representative_samples = 100",
                                               "representative_samples = 120"))
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # bench:local depends on the .tflite bytes, so it follows convert; nothing upstream runs.
    # convert_onnx calibrates on the same draw; translate_onnx follows the int8 .tflite.
    # curves follow evaluate because the int8 rows of accuracy.json changed; layers
    # recalibrates with [convert]; analysis and card read the new .tflite files.
    assert executed_tasks(proc.stdout) == {f"{task}:{build}" for build in ("mnist_cnn", "mnist_mlp")
                                           for task in ("convert", "evaluate", "curves",
                                                        "analysis", "layers", "card",
                                                        "convert_onnx", "translate_onnx")
                                           } | {"bench:local", "params"}

    proc = run_doit(project, "clean", "evaluate:mnist_cnn")
    assert proc.returncode == 0
    assert not (project / "artifacts" / "reports" / "mnist_cnn" / "accuracy.json").exists()
    for task, made in (("analysis", "confusion.png"), ("layers", "layers.csv")):
        assert run_doit(project, "clean", f"{task}:mnist_cnn").returncode == 0
        assert not (project / "artifacts" / "reports" / "mnist_cnn" / made).exists()
    assert run_doit(project, "clean", "card:mnist_cnn").returncode == 0
    assert not (project / "artifacts" / "models" / "mnist_cnn" / "model_card.json").exists()
    assert (project / "artifacts" / "models" / "mnist_cnn" / "mnist_cnn_int8.tflite").exists()


def test_tflite_and_onnx_changes_redo_only_their_own_models_and_onnx_can_be_off(
        smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    models = project / "artifacts" / "models"
    builds = ("mnist_cnn", "mnist_mlp")
    # The first two changes are asked of the three model-making task families only: which
    # of them reruns is the question. evaluate, analysis, layers and bench would redo their
    # work (half a minute a change) only to redo it after the third change, which runs the
    # whole graph. Named as targets, doit still checks each of these tasks' dependencies.
    makers = ("convert", "convert_onnx", "translate_onnx")
    # A TFLite-only change: an extra variant. The int8 bytes stay, so nothing is translated.
    edit_params(smoke, {"convert.extra_variants": ["float16"]})
    proc = run_doit(project, *makers)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ran = executed_tasks(proc.stdout)
    assert {f"convert:{b}" for b in builds} <= ran
    assert not {t for t in ran if t.startswith(("convert_onnx", "translate_onnx"))}
    # An ONNX-only change: the converter's module. No .tflite is redone.
    stage = project / "pipeline" / "stages" / "convert_onnx.py"
    stage.write_text(stage.read_text() + "\n# edited\n")
    proc = run_doit(project, *makers)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ran = executed_tasks(proc.stdout)
    assert {f"{t}:{b}" for t in ("convert_onnx", "translate_onnx") for b in builds} <= ran
    assert not {t for t in ran if t.startswith("convert:")}

    # Off: no ONNX task, no ONNX file, no ONNX row. convert removes the .onnx files the
    # build no longer ships (its variant list changed) and writes the same .tflite bytes.
    tflite = {p: p.read_bytes() for p in models.glob("*/*.tflite")}
    edit_params(smoke, {"convert.onnx": False})
    listing = run_doit(project, "list", "--all")
    assert "onnx" not in listing.stdout
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    removed = [line for line in proc.stdout.splitlines() if ".onnx: removed" in line]
    assert len(removed) == 3 * len(builds), proc.stdout[-3000:]
    assert not list(models.rglob("*.onnx"))
    assert {p: p.read_bytes() for p in models.glob("*/*.tflite")} == tflite
    again = run_doit(project)
    assert "onnx" not in again.stdout and executed_tasks(again.stdout) == set()
    for build in builds:
        accuracy = json.loads((project / "artifacts" / "reports" / build /
                               "accuracy.json").read_text())
        card = json.loads((models / build / "model_card.json").read_text())
        for names in ([v["name"] for v in accuracy["variants"]],
                      [v["name"] for v in card["variants"]]):
            assert names == ["keras", "float32", "int8", "float16"]
        assert "onnx" not in (project / "artifacts" / "reports" / build /
                              "analysis.md").read_text()


def test_train_param_change_retrains_without_downloading(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    edit_params(smoke, {"train.seed": 99})
    proc = run_doit(project, "train")
    assert executed_tasks(proc.stdout) == {"train:mnist_cnn", "train:mnist_mlp"}


def test_artifacts_dir_is_movable_and_listing_reads_like_a_table_of_contents(tmp_path,
                                                                              mnist_url):
    project = copy_project(tmp_path / "p")
    listing = run_doit(project, "list")
    assert listing.returncode == 0
    assert {line.split()[0] for line in listing.stdout.splitlines()} == {
        "download", "preprocess", "train", "convert", "evaluate", "curves", "analysis",
        "layers", "card", "peak", "bench", "convert_onnx", "translate_onnx", "params"}
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


def load_declarations(monkeypatch):
    """The task declarations (pipeline/graph/tasks.py, which dodo.py gets directly or through
    the cached graph) loaded in-process with the smoke preset; its task_* functions give
    the dicts."""
    import importlib

    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PIPELINE_PARAMS", "params/smoke.toml")
    import pipeline.graph.tasks

    return importlib.reload(pipeline.graph.tasks)


def dodo_tasks(dodo):
    """Task family -> its task dicts."""
    out = {}
    for name in [n for n in dir(dodo) if n.startswith("task_")]:
        produced = getattr(dodo, name)()
        out[name.removeprefix("task_")] = [produced] if isinstance(produced, dict) else list(
            produced)
    return out


def code_of(dodo, task) -> list[str]:
    """The files whose bytes a task's up-to-date check covers (dodo._changed), each with
    the SHA-256 of its bytes as hashlib gives it."""
    import hashlib
    from pathlib import Path

    from pipeline.core.uptodate import CodeAndSettings

    [check] = [u for u in task["uptodate"] if isinstance(u, CodeAndSettings)]
    assert check.code == {rel: hashlib.sha256(Path(rel).read_bytes()).hexdigest()
                          for rel in check.code}
    return list(check.code)


def test_every_task_depends_on_the_code_it_runs(monkeypatch):
    """Each task's up-to-date check covers its action's module (computed from the imports,
    so it cannot drift from the code)."""
    dodo = load_declarations(monkeypatch)
    checked = set()
    for family, tasks in dodo_tasks(dodo).items():
        for task in tasks:
            functions = [args[0] for action, args in
                         (a for a in task["actions"] if isinstance(a, tuple)) if args]
            # dodo's _stage names its module without importing it; others are functions
            modules = [f"pipeline.{fn.module}" if hasattr(fn, "module") else fn.__module__
                       for fn in functions if callable(fn)]
            expected = {"/".join(m.split(".")) + ".py" for m in modules
                        if m.startswith("pipeline.")}
            code = set(code_of(dodo, task))
            assert expected and expected <= code, (family, task.get("name"), expected - code)
            checked.add(family)
    assert {"download", "preprocess", "train", "convert", "evaluate", "bench", "peak",
            "params", "curves", "card"} <= checked
    bench = next(t for t in dodo.task_bench() if t["name"] == "local")
    assert {f"pipeline/{m.replace('.', '/')}.py" for m in (
        "bench.session", "bench.report", "bench.floor", "core.boards", "core.runtimes")
    } <= set(code_of(dodo, bench))
    assert "board/runner.py" in {str(d) for d in bench["file_dep"]}  # loaded by path


def test_doit_takes_the_task_creators_in_file_order_without_reading_their_source(monkeypatch):
    """dodo.in_file_order: doit sorts task creators by the line inspect.getsourcelines finds,
    which for dodo's creators is 0 without tokenizing their source (~5 ms of every no-op
    run); the order doit makes the tasks in is still the file's."""
    import re

    from doit.loader import _get_task_creators, load_tasks

    from tests.conftest import REPO

    dodo = load_declarations(monkeypatch)
    assert {line for _, _, line in _get_task_creators(vars(dodo), ())} == {0}
    source = (REPO / "pipeline" / "graph" / "tasks.py").read_text()
    in_file = [m.group(1) or m.group(2) for m in re.finditer(
        r"^def task_(\w+)\(|^    task_(\w+) = ", source, re.M)]
    made = list(dict.fromkeys(task.name.split(":")[0] for task in load_tasks(vars(dodo))))
    assert made == [name for name in in_file if hasattr(dodo, f"task_{name}")]


# What declaring the tasks may import of the project (dodo.py on a first load, or after a
# change). Without bytecode (PYTHONDONTWRITEBYTECODE=1, as CI and sandboxes run) each of these
# is compiled whenever the graph is declared: a stage, the download's network code, files.py's
# writers or the events reporter (imported when PIPELINE_EVENTS is set) would be compiled for
# nothing. A load that finds the cached graph (every no-op `doit`) imports only CACHED_LOAD.
LOAD_TIME_MODULES = {"pipeline", "pipeline.core", "pipeline.core.boards",
                     "pipeline.core.codedeps", "pipeline.core.console",
                     "pipeline.core.datasets", "pipeline.core.formats", "pipeline.core.layout",
                     "pipeline.core.mirrors", "pipeline.core.models", "pipeline.core.params",
                     "pipeline.core.records", "pipeline.core.uptodate", "pipeline.core.variants",
                     "pipeline.graph", "pipeline.graph.cache", "pipeline.graph.tasks"}
CACHED_LOAD = {"pipeline", "pipeline.core", "pipeline.core.uptodate", "pipeline.graph",
               "pipeline.graph.cache"}


def test_loading_dodo_imports_only_the_load_time_modules(tmp_path):
    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_PARAMS="params/smoke.toml", PIPELINE_ARTIFACTS=str(tmp_path))
    loads = [subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import dodo; "
         "print(' '.join(m for m in sys.modules if m.startswith('pipeline')))"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True) for _ in range(2)]
    # The first declaring in a new tree walks every module's imports (no code-deps cache yet).
    assert [set(proc.stdout.split()) for proc in loads] == [
        LOAD_TIME_MODULES | {"pipeline.core.importscan"}, CACHED_LOAD]


def test_events_file_installs_the_reporter_under_the_events_modules_name(monkeypatch,
                                                                         tmp_path):
    """dodo.py spells PIPELINE_EVENTS itself (not importing the events module otherwise),
    and installs the reporter whether the tasks are declared or come from the cached graph."""
    import importlib

    from pipeline.core.events import EVENTS_ENV

    load_declarations(monkeypatch)
    monkeypatch.setenv("PIPELINE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    import dodo

    assert "reporter" not in importlib.reload(dodo).DOIT_CONFIG  # declared, and cached
    assert (tmp_path / "artifacts" / ".task-graph.json").is_file()
    monkeypatch.setenv(EVENTS_ENV, str(tmp_path / "events.jsonl"))
    config = importlib.reload(dodo).DOIT_CONFIG  # from the cached graph
    assert "pipeline.graph.cache" in repr(dodo.task_train.__wrapped__)
    assert str(tmp_path / "events.jsonl") in config["reporter"].desc


def test_the_keras_loaders_users_depend_on_it_and_curves_on_no_training(monkeypatch):
    """The edges the hand-written lists had lost (issue 22): convert, layers and evaluate
    call stages.train.load_model; and no training depends on the curves module."""
    from pathlib import Path

    dodo = load_declarations(monkeypatch)
    tasks = dodo_tasks(dodo)
    loader = "pipeline/stages/train.py"
    for family in ("convert", "layers", "evaluate", "analysis", "convert_onnx"):
        for task in tasks[family]:
            assert loader in code_of(dodo, task), (family, task["name"])
    curves = "pipeline/stages/curves.py"
    for family, family_tasks in tasks.items():
        if family != "curves":
            assert all(curves not in code_of(dodo, t) for t in family_tasks), family


def test_editing_the_keras_loader_outdates_its_users_and_curves_retrains_nothing(
        smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    curves = project / "pipeline" / "stages" / "curves.py"
    curves.write_text(curves.read_text() + "\n# edited\n")
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert executed_tasks(proc.stdout) == {"curves:mnist_cnn", "curves:mnist_mlp"}

    train = project / "pipeline" / "stages" / "train.py"
    train.write_text(train.read_text() + "\n# edited\n")
    # `doit info` says whether a task would run and which dependency changed (its exit
    # status is 1 for a task that would run).
    changed = "changed since the last run: pipeline/stages/train.py edited (args"
    for task in ("train", "convert", "layers", "evaluate"):
        info = run_doit(project, "info", f"{task}:mnist_cnn")
        assert changed in info.stdout, info.stdout + info.stderr[-2000:]
    info = run_doit(project, "info", "curves:mnist_cnn")
    assert info.returncode == 0 and "status     : up-to-date" in info.stdout, info.stdout


def test_ctrl_c_during_training_prints_one_line_and_exits_130(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    smoke = project / "params" / "smoke.toml"
    # Three epochs: Keras prints "Epoch 1/3" as training starts (not for a single epoch).
    smoke.write_text(smoke.read_text().replace("epochs = 1", "epochs = 3"))
    models = project / "artifacts" / "models" / "mnist_cnn"
    shutil.rmtree(models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_PARAMS="params/smoke.toml", PIPELINE_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "doit", "train:mnist_cnn"], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Epoch 1/3"):
                break
        else:
            pytest.fail("training never started:\n" + "".join(seen) + proc.stderr.read())
        time.sleep(1.0)  # inside the first epoch's steps, not between stages
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    assert err.strip() == "interrupted; nothing partial was kept"
    assert "Traceback" not in out
    assert third_party_notices(out) == []  # absl's and oneDNN's lines once came with Ctrl-C
    assert not list(project.joinpath("artifacts").rglob("*.partial*"))
    assert not (models / "mnist_cnn.h5").exists() and not (models / "history.json").exists()


def test_list_all_describes_every_subtask(smoke_project):
    proc = run_doit(smoke_project, "list", "--all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    described = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert ALL_TASKS <= set(described)
    assert described["train:mnist_cnn"].startswith("train the cnn on mnist")
    assert described["curves:mnist_mlp"].rstrip().endswith("training.png")


def test_clean_bench_removes_the_staged_plan_and_dry_run_names_every_file(smoke_project,
                                                                           tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    art = project / "artifacts"
    staged = art / "bench" / "local"
    assert staged.is_dir() and any(staged.iterdir())
    before = sorted(p for p in art.rglob("*"))

    dry = run_doit(project, "clean", "-n", "bench:local", "curves:mnist_cnn")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"would remove directory '{staged.relative_to(project)}'" in dry.stdout
    assert "would remove file 'artifacts/reports/latency.md'" in dry.stdout
    # Targets (clean=True) are named by doit itself, in its own words.
    assert "removing file 'artifacts/reports/mnist_cnn/training.png'" in dry.stdout
    assert sorted(p for p in art.rglob("*")) == before  # a dry run removes nothing

    proc = run_doit(project, "clean", "bench:local")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"removing directory '{staged.relative_to(project)}'" in proc.stdout
    assert not staged.exists()
    assert not (art / "reports" / "latency" / "local.json").exists()
    assert not (art / "reports" / "latency.md").exists()
    assert (art / "models" / "mnist_cnn" / "mnist_cnn_int8.tflite").exists()


def test_cleaning_one_board_keeps_the_report_of_the_others(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    reports = project / "artifacts" / "reports"
    local = json.loads((reports / "latency" / "local.json").read_text())
    (reports / "latency" / "other.json").write_text(json.dumps({**local, "board": "other"}))
    inventory = tmp_path / "boards.toml"
    inventory.write_text((project / "board" / "boards.toml").read_text()
                         + '\n[[boards]]\nname = "other"\nhost = "other"\n')
    proc = run_doit(project, "clean", "bench:local", env={"PIPELINE_BOARDS": str(inventory)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    latency = json.loads((reports / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"other"}
    assert (reports / "latency.md").exists() and (reports / "latency.png").exists()


def test_report_module_rebuilds_the_latency_report_without_benchmarking(smoke_project,
                                                                          tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    reports = project / "artifacts" / "reports"
    for ext in ("json", "md", "png"):
        (reports / f"latency.{ext}").unlink()
    measured = (reports / "latency" / "local.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "pipeline.report"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["board"] for r in json.loads((reports / "latency.json").read_text())["rows"]} == {
        "local"}
    assert (reports / "latency.md").exists() and (reports / "latency.png").exists()
    assert (reports / "latency" / "local.json").read_bytes() == measured  # nothing re-measured


def test_a_truncated_model_reruns_the_task_that_makes_it(smoke_project, tmp_path):
    """doit itself only checks that a target exists: a .tflite or .h5 cut short behind its
    back must rerun its task, not fail every later task with a flatbuffer/HDF5 traceback."""
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    models = project / "artifacts" / "models" / "mnist_cnn"
    tflite, h5 = models / "mnist_cnn_int8.tflite", models / "mnist_cnn.h5"
    good = tflite.read_bytes()
    with open(tflite, "r+b") as fh:
        fh.truncate(len(good) // 2)
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (f"artifacts/models/mnist_cnn/mnist_cnn_int8.tflite is {len(good) // 2:,} bytes, "
            f"{len(good):,} when it was written: rerunning convert:mnist_cnn") in proc.stdout
    # Reproducible bytes: the rewritten model is the original, so nothing downstream reruns.
    assert executed_tasks(proc.stdout) == {"convert:mnist_cnn"}
    assert tflite.read_bytes() == good
    assert "Traceback" not in proc.stderr
    # Touched but intact: up to date (the hash matches), nothing reruns.
    os.utime(tflite)
    assert executed_tasks(run_doit(project).stdout) == set()

    # Same size, other bytes (and a new mtime): the hash notices.
    data = bytearray(h5.read_bytes())
    data[len(data) // 2] ^= 0xFF
    h5.write_bytes(bytes(data))
    proc = run_doit(project, "train:mnist_cnn")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "mnist_cnn.h5 has changed since it was written (same size, other bytes): " \
           "rerunning train:mnist_cnn" in proc.stdout
    assert executed_tasks(proc.stdout) == {"train:mnist_cnn"}
    assert h5.read_bytes() != bytes(data)


def test_a_full_disk_outside_the_pipelines_writers_fails_the_task_in_one_line(monkeypatch):
    import errno

    from doit.exceptions import TaskFailed

    dodo = load_declarations(monkeypatch)

    def fill(errno_value):
        raise OSError(errno_value, os.strerror(errno_value), "logs/b/events.out")

    failed = dodo._guarded(fill, errno.ENOSPC)
    assert isinstance(failed, TaskFailed)
    assert failed.message == ("no space left on the device writing logs/b/events.out: free "
                              "some space and rerun")
    with pytest.raises(PermissionError):  # other OS errors are not dressed up as a full disk
        dodo._guarded(fill, errno.EACCES)


def test_forgetting_a_board_re_times_it_and_nothing_else(smoke_project, tmp_path):
    """docs/nightly.md: `doit forget bench:<board> && doit bench:<board>` re-times an up-to-date board."""
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    result = project / "artifacts" / "reports" / "latency" / "local.json"
    measured = json.loads(result.read_text())["measured_utc"]
    assert executed_tasks(run_doit(project, "bench:local").stdout) == set()  # up to date
    assert run_doit(project, "forget", "bench:local").returncode == 0
    proc = run_doit(project, "bench:local")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert executed_tasks(proc.stdout) == {"bench:local"}
    assert json.loads(result.read_text())["measured_utc"] > measured


def test_a_full_disk_fails_train_in_one_line_and_keeps_nothing(smoke_project, tmp_path,
                                                               small_disk):
    """Through doit, on a real tmpfs that fills while the .h5 is written: one line naming
    the file and the space, status 1 (h5py writing to the full disk itself used to print
    tracebacks at garbage collection and end the process with SIGSEGV), nothing partial."""
    project = copy_project(tmp_path / "p")
    data = smoke_project / "artifacts" / "data"
    size_kib = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) // 1024
    disk = small_disk(size_kib + 12_000)  # room to rewrite the .npz once (preprocess)
    env = {"PIPELINE_ARTIFACTS": str(disk / "art")}
    shutil.copytree(data, disk / "art" / "data")
    assert run_doit(project, "preprocess", env=env).returncode == 0
    used_kib = int(subprocess.run(["df", "-k", "--output=used", str(disk)], capture_output=True,
                                  text=True, check=True).stdout.split()[-1])
    subprocess.run(["mount", "-o", f"remount,size={used_kib + 400}k", str(disk)], check=True)
    proc = run_doit(project, "train:mnist_cnn", env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    h5 = disk / "art" / "models" / "mnist_cnn" / "mnist_cnn.h5"
    [line] = [line for line in proc.stdout.splitlines() if "no space left" in line]
    assert line.startswith(f"no space left on the device writing {h5}: this task's files "
                           "need more than 1.")  # the .h5 is 1.1 MiB
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert list(h5.parent.iterdir()) == []  # no history.json without its model, no partial


@pytest.mark.parametrize("mirror", ["none", "unreachable"])
def test_a_first_run_without_the_dataset_says_first_what_to_do_and_fails(tmp_path, mirror):
    """`pip install -e . && doit` with no dataset and no reachable mirror (issue 23): the
    first lines say the dataset is missing and how to give one; nothing else runs first."""
    from tests.conftest import free_port

    project = copy_project(tmp_path / "p")  # no artifacts/ at all, as with PIPELINE_ARTIFACTS
    # The shipped params.toml, as a new user runs it; run_doit sets PIPELINE_OFFLINE=1, so
    # the public mirrors are never tried (no internet here either way).
    env = {"PIPELINE_PARAMS": "params.toml"}
    if mirror == "unreachable":
        env["PIPELINE_MIRROR"] = f"http://127.0.0.1:{free_port()}/"
    proc = run_doit(project, env=env)
    assert proc.returncode != 0
    assert executed_tasks(proc.stdout) == {"download:mnist"}
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines[:2] == [".  download:mnist", "TaskFailed - taskid:download:mnist"]
    assert lines[2] == ("dataset mnist is missing: it is not in the cache and no mirror has it. "
                        "Give a copy with PIPELINE_MIRROR=<directory or URL> (see "
                        "docs/offline.md).")
    assert "Traceback" not in proc.stderr
    assert not (project / "artifacts" / "models").exists()
