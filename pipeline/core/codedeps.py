"""Each doit task's code dependencies, computed from the imports instead of written by hand.

A task depends on its stage module and every project module that module imports,
transitively (issue 22: hand lists drifted, so editing the Keras loader left converted
models marked up to date). The imports are read with an AST walk (nothing is imported: no
numpy, no TensorFlow, no network) and cached by each file's mtime and size, so a no-op
`doit` parses nothing. Each closure is cached too, with the stamp of every file in it: a
no-op `doit` stats those files and walks no graph. A closure changes only through an edit
of a file in it (a new import is an edit of the importing file), so it is reused while
every one of its files has the same mtime and size.

The walk itself is pipeline/core/importscan.py. Not followed: imports inside a function
named `main` or under `if __name__ == "__main__":` (they serve the module's command line,
which a task never runs) and under `if TYPE_CHECKING:`. Code loaded by path rather than imported (board/runner.py, a user's
model file) is declared by dodo.py where it is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Bump when what the walk records changes: an old cache is then ignored, not misread.
CACHE_VERSION = 2


class CodeDeps:
    """The import graph of the project's packages under `root`, with a cache file."""

    def __init__(self, root: Path, cache: Path | None, packages: tuple[str, ...] = ("pipeline",)):
        self.root, self.cache_path, self.packages = Path(root), cache, packages
        self._cache, self._closure_cache = self._load()
        self._changed = False
        self._closures: dict[str, tuple[Path, ...]] = {}
        # Per load: each file is stat'ed (and perhaps parsed) once, each name looked up
        # once, however many tasks' closures share them (a no-op `doit` pays for this).
        self._files: dict[str, Path | None] = {}
        self._imported: dict[Path, list[str]] = {}
        self._stamps: dict[Path, list[int] | None] = {}

    def _load(self) -> tuple[dict[str, list], dict[str, list]]:
        try:
            doc = json.loads(self.cache_path.read_text()) if self.cache_path else {}
        except (OSError, ValueError):
            return {}, {}  # no cache yet, or a damaged one: parse again
        if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION:
            return {}, {}
        return doc.get("files", {}), doc.get("closures", {})

    def _stamp(self, rel: Path) -> list[int] | None:
        """[mtime_ns, size] of file `rel`, or None when it is gone; stat'ed once per load."""
        if rel not in self._stamps:
            try:
                stat = (self.root / rel).stat()
                self._stamps[rel] = [stat.st_mtime_ns, stat.st_size]
            except OSError:
                self._stamps[rel] = None
        return self._stamps[rel]

    def module_file(self, name: str) -> Path | None:
        """The file of module `name`, relative to the root, or None (not a project module)."""
        if name not in self._files:
            self._files[name] = None
            if name.split(".")[0] in self.packages:
                rel = Path(*name.split("."))
                self._files[name] = next(
                    (candidate for candidate in (rel.with_suffix(".py"), rel / "__init__.py")
                     if (self.root / candidate).is_file()), None)
        return self._files[name]

    def _imports(self, rel: Path) -> list[str]:
        """The project modules `rel` imports (from the cache while the file is unchanged)."""
        if rel not in self._imported:
            self._imported[rel] = self._read_imports(rel)
        return self._imported[rel]

    def _read_imports(self, rel: Path) -> list[str]:
        stamp = self._stamp(rel)
        cached = self._cache.get(rel.as_posix())
        if cached and cached[:2] == stamp:
            return cached[2]
        # A module's package is its folder, a package's __init__.py's too (a.b's and a/b/c's).
        package = ".".join(rel.parts[:-1])
        # Here, not at the top: a no-op `doit` reads every file's imports from the cache, so
        # loading dodo.py need not compile the AST walk (pipeline/core/importscan.py).
        from pipeline.core.importscan import imported_names

        names = imported_names((self.root / rel).read_text(encoding="utf-8"), package)
        found = sorted({name for name in names if self.module_file(name) is not None})
        # Only a walk parses, and it marks the cache changed: it records a closure.
        self._cache[rel.as_posix()] = [*stamp, found]
        return found

    def _with_packages(self, name: str) -> list[Path]:
        """Module `name`'s file and its packages' __init__.py files (importing a.b.c runs
        a/__init__.py and a/b/__init__.py first)."""
        parts = name.split(".")
        files = [self.module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
        return [f for f in files if f is not None]

    def of(self, *modules: str) -> list[Path]:
        """The files `modules` need, transitively: themselves, what they import, and the
        packages on the way; sorted, relative to the root."""
        out: set[Path] = set()
        for module in modules:
            if module not in self._closures:
                self._closures[module] = self._cached_closure(module) or self._walk(module)
            out.update(self._closures[module])
        return sorted(out)

    def _cached_closure(self, module: str) -> tuple[Path, ...] | None:
        """The cached closure of `module` while every file in it is unchanged, else None."""
        entries = self._closure_cache.get(module)
        if not entries:
            return None
        files = tuple(Path(entry[0]) for entry in entries)
        if any(self._stamp(rel) != entry[1:] for rel, entry in zip(files, entries)):
            return None
        return files

    def _walk(self, module: str) -> tuple[Path, ...]:
        """The closure of `module`, from each file's imports; recorded in the cache."""
        seen: set[Path] = set()
        todo = self._with_packages(module)
        while todo:
            rel = todo.pop()
            if rel not in seen:
                seen.add(rel)
                for name in self._imports(rel):
                    todo.extend(self._with_packages(name))
        closure = tuple(sorted(seen))
        self._closure_cache[module] = [[rel.as_posix(), *self._stamp(rel)] for rel in closure]
        self._changed = True
        return closure

    def save(self) -> None:
        """Write the cache if a file was parsed, into an existing directory only (a `doit
        list` must not create the artifact tree). Best effort: a cache that cannot be
        written (a read-only tree) only costs the parse next time."""
        if not (self._changed and self.cache_path and self.cache_path.parent.is_dir()):
            return
        partial = self.cache_path.with_name(f"{self.cache_path.name}.partial.{os.getpid()}")
        try:
            partial.write_text(json.dumps({"version": CACHE_VERSION, "files": self._cache,
                                           "closures": self._closure_cache}))
            os.replace(partial, self.cache_path)
        except OSError:
            partial.unlink(missing_ok=True)
