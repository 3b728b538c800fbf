"""The task graph as data, so that a no-op `doit` does not declare it again.

dodo.py is loaded by every `doit` call: a no-op build, `doit list`, shell completion.
Declaring the tasks (pipeline/graph/tasks.py) validates the params, reads the board
inventory and collects every task's code hashes. Without bytecode (PYTHONDONTWRITEBYTECODE=1,
as CI and sandboxes run) compiling it and the core modules it imports was most of what a
no-op `doit` cost beyond doit itself (docs/measured/noop_doit.md).

So each time the tasks are declared, what doit needs to find that nothing is to be done is
written to <artifacts>/.task-graph.json: every task's name, doc, file_dep, targets, code
hashes, settings digest and other up-to-date checks, and DOIT_CONFIG. With it goes the key
the tasks were declared under: the PIPELINE_* environment, PYTHONPATH and HOME (as a
digest), the working directory, and the size and mtime of every file declaring read (the
project modules it imported, the params file, the board inventory, user model files, each
dataset's cached archives and every task's code). A later load whose key matches makes the
same tasks from the file; anything else (a file edited, added to the key or gone, another
environment, no file or an unreadable one) declares them again and rewrites the file
(pipeline/core/codedeps.py's `write_cache`: whole, and only into an artifact tree that
exists, so a `doit list` in a fresh clone creates nothing). A file changed in the two
seconds before declaring, or while it ran, may have been read half-written, so that graph
is not written (RACY_NS).

A cached task's actions are stand-ins that name it: the first to run imports the
declarations (once per process, tens of milliseconds before a stage that runs for seconds)
and runs the action declared there, so what runs is always what tasks.py declares now.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline import artifact_root
from pipeline.core.uptodate import CodeAndSettings

VERSION = 1  # of the file's layout: another version is declared again
FILE_NAME = ".task-graph.json"
# Environment read when declaring, besides PIPELINE_*: where a user's model module is found,
# and what `~` in a model or dataset path means.
KEYED_ENV = ("PYTHONPATH", "HOME")
# PIPELINE_* that declare no task: the events file only adds a reporter (dodo.py).
UNKEYED_ENV = ("PIPELINE_EVENTS",)
TASK_FIELDS = ("name", "doc", "actions", "file_dep", "targets", "uptodate", "clean")
# A file whose mtime is this close to the start of declaring, or later, may have changed
# while it was read: its stamp could be the new bytes' while the graph holds the old ones
# (git's "racy" entries). Such a graph is not written; the next load declares again. Two
# seconds: the coarsest mtime of a common file system (FAT).
RACY_NS = 2_000_000_000


def environment_key(environ: Mapping[str, str]) -> str:
    """SHA-256 of the variables declaring reads. A digest, not the values: a mirror URL
    may carry a user's credentials, and the file must not."""
    keyed = {name: value for name, value in environ.items()
             if (name.startswith("PIPELINE_") and name not in UNKEYED_ENV) or name in KEYED_ENV}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def stamp(path: str) -> list[int] | None:
    """[mtime in ns, size] of a file, None when there is none (its absence is part of the
    key too: a user model file or a dataset archive that appears changes the graph)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def graph_key(files: Iterable[str], environ: Mapping[str, str]) -> dict[str, Any]:
    return {"version": VERSION, "cwd": os.getcwd(), "env": environment_key(environ),
            "files": {path: stamp(path) for path in sorted(set(files))}}


def key_matches(key: Any, environ: Mapping[str, str]) -> bool:
    return (isinstance(key, dict) and key.get("version") == VERSION
            and key.get("cwd") == os.getcwd() and key.get("env") == environment_key(environ)
            and isinstance(key.get("files"), dict)
            and all(stamp(path) == saved for path, saved in key["files"].items()))


def project_modules() -> set[str]:
    """The modules imported from under the working directory, relative to it (this file,
    dodo.py, tasks.py and the core modules declaring imported)."""
    here = os.getcwd() + os.sep
    files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    return {os.path.relpath(f) for f in files if f and f.startswith(here)}


def load_graph(environ: Mapping[str, str]) -> dict[str, Any]:
    """dodo.py's namespace, DOIT_CONFIG and the task creators: from the cached graph when
    its key matches, else declared by tasks.py (and cached)."""
    path = artifact_root(environ) / FILE_NAME
    saved = read_graph(path)
    if saved is not None and key_matches(saved.get("key"), environ):
        return cached_namespace(saved)
    started = time.time_ns()
    from pipeline.graph import tasks

    declared = tasks.namespace()
    if tasks.cacheable():
        key = graph_key(project_modules() | set(tasks.inputs()), environ)
        if not racy(key, started):
            from pipeline.core.codedeps import write_cache  # imported by tasks already

            write_cache(path, graph_data(declared, key))
    return declared


def racy(key: dict[str, Any], started_ns: int) -> bool:
    return any(saved is not None and saved[0] >= started_ns - RACY_NS
               for saved in key["files"].values())


def read_graph(path: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or torn: declare
        return None
    return saved if isinstance(saved, dict) else None


def graph_data(declared: Mapping[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """The declared graph as JSON data: each creator's tasks, in order (see `task_data`)."""
    families = []
    for name, creator in declared.items():
        if name.startswith("task_"):
            made = creator()
            single = isinstance(made, dict)
            families.append({"basename": name[len("task_"):], "doc": creator.__doc__,
                             "single": single,
                             "tasks": [task_data(t) for t in ([made] if single else made)]})
    return {"key": key, "config": declared["DOIT_CONFIG"], "families": families}


def task_data(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task as data: paths as strings, checks as `check_data`, and of its actions and
    clean actions only their functions' names (the stand-ins run the declared ones)."""
    unknown = set(task) - set(TASK_FIELDS)
    if unknown:  # a field this file would drop: cache it here before declaring it
        raise TypeError(f"task {task.get('name')}: pipeline/graph/cache.py does not cache "
                        f"{sorted(unknown)}")
    out = {field: task[field] for field in ("name", "doc") if field in task}
    out.update({field: [os.fspath(p) for p in task[field]]
                for field in ("file_dep", "targets") if field in task})
    out["actions"] = [function.__name__ for function, _ in task["actions"]]
    if "clean" in task:
        out["clean"] = (task["clean"] if isinstance(task["clean"], bool) else
                        [function.__name__ for function, _ in task["clean"]])
    if "uptodate" in task:
        out["uptodate"] = [check_data(check) for check in task["uptodate"]]
    return out


def check_data(check: Any) -> dict[str, Any]:
    """An up-to-date check as data: a CodeAndSettings as its hashes and settings digest, a
    (function, args) as the function's module:name and the args (paths as strings)."""
    if isinstance(check, CodeAndSettings):
        return {"code": check.code, "settings": check.settings}
    function, args = check
    return {"call": f"{function.__module__}:{function.__qualname__}",
            "args": [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args]}


def cached_namespace(saved: Mapping[str, Any]) -> dict[str, Any]:
    namespace: dict[str, Any] = {"DOIT_CONFIG": saved["config"]}
    for family in saved["families"]:
        namespace[f"task_{family['basename']}"] = _creator(family)
    return namespace


def _creator(family: Mapping[str, Any]) -> Callable[[], Any]:
    """A task creator giving the family's tasks, fresh dicts each call (doit edits them)."""
    basename = family["basename"]

    def create() -> Any:
        made = (cached_task(basename, task) for task in family["tasks"])
        return next(made) if family["single"] else made

    create.__name__ = create.__qualname__ = f"task_{basename}"
    create.__doc__ = family["doc"]
    # doit orders creators by the line inspect.getsourcelines finds; through a module it
    # finds line 0 without tokenizing, and the stable sort keeps the declared order (as
    # tasks.in_file_order does for the declared creators).
    create.__wrapped__ = sys.modules[__name__]  # type: ignore[attr-defined]
    return create


def cached_task(basename: str, data: Mapping[str, Any]) -> dict[str, Any]:
    name = data.get("name")
    task: dict[str, Any] = {field: data[field] for field in ("name", "doc") if field in data}
    task.update({field: list(data[field]) for field in ("file_dep", "targets") if field in data})
    task["actions"] = [Declared(basename, name, "actions", i, function)
                       for i, function in enumerate(data["actions"])]
    if "uptodate" in data:
        task["uptodate"] = [cached_check(check) for check in data["uptodate"]]
    if "clean" in data:
        task["clean"] = (data["clean"] if isinstance(data["clean"], bool) else
                         [Declared(basename, name, "clean", i, function)
                          for i, function in enumerate(data["clean"])])
    return task


def cached_check(data: Mapping[str, Any]) -> Any:
    if "code" in data:
        return CodeAndSettings.recorded(data["code"], data["settings"])
    import importlib

    module, name = data["call"].split(":")
    return (getattr(importlib.import_module(module), name), list(data["args"]))


class Declared:
    """A cached task's action or clean action: the one tasks.py declares for the task at
    `index` of `kind` ("actions" or "clean"), imported and run when doit calls this."""

    def __init__(self, basename: str, name: str | None, kind: str, index: int,
                 function: str) -> None:
        self.basename, self.name, self.kind, self.index = basename, name, kind, index
        self.function = function  # the declared function's name, for doit's messages

    def __repr__(self) -> str:
        # doit prints an action as its callable's repr up to " at " (`doit clean`:
        # "executing 'Python: function _remove'"): the declared function's, as declared.
        return f"<function {self.function} at {self.basename}:{self.name}>"

    def __call__(self, dryrun: bool = False) -> Any:
        """doit passes `dryrun` (`doit clean -n`) to a clean action that takes it, and runs
        one that does not only when it is no dry run: so does this with the declared one."""
        from pipeline import PipelineError
        from pipeline.graph import tasks

        try:
            function, args = tasks.declared(self.basename, self.name)[self.kind][self.index]
        except PipelineError as exc:
            from doit.exceptions import TaskFailed

            return TaskFailed(str(exc))
        if "dryrun" in inspect.signature(function).parameters:
            return function(*args, dryrun=dryrun)
        return None if dryrun else function(*args)
