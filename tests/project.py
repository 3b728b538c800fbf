"""The project's own files, copied where a test or a benchmark builds it. The standard library
and the pipeline only: benchmarks/bench_build.py imports this after a plain `pip install -e .`
(no pytest)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("dodo.py", "params.toml", "params", "pipeline", "board")


# A test project's `local` board (and the tests' other boards) time briefly. With the shipped 0.5 s per model of a pair and
# 1 s per peak case, bench:local was two thirds of a smoke build's CPU time, in every build,
# nightly and rebuild of the suite. The end-to-end tests need the bench to run, not precise
# figures; the timing loops' own settings are tested in test_runner, test_reference and
# test_floor.
QUICK_TIMING = "min_seconds = 0.05\npeak_seconds = 0.2\n"


# The per-build stages of the graph, as doit targets: a whole build but `peak` and the
# boards' `bench`, one task for all builds that re-times every model. For a rebuild test that
# asks which builds' tasks rerun (tests/test_dodo.py keeps the list whole).
BUILD_STAGES = ("download", "preprocess", "train", "convert", "convert_onnx", "translate_onnx",
                "evaluate", "curves", "analysis", "layers", "card")


def copy_project(dest: Path, quick_board: bool = True) -> Path:
    """The project's files copied to `dest`; with `quick_board`, its `local` board gets
    QUICK_TIMING's timing."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    if quick_board:
        boards = dest / "board" / "boards.toml"
        local = 'name = "local"\n'
        assert local in boards.read_text(), boards
        boards.write_text(boards.read_text().replace(local, local + QUICK_TIMING, 1))
    return dest


def dump_toml(doc: dict) -> str:
    """A params document (tables of scalars and lists, arrays of tables) as TOML text."""
    from pipeline.core.params_cli import toml_value as _toml_value

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
