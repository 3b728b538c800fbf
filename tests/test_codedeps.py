"""The import graph behind each task's code dependencies: an AST walk over a small package
written here, so every expected edge is known by construction."""

import json
import os
import textwrap
from pathlib import Path

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
    assert [p.as_posix() for p in deps.of("app.stages.s")] == [
        "app/__init__.py", "app/core/__init__.py", "app/core/a.py", "app/core/b.py",
        "app/core/c.py", "app/stages/__init__.py", "app/stages/helper.py", "app/stages/s.py"]
    assert [p.as_posix() for p in deps.of("app.core.c")] == [
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

    again = CodeDeps(tmp_path, cache, packages=("app",))
    assert again.of("app.stages.s") == first.of("app.stages.s")
    assert not again._changed  # nothing parsed: every file's mtime and size matched
    assert again._imported == {}  # no graph walked: the closure itself came from the cache
    assert json.loads(cache.read_text())["closures"]["app.stages.s"] == [
        [rel.as_posix(), os.stat(tmp_path / rel).st_mtime_ns, os.stat(tmp_path / rel).st_size]
        for rel in first.of("app.stages.s")]

    # An edit that adds an import: the file is parsed again and the closure grows.
    (tmp_path / "app/core/c.py").write_text("from app.stages import other\n")
    stamp = os.stat(tmp_path / "app/core/c.py")
    os.utime(tmp_path / "app/core/c.py", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    edited = CodeDeps(tmp_path, cache, packages=("app",))
    assert Path("app/stages/other.py") in edited.of("app.stages.s")
    assert edited._changed
    edited.save()

    # A file of the closure removed (and its import with it): walked again, without it.
    (tmp_path / "app/core/c.py").unlink()
    (tmp_path / "app/core/b.py").write_text("X = 2  # no import any more\n")
    shrunk = CodeDeps(tmp_path, cache, packages=("app",)).of("app.stages.s")
    assert Path("app/core/c.py") not in shrunk and Path("app/stages/other.py") not in shrunk


def test_a_damaged_or_old_cache_is_ignored(tmp_path):
    write(tmp_path, PACKAGE)
    cache = tmp_path / "deps.json"
    cache.write_text("{not json")
    assert Path("app/core/c.py") in CodeDeps(tmp_path, cache, ("app",)).of("app.core.a")
    cache.write_text(json.dumps({"version": 0, "files": {"app/core/a.py": [0, 0, []]}}))
    assert Path("app/core/c.py") in CodeDeps(tmp_path, cache, ("app",)).of("app.core.a")


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
