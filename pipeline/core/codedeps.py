"""Each doit task's code dependencies, computed from the imports instead of written by hand.

A task depends on its stage module and every project module that module imports,
transitively (issue 22: hand lists drifted, so editing the Keras loader left converted
models marked up to date). The imports are read with an AST walk (nothing is imported: no
numpy, no TensorFlow, no network) and cached by each file's mtime and size, so a no-op
`doit` parses nothing. Each closure is cached too, with the stamp of every file in it: a
no-op `doit` stats those files and walks no graph. A closure changes only through an edit
of a file in it (a new import is an edit of the importing file), so it is reused while
every one of its files has the same mtime and size.

A task depends on its closure through `hashes`, each file's SHA-256, cached with its
imports (pipeline/core/uptodate.py compares them). Paths are strings, not pathlib objects:
a no-op `doit` looks up hundreds of them, and building Path objects was most of this
module's cost.

The walk itself is pipeline/core/importscan.py. Not followed: imports inside a function
named `main` or under `if __name__ == "__main__":` (they serve the module's command line,
which a task never runs) and under `if TYPE_CHECKING:`. Code loaded by path rather than
imported (board/runner.py, a user's model file) is declared by dodo.py where it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Bump when what the cache records changes: an old cache is then ignored, not misread.
CACHE_VERSION = 3


class CodeDeps:
    """The import graph of the project's packages under `root`, with a cache file. Files
    are named by their path relative to the root, with `/` separators."""

    def __init__(self, root: Path, cache: Path | None, packages: tuple[str, ...] = ("pipeline",)):
        self.root, self.cache_path, self.packages = os.fspath(root), cache, packages
        self._cache, self._closure_cache = self._load()
        self._changed = False
        self._closures: dict[str, tuple[str, ...]] = {}
        # Per load: each file is stat'ed (and perhaps read) once, each name looked up once,
        # however many tasks' closures share them (a no-op `doit` pays for this).
        self._files: dict[str, str | None] = {}
        self._fresh: set[str] = set()  # files whose record matches the file on disk
        self._stamps: dict[str, list[int] | None] = {}

    def _load(self) -> tuple[dict[str, list], dict[str, list]]:
        try:
            doc = json.loads(self.cache_path.read_text()) if self.cache_path else {}
        except (OSError, ValueError):
            return {}, {}  # no cache yet, or a damaged one: parse again
        if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION:
            return {}, {}
        return doc.get("files", {}), doc.get("closures", {})

    def _stamp(self, rel: str) -> list[int] | None:
        """[mtime_ns, size] of file `rel`, or None when it is gone; stat'ed once per load."""
        if rel not in self._stamps:
            try:
                stat = os.stat(os.path.join(self.root, rel))
                self._stamps[rel] = [stat.st_mtime_ns, stat.st_size]
            except OSError:
                self._stamps[rel] = None
        return self._stamps[rel]

    def module_file(self, name: str) -> str | None:
        """The file of module `name`, relative to the root, or None (not a project module)."""
        if name not in self._files:
            self._files[name] = None
            if name.split(".")[0] in self.packages:
                rel = name.replace(".", "/")
                self._files[name] = next(
                    (candidate for candidate in (f"{rel}.py", f"{rel}/__init__.py")
                     if os.path.isfile(os.path.join(self.root, candidate))), None)
        return self._files[name]

    def _record(self, rel: str) -> list:
        """[mtime_ns, size, project modules imported, SHA-256 of the bytes] of file `rel`,
        from the cache while its stamp matches, else read and parsed again."""
        if rel in self._fresh:
            return self._cache[rel]
        stamp = self._stamp(rel)
        record = self._cache.get(rel)
        if not (record and record[:2] == stamp):
            with open(os.path.join(self.root, rel), "rb") as file:
                data = file.read()
            # A module's package is its folder, a package's __init__.py's too (a.b's and
            # a/b/c's). Imported here, not at the top: a no-op `doit` reads every file's
            # imports from the cache, so loading dodo.py need not compile the AST walk.
            from pipeline.core.importscan import imported_names

            names = imported_names(data.decode("utf-8"), rel.rpartition("/")[0].replace("/", "."))
            found = sorted({name for name in names if self.module_file(name) is not None})
            record = self._cache[rel] = [*stamp, found, hashlib.sha256(data).hexdigest()]
            self._changed = True
        self._fresh.add(rel)
        return record

    def _with_packages(self, name: str) -> list[str]:
        """Module `name`'s file and its packages' __init__.py files (importing a.b.c runs
        a/__init__.py and a/b/__init__.py first)."""
        parts = name.split(".")
        files = [self.module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
        return [f for f in files if f is not None]

    def of(self, *modules: str) -> list[str]:
        """The files `modules` need, transitively: themselves, what they import, and the
        packages on the way; sorted, relative to the root."""
        out: set[str] = set()
        for module in modules:
            if module not in self._closures:
                self._closures[module] = self._cached_closure(module) or self._walk(module)
            out.update(self._closures[module])
        return sorted(out)

    def hashes(self, files: Iterable[str]) -> dict[str, str]:
        """{file: SHA-256 of its bytes}, from the cache while each file's stamp matches."""
        return {rel: self._record(rel)[3] for rel in files}

    def _cached_closure(self, module: str) -> tuple[str, ...] | None:
        """The cached closure of `module` while every file in it is unchanged, else None."""
        entries = self._closure_cache.get(module)
        if not entries or any(self._stamp(entry[0]) != entry[1:] for entry in entries):
            return None
        return tuple(entry[0] for entry in entries)

    def _walk(self, module: str) -> tuple[str, ...]:
        """The closure of `module`, from each file's imports; recorded in the cache."""
        seen: set[str] = set()
        todo = self._with_packages(module)
        while todo:
            rel = todo.pop()
            if rel not in seen:
                seen.add(rel)
                for name in self._record(rel)[2]:
                    todo.extend(self._with_packages(name))
        closure = tuple(sorted(seen))
        self._closure_cache[module] = [[rel, *self._stamp(rel)] for rel in closure]
        self._changed = True
        return closure

    def save(self) -> None:
        """Write the cache if a file was parsed (`write_cache`: it only costs the parse
        next time if it cannot be written)."""
        if self._changed and self.cache_path:
            write_cache(self.cache_path, {"version": CACHE_VERSION, "files": self._cache,
                                          "closures": self._closure_cache})


def write_cache(path: Path, doc: Any) -> None:
    """Write a cache that loading dodo.py keeps (this module's, and the task graph of
    pipeline/graph/cache.py) as JSON, whole: a temporary file renamed over it, so another
    `doit` reads the old cache or the new one. Into an existing directory only: a `doit
    list` must not create the artifact tree. Best effort: a cache that cannot be written
    (a read-only tree, a full disk) only costs its work again next time. A temporary file
    left by a kill is named `.partial`, which nothing reads and the nightly does not count
    as an artifact."""
    if not path.parent.is_dir():
        return
    partial = path.with_name(f"{path.name}.partial.{os.getpid()}")
    try:
        partial.write_text(json.dumps(doc))
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):  # a name too long to create fails unlink too
            partial.unlink(missing_ok=True)
