"""The project's own files, copied where a test or a benchmark builds it. The standard library
and the pipeline only: benchmarks/bench_build.py imports this after a plain `pip install -e .`
(no pytest)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("dodo.py", "params.toml", "params", "pipeline", "board")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def dump_toml(doc: dict) -> str:
    """A params document (tables of scalars and lists, arrays of tables) as TOML text."""
    from pipeline.core.params import toml_value as _toml_value

    lines = []
    for name, table in doc.items():
        if isinstance(table, list):
            for entry in table:
                lines += [f"\n[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items())]
        else:
            lines += [f"\n[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines).lstrip() + "\n"


def edit_params(path: Path, changes: dict | None = None, builds: list | None = None,
                **tables: list) -> None:
    """Rewrite the params file at `path` with `changes` ({"section.key": value}) set and,
    if given, its [[builds]] (or any other array of tables, e.g. datasets=[...]) replaced.
    Params files hold only their differences from the defaults, so a test sets a key
    instead of replacing its text."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    doc = tomllib.loads(path.read_text())
    for key, value in (changes or {}).items():
        section, name = key.split(".", 1)
        doc.setdefault(section, {})[name] = value
    if builds is not None:
        tables["builds"] = builds
    doc.update(tables)
    path.write_text(dump_toml(doc))
