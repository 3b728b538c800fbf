"""The test suite from a user's clone: no ../shared beside it, the real MNIST from the user's
own mirror (PIPELINE_MIRROR) or a whole skip reason saying how to provide it."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MNIST_HINT, REPO

REAL_MNIST_TEST = "tests/test_download.py::test_real_mnist_over_http_is_verified_by_payload_sha256"
REAL_MNIST_PREPROCESS_TEST = "tests/test_preprocess.py::test_real_mnist_matches_its_published_facts"


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


def run_tests(clone, tmp_path, env_extra, *tests):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    # No public download from a test: an empty cache and offline.
    # COLUMNS: pytest 9 cuts summary lines at the terminal's width (a subprocess has 80).
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PIPELINE_OFFLINE="1", COLUMNS="400",
               **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *(tests or [REAL_MNIST_TEST])], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)


def test_without_data_one_skip_line_per_cause_says_why_and_how(clone, tmp_path):
    proc = run_tests(clone, tmp_path, {}, REAL_MNIST_TEST, REAL_MNIST_PREPROCESS_TEST)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 skipped" in proc.stdout
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    # Two tests in two modules, one cause: one line (not one per test), the whole reason.
    assert len(skipped) == 1 and skipped[0].startswith("SKIPPED [2] tests/conftest.py:"), skipped
    assert f": {MNIST_HINT}; none found (" in skipped[0]
    assert skipped[0].endswith("and PIPELINE_OFFLINE=1 forbids the download")
    assert not (tmp_path / "cache").exists()  # offline: no cache directory made for nothing


def test_the_verified_archives_of_the_users_own_build_are_used(clone, tmp_path, mnist_dir):
    raw = tmp_path / "my_artifacts" / "data" / "mnist" / "raw"
    raw.mkdir(parents=True)
    for archive in sorted(mnist_dir.glob("*.gz")):
        (raw / archive.name).symlink_to(archive)
    before = sorted(p.name for p in raw.iterdir())
    proc = run_tests(clone, tmp_path, {"PIPELINE_ARTIFACTS": str(tmp_path / "my_artifacts")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout and "skipped" not in proc.stdout
    assert sorted(p.name for p in raw.iterdir()) == before  # read, never modified


def test_a_failed_download_says_why_and_leaves_no_empty_cache(tmp_path):
    from tests.conftest import NoData, find_mnist, free_port

    home_cache = tmp_path / "home" / ".cache"
    home_cache.mkdir(parents=True)  # exists before: stays; what the download made goes
    dead = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(NoData) as err:
        find_mnist({}, tmp_path / "no_shared", tmp_path / "no_artifacts",
                   home_cache / "tflite-pipeline", [dead], tmp_path / "work")
    message = str(err.value)
    assert message.startswith(f"{MNIST_HINT}; the download into "
                              f"{home_cache / 'tflite-pipeline' / 'mnist'} failed: {dead}: "
                              "cannot connect (")
    assert "\n" not in message
    assert home_cache.is_dir() and list(home_cache.iterdir()) == []


def test_damaged_own_archives_fall_through_to_the_next_source(tmp_path, mnist_dir):
    from tests.conftest import NoData, find_mnist

    raw = tmp_path / "artifacts" / "data" / "mnist" / "raw"
    raw.mkdir(parents=True)
    for archive in sorted(mnist_dir.glob("*.gz")):
        (raw / archive.name).write_bytes(archive.read_bytes()[:1000])  # truncated copies
    with pytest.raises(NoData, match="PIPELINE_OFFLINE=1 forbids the download"):
        find_mnist({"PIPELINE_OFFLINE": "1"}, tmp_path / "no_shared", tmp_path / "artifacts",
                   tmp_path / "cache", [], tmp_path / "work")
    assert all(p.stat().st_size == 1000 for p in raw.iterdir())  # never "repaired" in place


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


def test_the_longest_files_start_first_in_the_listed_order():
    """LONGEST_FIRST names files that exist (a renamed file would silently lose its place),
    and the collection hook puts their tests first, keeping each file's own order."""
    from pathlib import Path
    from types import SimpleNamespace

    from tests.conftest import LONGEST_FIRST, pytest_collection_modifyitems

    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert all((REPO / "tests" / name).is_file() for name in LONGEST_FIRST)
    names = ["test_a.py", LONGEST_FIRST[1], "test_a.py", LONGEST_FIRST[0], LONGEST_FIRST[1]]
    items = [SimpleNamespace(path=Path("tests") / name, n=i) for i, name in enumerate(names)]
    pytest_collection_modifyitems(None, items)
    assert [(item.path.name, item.n) for item in items] == [
        (LONGEST_FIRST[0], 3), (LONGEST_FIRST[1], 1), (LONGEST_FIRST[1], 4),
        ("test_a.py", 0), ("test_a.py", 2)]


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "auto"]])
def test_the_suite_runs_with_and_without_xdist_and_auto_is_one_worker_more_than_cpus(xdist):
    """The mutation passes run pytest without xdist: conftest's xdist hook must not stop
    them. With `-n auto`, one worker more than the CPUs this process may use."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *xdist,
                           "tests/test_layout.py"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if "auto" in xdist:
        assert f"created: {len(os.sched_getaffinity(0)) + 1}/" in proc.stdout
