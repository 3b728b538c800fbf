"""The cached task graph (pipeline/graph/cache.py): it makes the tasks the declarations make,
its key holds every file declaring reads, any change of an input declares again, and a
cached task's actions run the declared ones in a real `doit`."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_project, executed_tasks, run_doit

GRAPH = Path("artifacts") / ".task-graph.json"
# A URL mirror: every dataset counts as available when dodo.py loads (it is never contacted
# then), so the graph is cached; with a dataset missing it is not (see the last test below).
URL_MIRROR = {"PIPELINE_MIRROR": "http://127.0.0.1:9/"}


def declared_and_cached(monkeypatch, tmp_path, params, override):
    """The declared namespace and the one made from its graph data after a JSON round trip."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PIPELINE_PARAMS", params)
    monkeypatch.setenv("PIPELINE_SET", override)
    monkeypatch.setenv("PIPELINE_ARTIFACTS", str(tmp_path))
    import pipeline.graph.tasks

    tasks = importlib.reload(pipeline.graph.tasks)
    from pipeline.graph import cache

    declared = tasks.namespace()
    data = json.loads(json.dumps(cache.graph_data(declared, cache.graph_key([], os.environ))))
    return tasks, declared, cache.cached_namespace(data)


def check_parts(uptodate):
    """doit's (check, args, kwargs) entries as comparable values."""
    from pipeline.core.uptodate import CodeAndSettings

    return [(check.code, check.settings) if isinstance(check, CodeAndSettings)
            else (check, [str(a) for a in args], kwargs) for check, args, kwargs in uptodate]


@pytest.mark.parametrize("params, override", [
    ("params/smoke.toml", ""), ("params.toml", ""), ("params/smoke.toml", "convert.onnx=false")])
def test_the_cached_graph_makes_the_tasks_the_declarations_make(monkeypatch, tmp_path,
                                                                params, override):
    from doit.loader import _get_task_creators, load_tasks

    from pipeline.graph.cache import clean_declared, run_declared

    tasks, declared, cached = declared_and_cached(monkeypatch, tmp_path, params, override)
    assert cached["DOIT_CONFIG"] == declared["DOIT_CONFIG"]
    assert {line for _, _, line in _get_task_creators(cached, ())} == {0}  # doit's order
    want, got = load_tasks(declared), load_tasks(cached)
    assert [t.name for t in got] == [t.name for t in want] and len(want) > 20
    for w, g in zip(want, got):
        assert (g.doc, g.file_dep, g.targets, g.task_dep) == (
            w.doc, w.file_dep, w.targets, w.task_dep), w.name
        assert check_parts(g.uptodate) == check_parts(w.uptodate), w.name
        assert g._remove_targets == w._remove_targets, w.name
        # Each stand-in names its task and position, and that is the declared action.
        for kind, stand_ins, actions in (("actions", g.actions, w.actions),
                                         ("clean", g.clean_actions, w.clean_actions)):
            assert len(stand_ins) == len(actions), (w.name, kind)
            for i, (stand_in, action) in enumerate(zip(stand_ins, actions)):
                assert stand_in.py_callable is (run_declared if kind == "actions"
                                                else clean_declared)
                basename, name, index = stand_in.args
                assert index == i and (f"{basename}:{name}" if name else basename) == w.name
                function, args = tasks.declared(basename, name)[kind][index]
                assert (function, repr(args)) == (action.py_callable, repr(action.args))


def test_a_task_field_the_graph_would_drop_is_refused():
    from pipeline.graph.cache import task_data

    with pytest.raises(TypeError, match=r"does not cache \['task_dep'\]"):
        task_data({"name": "x", "actions": [], "task_dep": ["y"]})


def load(project, env=None):
    """Loads dodo.py in `project` as doit does; whether it declared the tasks (or took
    them from the cached graph), and the process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    full.update({"PIPELINE_PARAMS": "params/smoke.toml", "PIPELINE_OFFLINE": "1",
                 **URL_MIRROR, **(env or {})})
    code = ("import sys; sys.path.insert(0, '.'); import dodo; "
            "print('pipeline.graph.tasks' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=full,
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() == "True", proc


def test_each_input_of_the_declarations_declares_them_again_and_nothing_else(tmp_path):
    project = copy_project(tmp_path / "p")
    assert load(project)[0] and not load(project)[0]  # declared, then cached
    # What declares no task: the events file, any other variable, a file declaring never read.
    assert not load(project, {"PIPELINE_EVENTS": str(tmp_path / "e.jsonl"), "LANG": "C"})[0]
    (project / "pipeline" / "notes.txt").write_text("x")
    assert not load(project)[0]

    def edit(path, text="\n# edited\n"):
        with open(project / path, "a") as f:
            f.write(text)

    changes = [
        lambda: edit("params/smoke.toml"),  # the params file
        lambda: edit("board/boards.toml"),  # the board inventory
        lambda: edit("pipeline/stages/curves.py"),  # a task's code (not imported to declare)
        lambda: edit("pipeline/core/variants.py"),  # a module declaring imports
        lambda: edit("dodo.py"),
        # A dataset archive appearing (the dataset becomes available without a mirror).
        lambda: (project / "artifacts/data/mnist/raw").mkdir(parents=True) or edit(
            "artifacts/data/mnist/raw/t10k-labels-idx1-ubyte.gz", ""),
    ]
    for change in changes:
        change()
        assert load(project)[0] and not load(project)[0]
    for env in ({"PIPELINE_SET": "train.epochs=2"}, {"PIPELINE_MIRROR": "http://127.0.0.1:9/b/"},
                {"PYTHONPATH": str(tmp_path)}):
        assert load(project, env)[0] and not load(project, env)[0]
        assert load(project)[0]  # and back
    shutil.copytree(project, tmp_path / "moved", symlinks=True)  # mtimes kept
    assert load(tmp_path / "moved")[0]  # another working directory
    # A dataset that no place has (an empty local mirror, offline): which builds leave the
    # default tasks depends on directories no stamp covers, so that graph is never cached.
    (project / "artifacts/data/mnist/raw/t10k-labels-idx1-ubyte.gz").unlink()
    empty = {"PIPELINE_MIRROR": str(tmp_path / "empty")}
    assert load(project, empty)[0] and load(project, empty)[0]


def test_a_bad_input_is_still_refused_when_a_graph_was_cached(tmp_path):
    project = copy_project(tmp_path / "p")
    assert load(project)[0]
    graph = (project / GRAPH).read_bytes()
    (project / "params" / "smoke.toml").write_text("[train]\nepoch = 2\n")
    _, proc = load(project)
    assert proc.returncode == 1 and "train.epoch: unknown key" in proc.stderr
    assert (project / GRAPH).read_bytes() == graph  # the old one stays, and is not used
    for torn in (graph[:100], b"[]", b"{}"):
        (project / GRAPH).write_bytes(torn)
        assert load(project, {"PIPELINE_PARAMS": "params.toml"})[0]


def test_the_key_holds_every_file_declaring_opens(tmp_path):
    """An audit hook sees each file declaring opens; each is in the key, but doit's database
    and the caches the load keeps (code hashes, the graph itself), which are not inputs."""
    project = copy_project(tmp_path / "p")
    (project / "artifacts").mkdir()
    hook = ("import sys; opened = []\n"
            "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' else None)\n"
            "sys.path.insert(0, '.'); import dodo; print('\\n'.join(opened))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    out = subprocess.run([sys.executable, "-c", hook], cwd=project, check=True, text=True,
                         capture_output=True, env={**env, "PIPELINE_OFFLINE": "1", **URL_MIRROR,
                                                   "PYTHONDONTWRITEBYTECODE": "1"}).stdout
    here = str(project) + os.sep
    opened = {os.path.relpath(os.path.join(project, p), project) for p in out.splitlines()
              if not os.path.isabs(p) or p.startswith(here)}
    # Written, or read back as a cache of what the key covers: not inputs.
    outputs = ("artifacts/.code-deps.json", str(GRAPH))
    inputs = {p for p in opened if "__pycache__" not in p and not p.startswith(outputs)}
    key = set(json.loads((project / GRAPH).read_text())["key"]["files"])
    assert inputs and inputs <= key
    assert {"params.toml", "board/boards.toml", "dodo.py", "pipeline/graph/tasks.py",
            "pipeline/stages/train.py"} <= key


def test_a_cached_tasks_actions_and_clean_actions_run_the_declared_ones(smoke_project,
                                                                        tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    assert executed_tasks(run_doit(project).stdout) == set()  # declared here (a new cwd)
    stamp = (project / GRAPH).stat().st_mtime_ns
    card = project / "artifacts/models/mnist_mlp/model_card.md"
    text = card.read_text()
    card.unlink()
    proc = run_doit(project, "clean", "-n", "card:mnist_mlp")
    assert proc.returncode == 0 and "would remove file" in proc.stdout
    assert (project / "artifacts/models/mnist_mlp/model_card.json").exists()
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert executed_tasks(proc.stdout) == {"card:mnist_mlp"}
    assert card.read_text() == text
    assert (project / GRAPH).stat().st_mtime_ns == stamp  # both from the cached graph
