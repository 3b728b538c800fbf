"""The test suite from a user's clone: no ../shared beside it, the real MNIST from the user's
own mirror (PIPELINE_MIRROR) or a whole skip reason saying how to provide it."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MNIST_HINT, REPO

REAL_MNIST_TEST = "tests/test_download.py::test_real_mnist_over_http_is_verified_by_payload_sha256"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The repository copied where no ../shared sits beside it."""
    dest = tmp_path_factory.mktemp("user") / "clone"
    dest.mkdir()
    for name in ("pyproject.toml", "pipeline", "tests", "board", "params", "params.toml"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, dest / name, **({"ignore": shutil.ignore_patterns(
            "__pycache__")} if (REPO / name).is_dir() else {}))
    assert not (dest.parent / "shared").exists()
    return dest


def run_tests(clone, tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    # No public download from a test: an empty cache and offline.
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PIPELINE_OFFLINE="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           REAL_MNIST_TEST], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600)


def test_without_data_the_skip_reason_is_whole_and_says_how(clone, tmp_path):
    proc = run_tests(clone, tmp_path, {})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 skipped" in proc.stdout
    assert f": {MNIST_HINT}\n" in proc.stdout  # the whole reason, on one line


@pytest.mark.parametrize("layout", ["url", "directory", "subfolder"])
def test_pipeline_mirror_provides_the_real_data(clone, tmp_path, serve, mnist_dir, layout):
    if layout == "url":
        mirror = serve(mnist_dir)
    elif layout == "directory":
        mirror = str(mnist_dir)
    else:  # a directory holding one subfolder per dataset
        (tmp_path / "mirrors").mkdir()
        (tmp_path / "mirrors" / "mnist").symlink_to(mnist_dir)
        mirror = str(tmp_path / "mirrors")
    proc = run_tests(clone, tmp_path, {"PIPELINE_MIRROR": mirror})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout and "skipped" not in proc.stdout
