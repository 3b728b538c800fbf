"""The project's own files, copied where a test or a benchmark builds it. Standard library
only: benchmarks/bench_build.py imports this after a plain `pip install -e .` (no pytest)."""

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
