"""Every module with a `main()` answers `python -m pipeline.<module> --help`, and so do the
command names the docs give (pipeline.nightly, .predict, .virtual_k1, .history, .report)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = ("nightly", "predict", "virtual_k1", "history", "report")


def modules_with_main():
    """Dotted names of the modules under pipeline/ that define main(), found on disk."""
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name.startswith("__") or "\ndef main(" not in path.read_text():
            continue
        found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def test_the_stage_modules_are_found():
    assert {"pipeline.stages.train", "pipeline.bench.session",
            "pipeline.nightly.run"} <= set(modules_with_main())


@pytest.mark.parametrize("module", (*modules_with_main(), *(f"pipeline.{c}" for c in COMMANDS)))
def test_module_answers_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")
    assert "show this help message and exit" in proc.stdout
