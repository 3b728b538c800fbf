"""The cached task graph (pipeline/graph/cache.py): it makes the tasks the declarations make,
its key holds every file declaring reads, any change of an input declares again, and a
cached task's actions run the declared ones in a real `doit`."""

import hashlib
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

    from pipeline.graph.cache import Declared

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
        # Each stand-in names its task and position, and that is the declared action; doit
        # prints it as it prints the declared one.
        for kind, stand_ins, actions in (("actions", g.actions, w.actions),
                                         ("clean", g.clean_actions, w.clean_actions)):
            assert len(stand_ins) == len(actions), (w.name, kind)
            for i, (stand_in, action) in enumerate(zip(stand_ins, actions)):
                assert str(stand_in) == str(action)
                declared_action = stand_in.py_callable
                assert isinstance(declared_action, Declared) and stand_in.args == []
                basename, name = declared_action.basename, declared_action.name
                assert (declared_action.kind, declared_action.index) == (kind, i)
                assert (f"{basename}:{name}" if name else basename) == w.name
                function, args = tasks.declared(basename, name)[kind][i]
                assert (function, repr(args)) == (action.py_callable, repr(action.args))


def test_a_task_field_the_graph_would_drop_is_refused():
    from pipeline.graph.cache import task_data

    with pytest.raises(TypeError, match=r"^task x: .* does not cache \['task_dep'\]"):
        task_data({"name": "x", "actions": [], "task_dep": ["y"]})


def age(*paths, seconds=10):
    """Files as if written `seconds` ago: a file changed in the last two seconds keeps the
    graph from being written (cache.RACY_NS), and these tests load right after an edit."""
    import time

    for path in paths:
        for f in [path, *(Path(path).rglob("*") if Path(path).is_dir() else ())]:
            then = time.time_ns() - seconds * 1_000_000_000
            os.utime(f, ns=(then, then), follow_symlinks=False)


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
    age(project)
    # No artifact tree yet (a fresh clone): declared every time, and nothing is created.
    assert load(project)[0] and load(project)[0]
    assert not (project / "artifacts").exists()
    (project / "artifacts").mkdir()
    assert load(project)[0] and not load(project)[0]  # declared, then cached
    # What declares no task: the events file, any other variable, a file declaring never read.
    assert not load(project, {"PIPELINE_EVENTS": str(tmp_path / "e.jsonl"), "LANG": "C"})[0]
    (project / "pipeline" / "notes.txt").write_text("x")
    assert not load(project)[0]

    def edit(path, text="\n# edited\n"):
        with open(project / path, "a") as f:
            f.write(text)
        age(project / path)

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
    age(project)
    (project / "artifacts").mkdir()
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
    age(project)
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
    assert "card:mnist_mlp - executing 'Python: function _remove'" in proc.stdout  # as declared
    assert (project / "artifacts/models/mnist_mlp/model_card.json").exists()
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert executed_tasks(proc.stdout) == {"card:mnist_mlp"}
    assert card.read_text() == text
    assert (project / GRAPH).stat().st_mtime_ns == stamp  # both from the cached graph


# In this process (a mutation pass sees only what runs here): load_graph as dodo.py calls it,
# the declarations imported afresh for each load, as each `doit` process would.
def load_here(monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import pipeline.graph

    monkeypatch.delitem(sys.modules, "pipeline.graph.tasks", raising=False)
    monkeypatch.delattr(pipeline.graph, "tasks", raising=False)  # `from` finds it there too
    from pipeline.graph.cache import load_graph

    namespace = load_graph(os.environ)
    declared = "pipeline.graph.tasks" in sys.modules
    return declared, namespace


def test_load_graph_declares_caches_and_declares_again_on_a_change(monkeypatch, tmp_path):
    from doit.loader import load_tasks

    from pipeline.graph import cache

    boards = tmp_path / "boards.toml"
    boards.write_text((REPO / "board" / "boards.toml").read_text())
    age(boards)
    monkeypatch.chdir(REPO)
    for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
        monkeypatch.delenv(name)
    (tmp_path / "a").mkdir()
    env = {"PIPELINE_PARAMS": "params/smoke.toml", "PIPELINE_ARTIFACTS": str(tmp_path / "a"),
           "PIPELINE_BOARDS": str(boards), **URL_MIRROR}
    declared, first = load_here(monkeypatch, **env)
    assert declared and first["task_train"].__module__ == "pipeline.graph.tasks"
    graph = tmp_path / "a" / cache.FILE_NAME
    key = json.loads(graph.read_text())["key"]
    assert key["cwd"] == str(REPO) and key["version"] == cache.VERSION
    keyed = {name: os.environ[name] for name in os.environ
             if name.startswith("PIPELINE_") or name in ("HOME", "PYTHONPATH")}
    assert key["env"] == hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    assert URL_MIRROR["PIPELINE_MIRROR"] not in graph.read_text()  # a URL may hold a password
    assert key["files"][str(boards)] == cache.stamp(str(boards))
    assert {"pipeline/graph/tasks.py", "pipeline/core/params.py", "params/smoke.toml",
            "pipeline/stages/train.py"} <= set(key["files"])
    # The project's files relative (a moved checkout keeps its stamps); outside it, absolute.
    assert all(f.startswith(str(tmp_path)) for f in key["files"] if os.path.isabs(f))
    assert {str(tmp_path / "a/data/mnist/raw/train-images-idx3-ubyte.gz")} < set(key["files"])
    declared, second = load_here(monkeypatch)
    assert not declared and second["task_train"].__wrapped__ is cache
    assert [t.name for t in load_tasks(second)] == [t.name for t in load_tasks(first)]
    assert second["DOIT_CONFIG"] == first["DOIT_CONFIG"]
    assert not load_here(monkeypatch, PIPELINE_EVENTS=str(tmp_path / "e"))[0]
    for change in ({"PIPELINE_SET": "train.epochs=2"}, {"HOME": str(tmp_path)},
                   {"PYTHONPATH": str(tmp_path)}):
        assert load_here(monkeypatch, **change)[0] and not load_here(monkeypatch)[0]
    with open(boards, "a") as f:
        f.write("# edited\n")
    # Changed just now: it may still be changing while it is read, so nothing is cached
    # until it has stood still for two seconds (as if: aged).
    assert load_here(monkeypatch)[0] and load_here(monkeypatch)[0]
    age(boards, seconds=3)
    assert load_here(monkeypatch)[0] and not load_here(monkeypatch)[0]
    graph.write_text(graph.read_text()[:-10])  # torn
    assert load_here(monkeypatch)[0] and not load_here(monkeypatch)[0]
    assert [p.name for p in graph.parent.glob(".task-graph*")] == [cache.FILE_NAME]


def test_stamps_keys_and_the_written_file(tmp_path):
    from pipeline.graph.cache import key_matches, read_graph, stamp

    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert stamp(str(f)) == [f.stat().st_mtime_ns, 3]
    assert stamp(str(tmp_path / "none")) is None
    environ = {"PIPELINE_X": "1", "OTHER": "2"}
    from pipeline.graph.cache import graph_key

    key = graph_key([str(f), str(f), str(tmp_path / "none")], environ)
    assert key["files"] == {str(f): stamp(str(f)), str(tmp_path / "none"): None}
    assert key["env"] == hashlib.sha256(b'{"PIPELINE_X": "1"}').hexdigest()
    assert key_matches(key, environ)
    assert key_matches(key, {**environ, "OTHER": "3", "PIPELINE_EVENTS": "e"})
    for bad in (None, [], {**key, "version": 0}, {**key, "cwd": "/elsewhere"},
                {**key, "files": None}, {k: v for k, v in key.items() if k != "files"}):
        assert not key_matches(bad, environ)
    assert not key_matches(key, {"PIPELINE_X": "2"})
    os.utime(f, ns=(1, 1))
    assert not key_matches(key, environ)
    # Written whole, read back (codedeps.write_cache); into an existing directory only,
    # and a path that cannot be written is no error and leaves nothing.
    from pipeline.core.codedeps import write_cache

    write_cache(tmp_path / "d" / "g.json", {"key": key})  # no d/: a `doit list` makes none
    assert not (tmp_path / "d").exists()
    (tmp_path / "d").mkdir()
    write_cache(tmp_path / "d" / "g.json", {"key": key})
    assert read_graph(tmp_path / "d" / "g.json") == {"key": key}
    assert os.listdir(tmp_path / "d") == ["g.json"]
    (tmp_path / "e" / "g.json").mkdir(parents=True)  # a directory where the file goes
    write_cache(tmp_path / "e" / "g.json", {"key": key})  # the rename fails: no error
    assert os.listdir(tmp_path / "e") == ["g.json"] and (tmp_path / "e" / "g.json").is_dir()
    for text in ("", "[1]", "{"):
        (tmp_path / "d" / "g.json").write_text(text)
        assert read_graph(tmp_path / "d" / "g.json") is None
    assert read_graph(tmp_path / "none") is None


def test_the_artifact_root_is_pipeline_artifacts_or_artifacts():
    from pipeline import artifact_root

    assert artifact_root({}) == Path("artifacts")
    assert artifact_root({"PIPELINE_ARTIFACTS": "/x/y"}) == Path("/x/y")


def test_project_modules_are_the_imported_files_under_the_working_directory(monkeypatch):
    from pipeline.graph.cache import project_modules

    monkeypatch.chdir(REPO)
    found = project_modules()
    assert {"pipeline/graph/cache.py", "tests/test_graph_cache.py"} <= found
    assert not any(os.path.isabs(f) or f.startswith("..") for f in found)
    monkeypatch.chdir(REPO / "pipeline")  # a prefix of a path is not enough: whole folders
    assert "graph/cache.py" in project_modules()
    assert not any(f.startswith("..") for f in project_modules())


def test_the_stand_ins_run_and_clean_as_the_declared_actions(monkeypatch, tmp_path, capsys):
    from doit.exceptions import TaskFailed

    from pipeline.graph.cache import Declared

    tasks, declared, cached = declared_and_cached(monkeypatch, tmp_path, "params/smoke.toml", "")
    # params: writes the resolved params, as the declared action does.
    [stand_in] = cached["task_params"]()["actions"]
    assert (stand_in.basename, stand_in.name, stand_in.kind, stand_in.index) == (
        "params", None, "actions", 0)
    assert repr(stand_in) == "<function _guarded at params:None>"
    assert stand_in() in (None, True)
    written = json.loads((tmp_path / "params.json").read_text())
    (tmp_path / "params.json").unlink()
    function, args = declared["task_params"]()["actions"][0]
    function(*args)
    assert json.loads((tmp_path / "params.json").read_text()) == written
    # analysis's clean action, dry and not.
    outputs = tasks.LAYOUT.analysis_outputs("mnist_mlp")
    outputs[0].parent.mkdir(parents=True)
    outputs[0].write_text("x")
    clean = Declared("analysis", "mnist_mlp", "clean", 0, "_remove")
    clean(dryrun=True)
    assert f"would remove file '{outputs[0]}'" in capsys.readouterr().out
    assert outputs[0].exists()
    clean()
    assert f"removing file '{outputs[0]}'" in capsys.readouterr().out
    assert not outputs[0].exists()
    failed = Declared("analysis", "no_such_build", "actions", 0, "_guarded")()
    assert isinstance(failed, TaskFailed)
    assert failed.message == ("task analysis:no_such_build is no longer declared (a file "
                              "changed during the build?); run doit again")
    assert Declared("nosuch", None, "actions", 0, "f")().message.startswith(
        "task nosuch is no longer")


def test_a_clean_action_without_dryrun_runs_only_when_it_is_no_dry_run(monkeypatch):
    """As doit does with a declared clean action that takes no `dryrun`."""
    import pipeline.graph.tasks
    from pipeline.graph.cache import Declared

    calls = []
    monkeypatch.setattr(pipeline.graph.tasks, "declared",
                        lambda basename, name: {"clean": [(calls.append, [name])]})
    clean = Declared("b", "n", "clean", 0, "append")
    clean(dryrun=True)
    assert calls == []
    clean()
    assert calls == ["n"]


def test_a_file_changed_within_two_seconds_of_declaring_is_racy():
    from pipeline.graph.cache import RACY_NS, racy

    started = 10 * RACY_NS
    key = {"files": {"a": [started - RACY_NS - 1, 5], "gone": None}}
    assert not racy(key, started)
    for mtime in (started - RACY_NS, started, started + 1):  # at the limit, during, after
        assert racy({"files": {**key["files"], "b": [mtime, 1]}}, started)
