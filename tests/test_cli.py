"""Every stage module the README lists answers `python -m pipeline.<module> --help`."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

STAGE_MODULES = ("download", "preprocess", "train", "convert", "convert_onnx", "evaluate",
                 "curves", "analysis", "layers", "card", "bench", "report")
NIGHTLY_MODULES = ("nightly", "history", "nightly_report")


def test_readme_lists_exactly_these_stage_modules():
    layout = REPO.joinpath("README.md").read_text().split("## Layout", 1)[1]
    stages = re.search(r"one module per stage: (.*?);", layout, re.S).group(1)
    names = re.sub(r"\([^)]*\)", "", stages).split(",")
    assert {name.strip() for name in names} == set(STAGE_MODULES)


@pytest.mark.parametrize("module", (*STAGE_MODULES, *NIGHTLY_MODULES, "predict"))
def test_stage_module_answers_help(module):
    proc = subprocess.run([sys.executable, "-m", f"pipeline.{module}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {module}.py ")
    assert "show this help message and exit" in proc.stdout
