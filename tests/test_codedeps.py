"""The import graph behind each task's code dependencies: an AST walk over a small package
written here, so every expected edge is known by construction."""

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest

from pipeline.core.codedeps import CodeDeps
from pipeline.core.importscan import imported_names


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


PACKAGE = {
    "app/__init__.py": "",
    "app/core/__init__.py": "",
    "app/core/a.py": "import json\nfrom app.core import b\n",
    "app/core/b.py": "from . import c\n",                    # relative
    "app/core/c.py": "X = 1\n",
    "app/core/unused.py": "",
    "app/stages/__init__.py": "",
    "app/stages/s.py": """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        from ..core.a import something

        if TYPE_CHECKING:
            from app.core import unused

        def run():
            from app.stages import helper   # a function-level import is a dependency

        def main():
            from app.stages import cli_only  # the command line's, which a task never runs

        if __name__ == "__main__":
            import app.stages.cli_only
        """,
    "app/stages/helper.py": "",
    "app/stages/cli_only.py": "",
    "app/stages/other.py": "",
}


def test_the_closure_follows_imports_at_any_depth_but_not_the_command_line(tmp_path):
    write(tmp_path, PACKAGE)
    deps = CodeDeps(tmp_path, None, packages=("app",))
    assert deps.of("app.stages.s") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/a.py", "app/core/b.py",
        "app/core/c.py", "app/stages/__init__.py", "app/stages/helper.py", "app/stages/s.py"]
    assert deps.of("app.core.c") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/c.py"]


def test_relative_imports_resolve_from_the_modules_package():
    assert imported_names("from . import x\nfrom ..y import z\n", "a.b") == {
        "a.b", "a.b.x", "a.y", "a.y.z"}
    assert imported_names("from .m import n\n", "a") == {"a.m", "a.m.n"}


def test_the_cache_is_reused_while_files_are_unchanged_and_refreshed_when_one_changes(tmp_path):
    write(tmp_path, PACKAGE)
    cache = tmp_path / "cache" / "deps.json"
    CodeDeps(tmp_path, cache, packages=("app",)).save()
    assert not cache.exists()  # its directory does not exist: nothing is created
    cache.parent.mkdir()
    first = CodeDeps(tmp_path, cache, packages=("app",))
    first.of("app.stages.s")
    first.save()
    stored = json.loads(cache.read_text())["files"]
    assert stored["app/core/a.py"][2] == ["app.core", "app.core.b"]
    assert stored["app/core/a.py"][3] == hashlib.sha256(
        (tmp_path / "app/core/a.py").read_bytes()).hexdigest()

    again = CodeDeps(tmp_path, cache, packages=("app",))
    assert again.of("app.stages.s") == first.of("app.stages.s")
    assert not again._changed  # nothing parsed: every file's mtime and size matched
    assert again._fresh == set()  # no graph walked: the closure itself came from the cache
    assert json.loads(cache.read_text())["closures"]["app.stages.s"] == [
        [rel, os.stat(tmp_path / rel).st_mtime_ns, os.stat(tmp_path / rel).st_size]
        for rel in first.of("app.stages.s")]

    # An edit that adds an import: the file is parsed again and the closure grows.
    (tmp_path / "app/core/c.py").write_text("from app.stages import other\n")
    stamp = os.stat(tmp_path / "app/core/c.py")
    os.utime(tmp_path / "app/core/c.py", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    edited = CodeDeps(tmp_path, cache, packages=("app",))
    assert "app/stages/other.py" in edited.of("app.stages.s")
    assert edited._changed
    edited.save()

    # A file of the closure removed (and its import with it): walked again, without it.
    (tmp_path / "app/core/c.py").unlink()
    (tmp_path / "app/core/b.py").write_text("X = 2  # no import any more\n")
    shrunk = CodeDeps(tmp_path, cache, packages=("app",)).of("app.stages.s")
    assert "app/core/c.py" not in shrunk and "app/stages/other.py" not in shrunk


def test_a_damaged_or_old_cache_is_ignored(tmp_path):
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"
    cache.write_text("{not json")
    assert "app/core/c.py" in CodeDeps(tmp_path, cache, ("app",)).of("app.core.a")
    cache.write_text(json.dumps({"version": 0, "files": {"app/core/a.py": [0, 0, []]}}))
    assert "app/core/c.py" in CodeDeps(tmp_path, cache, ("app",)).of("app.core.a")


def test_the_project_imports_nothing_to_compute_its_graph():
    """The walk reads the project's own stage modules without importing numpy or TensorFlow:
    run in a fresh interpreter and compare sys.modules."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys; from pathlib import Path; from pipeline.core.codedeps import CodeDeps;"
            "d = CodeDeps(Path('.'), None).of('pipeline.stages.layers');"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'tensorflow', 'keras', 'onnx', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_package_init_resolves_its_relative_imports_from_its_own_package(tmp_path):
    """`from . import c` in app/core/__init__.py is app.core.c; in a module two folders
    down, its own folder's module."""
    write(tmp_path, {**PACKAGE, "app/core/__init__.py": "from . import c\n",
                     "app/stages/deep/__init__.py": "",
                     "app/stages/deep/m.py": "from . import n\nfrom ...core import a\n",
                     "app/stages/deep/n.py": ""})
    deps = CodeDeps(tmp_path, None, packages=("app",))
    assert deps.of("app.core") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/c.py"]
    assert deps.of("app.stages.deep.m") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/a.py", "app/core/b.py",
        "app/core/c.py", "app/stages/__init__.py", "app/stages/deep/__init__.py",
        "app/stages/deep/m.py", "app/stages/deep/n.py"]
    deps.save()  # no cache file to write: nothing happens


def test_a_files_cached_imports_are_used_while_its_stamp_matches(tmp_path):
    """The cache's record of a file is trusted while its mtime and size match (that is
    what saves the parse): a hand-edited record shows in the closure; a closure record is
    not needed (a cache of this version without one, or with neither, works)."""
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"
    stat = os.stat(tmp_path / "app/core/b.py")
    cache.write_text(json.dumps({"version": 3, "files": {
        "app/core/b.py": [stat.st_mtime_ns, stat.st_size, ["app.stages.other"], "0" * 64]}}))
    assert CodeDeps(tmp_path, cache, ("app",)).of("app.core.b") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/b.py", "app/stages/__init__.py",
        "app/stages/other.py"]
    cache.write_text(json.dumps({"version": 3}))
    assert CodeDeps(tmp_path, cache, ("app",)).of("app.core.b") == [
        "app/__init__.py", "app/core/__init__.py", "app/core/b.py", "app/core/c.py"]


@pytest.mark.parametrize("document", ["[1, 2]", '"text"', "another version"])
def test_a_cache_that_is_no_table_or_of_another_version_is_not_read(tmp_path, document):
    """A record that would change the closure, with the right stamp, under another version
    is ignored; so is a cache whose JSON is not a table."""
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"
    stat = os.stat(tmp_path / "app/core/b.py")
    record = {"app/core/b.py": [stat.st_mtime_ns, stat.st_size, ["app.stages.other"], "0" * 64]}
    cache.write_text(json.dumps({"version": 2, "files": record})
                     if document == "another version" else document)
    closure = CodeDeps(tmp_path, cache, ("app",)).of("app.core.b")
    assert "app/stages/other.py" not in closure and "app/core/c.py" in closure


def test_a_no_op_load_writes_no_cache_and_an_unwritable_one_is_no_error(tmp_path):
    """Nothing parsed, nothing walked: save() leaves the file as it was (a no-op `doit`
    writes nothing). A cache in a tree that refuses new files (sysfs refuses even root) only
    costs the parse next time."""
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"
    first = CodeDeps(tmp_path, cache, ("app",))
    first.of("app.stages.s")
    first.save()
    os.utime(cache, ns=(10**9, 10**9))
    again = CodeDeps(tmp_path, cache, ("app",))
    again.of("app.stages.s")
    again.save()
    assert os.stat(cache).st_mtime_ns == 10**9
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here to refuse a write")
    unwritable = CodeDeps(tmp_path, Path("/sys/codedeps-test.json"), ("app",))
    assert "app/core/c.py" in unwritable.of("app.core.a")
    unwritable.save()
    assert not Path("/sys/codedeps-test.json").exists()


def test_the_hashes_are_each_files_sha256_from_the_cache_while_its_stamp_matches(tmp_path):
    """What a task's code check compares (pipeline/core/uptodate.py): each file's SHA-256
    of its bytes, from the cache or not; the same bytes rewritten later (a checkout) give the
    same hash, one byte more or other (same size) another."""
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"

    def direct(files):
        return {rel: hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() for rel in files}

    first = CodeDeps(tmp_path, cache, ("app",))
    files = first.of("app.stages.s")
    assert first.hashes(files) == direct(files)
    first.save()
    cached = CodeDeps(tmp_path, cache, ("app",))
    assert cached.hashes(cached.of("app.stages.s")) == direct(files)
    assert not cached._changed  # every hash came from the cache

    c = tmp_path / "app/core/c.py"
    stamp = os.stat(c)
    c.write_text("X = 1\n")  # the same bytes, a later mtime
    os.utime(c, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert CodeDeps(tmp_path, cache, ("app",)).hashes(files) == direct(files) == \
        first.hashes(files)
    c.write_text("X = 2\n")  # one byte, the same size
    os.utime(c, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 2 * 10**9))
    again = CodeDeps(tmp_path, cache, ("app",))
    assert again.hashes(files) == direct(files) != first.hashes(files)
    assert again._changed  # the new hash is kept for the next load


def test_write_cache_writes_whole_into_an_existing_directory_and_never_raises(tmp_path):
    """The code-deps cache's and the task graph's write: the whole JSON or nothing, no
    directory made (a `doit list` creates no artifact tree), no temporary file left, no
    error for a cache that cannot be written."""
    import json

    from pipeline.core.codedeps import write_cache

    write_cache(tmp_path / "none" / "c.json", {"a": 1})
    assert not (tmp_path / "none").exists()
    write_cache(tmp_path / "c.json", {"a": [1, "é"]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, "é"]}
    (tmp_path / "d" / "c.json").mkdir(parents=True)  # the rename fails
    write_cache(tmp_path / "d" / "c.json", {"a": 1})
    write_cache(tmp_path / ("x" * 250), {"a": 1})  # its temporary name is too long to create
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.json", "c.json", "d"]
