"""Shared fixtures: real HTTP mirrors on 127.0.0.1, tiny IDX datasets, the committed fixture
models (tests/fixtures/models), and one smoke build of the whole project run through `doit` in a temporary directory.

Worker-safe under pytest-xdist (the README's command runs `-n auto --dist loadfile`): the
expensive session fixtures (models, the smoke build) are built once per run by whichever
worker asks first, under a file lock, and the other workers reuse the result (`built_once`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.fixtures.make_models import file_names
from tests.project import REPO, copy_project  # noqa: F401  (copy_project: re-exported)

SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


def xdist_worker(config) -> bool:
    """Whether this process is an xdist worker (not the environment variable, which a
    pytest started by a test inherits)."""
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session")
def run_root(request, tmp_path_factory) -> Path:
    """The directory all xdist workers of this run share (the base temp of a plain run)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if xdist_worker(request.config) else base


def built_once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`run_root()/name`, filled by `build(directory)` once per test run whichever worker
    asks first; the others wait on a file lock and reuse it. A build that raised leaves no
    done-marker, so the next asker builds again (and fails the same way, with its own
    message) instead of reading half a result."""
    target = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / ".built").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / ".built").write_text("")
    return target


def pytest_configure(config):
    """Under mutmut's first pass (which records which tests call which function it sets
    MUTANT_UNDER_TEST=stats), a pipeline run in a child process (doit in a copied project)
    would inherit the value and look for mutmut's configuration in that project's directory,
    which fails. The pass records calls in this process only and mutmut keeps its own copy of
    the value here, so the children run the plain code. A mutant's name stays inherited:
    children run that mutant."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        del os.environ["MUTANT_UNDER_TEST"]
    # xdist otherwise sorts the files by their number of tests (most first), which starts the
    # long end-to-end files, that have few tests, last (--loadscope-reorder, its default);
    # LONGEST_FIRST orders them instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.fixture(scope="session")
def serve():
    """serve(directory) -> base URL of a real HTTP server on 127.0.0.1 for that directory."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# One line, whole in `pytest -rs`: how a user's clone gets the real data.
MNIST_HINT = ("needs the real MNIST: set PIPELINE_MIRROR=<directory or URL of its 4 .gz files> "
              "or put them in ../shared/datasets/mnist beside the clone (docs/development.md: Running the tests)")


class NoData(Exception):
    """No source of the real MNIST worked; the message says why (one cause, one line)."""


def _one_line(exc: Exception) -> str:
    """A DownloadError's per-mirror failure lines, joined: why the download failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.startswith("  ")]
    return "; ".join(lines) or str(exc).splitlines()[0]


def _created_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def find_mnist(env: dict[str, str], shared: Path, artifacts: Path, cache: Path,
               public_mirrors: list[str], workdir: Path) -> Path:
    """A directory of the 4 verified MNIST archives, from the first source that has them:
    the user's mirror (env), `shared` (../shared beside the clone), the verified downloads of
    the user's own build (`artifacts`/data/mnist/raw, copied, never modified), `cache`, or a
    one-time download into `cache` from `public_mirrors` (not with PIPELINE_OFFLINE=1).
    Raises NoData with one line per cause; a failed download leaves no empty `cache` behind.
    """
    from pipeline.core.datasets import MNIST
    from pipeline.stages.download import DownloadError, download_dataset, user_mirror
    from pipeline.core.layout import Layout

    quiet = {"log": lambda line: None}
    mirror = user_mirror("mnist", env)
    if mirror:
        local = workdir / "mnist_mirror"
        try:
            download_dataset(MNIST, local, [mirror], 60, **quiet)
        except DownloadError as exc:
            # The user asked for this mirror: a bad one is an error, not a quiet skip.
            pytest.fail(f"PIPELINE_MIRROR does not serve the real MNIST: {exc}", pytrace=False)
        return local
    if shared.is_dir():
        return shared
    own = Layout(artifacts).raw_dir("mnist")
    if own.is_dir():
        try:
            return Path(download_dataset(MNIST, workdir / "mnist_own", [str(own)], 60,
                                         **quiet)[0]).parent
        except DownloadError:
            pass  # an incomplete or damaged set: the next source
    target = cache / "mnist"
    if all((target / f.name).is_file() for f in MNIST.files):
        try:
            download_dataset(MNIST, target, [], 60, **quiet)  # re-verifies, downloads nothing
            return target
        except DownloadError:
            pass
    if env.get("PIPELINE_OFFLINE") == "1":
        raise NoData(f"{MNIST_HINT}; none found (no PIPELINE_MIRROR, no {shared}, no verified "
                     f"archives in {own}, none cached in {target}) and PIPELINE_OFFLINE=1 "
                     "forbids the download")
    created = _created_dirs(target)
    try:
        download_dataset(MNIST, target, public_mirrors, 60, **quiet)
    except DownloadError as exc:
        for directory in created:  # deepest first; only what this attempt created
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise NoData(f"{MNIST_HINT}; the download into {target} failed: "
                     f"{_one_line(exc)}") from None
    return target


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:  # DATA_SKIP_LINE
    """The real MNIST .gz files (find_mnist's sources, in its order); a skip saying why not."""
    from pipeline.core.datasets import MNIST

    env = dict(os.environ)
    artifacts = Path(env.get("PIPELINE_ARTIFACTS", REPO / "artifacts"))
    cache = Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tflite-pipeline"
    try:
        return find_mnist(env, SHARED_MNIST, artifacts, cache, list(MNIST.mirrors),
                          tmp_path_factory.mktemp("mnist"))
    except NoData as exc:
        pytest.skip(str(exc))


# The test files the xdist workers start first, longest first (`--dist loadfile` hands out
# whole files in collection order, the next one when a worker has two tests left): a long
# file started last keeps one worker busy after the other has finished. The second file
# needs no smoke build, so that one worker runs it while the other builds the smoke project.
# Order from `--durations=0` of the whole suite (2026-12-06; seconds per file under load:
# dodo 1869, predict 659, nightly 1649, models 518, bench 967, train 487, virtual_k1 314,
# layers 309, then 150 and less). Files not listed follow in pytest's order.
LONGEST_FIRST = (
    "test_dodo.py", "test_predict.py", "test_nightly.py", "test_models.py", "test_bench.py",
    "test_train.py", "test_virtual_k1.py", "test_layers.py", "test_convert_onnx.py",
    "test_runner.py", "test_floor.py", "test_reproducible.py", "test_convert.py",
    "test_docs.py", "test_analysis.py", "test_conftest.py", "test_fashion_mnist.py",
)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: a run without xdist has none
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than this process may use CPUs. Many tests wait on a child
    (doit, sshd, qemu, a hung board's timeout) and a third worker keeps two cores busy
    meanwhile: the README's command from a fresh clone on this 2-core machine took 9:16 with
    3 workers (one run, machine otherwise idle) and 10:34 with 2 (one run, a helper session
    partly busy beside it), at the same CPU time (1,015 s and 1,025 s)."""
    return len(os.sched_getaffinity(0)) + 1


def pytest_collection_modifyitems(config, items) -> None:
    """The files of LONGEST_FIRST first, in its order; within a file, pytest's order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every test skipped for want of the data reports the same place, so `pytest -rs` folds
    them into one line per cause ("SKIPPED [43] tests/conftest.py: ...") instead of one line
    per test."""
    outcome = yield
    report = outcome.get_result()
    longrepr = report.longrepr
    if (report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3
            and MNIST_HINT in str(longrepr[2])):
        report.longrepr = (str(Path(__file__)), DATA_SKIP_LINE, longrepr[2])


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    """Tests that draw a figure to inspect it leave it open; a worker that ran 20 of them
    warned "More than 20 figures have been opened". The pipeline's own writers close theirs
    (tests/test_charts.py checks); this closes what a test left, without importing pyplot."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


@pytest.fixture(scope="session")
def mnist_url(serve, mnist_dir) -> str:
    return serve(mnist_dir)


# What a third-party library prints when its notices are not hidden (pipeline/core/console.py
# hides them): LiteRT's delegate line, absl's pre-init line and glog-style lines, oneDNN's and
# the CPU-feature notices of TensorFlow's import. None may reach a documented command's console.
THIRD_PARTY_NOTICE = re.compile(
    r"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl"
    r"|[IWE]\d{4} \d\d:\d\d:\d\d|.*oneDNN custom operations|.*cpu_feature_guard"
    r"|.*TF_ENABLE_ONEDNN_OPTS|.*This TensorFlow binary is optimized)", re.M)


def third_party_notices(output: str) -> list[str]:
    """The third-party notice lines in a command's output."""
    return [m.group(0) for m in THIRD_PARTY_NOTICE.finditer(output)]


def wait_for(predicate, seconds: float) -> bool:
    """Poll `predicate` every 0.1 s for at most `seconds` (bounded); its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kib) -> a directory on a real tmpfs of that size (mounted under tmp_path,
    unmounted afterwards): a disk that really fills up. Needs root to mount."""
    mounts = []

    def mount(kib: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for the full-disk test: {proc.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(array)))
    return path


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 uint8 images whose class is learnable: a bright bar at a class-specific row."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 250
    return images


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """Small, valid IDX .gz files in the MNIST/Fashion-MNIST layout (600 train, 200 test)."""
    out = tmp_path_factory.mktemp("tiny_idx")
    rng = np.random.default_rng(7)
    y_train, y_test = rng.integers(0, 10, 600), rng.integers(0, 10, 200)
    write_idx_gz(out / "train-images-idx3-ubyte.gz", synthetic_images(y_train, 1))
    write_idx_gz(out / "train-labels-idx1-ubyte.gz", y_train)
    write_idx_gz(out / "t10k-images-idx3-ubyte.gz", synthetic_images(y_test, 2))
    write_idx_gz(out / "t10k-labels-idx1-ubyte.gz", y_test)
    return out


def fixture_models(root: Path) -> Path:
    """The committed fixture models (tests/fixtures/models), copied once per run into
    `root` (so that no test can change the committed files), checked against their manifest."""
    from tests.fixtures import make_models

    def build(out: Path) -> None:
        for name in make_models.file_names().values():
            shutil.copy2(make_models.MODELS / name, out / name)
        manifest = json.loads(make_models.MANIFEST.read_text())
        line = make_models.difference(manifest, make_models.digests(out), manifest["made_with"])
        if line:  # a damaged checkout, not a converter's change: the files are as committed
            pytest.fail(f"{make_models.MODELS}: {line}", pytrace=False)

    return built_once(root, "fixture_models", build)


@pytest.fixture(scope="session")
def tiny_models(run_root) -> dict[str, Path]:
    """An untrained CNN and MLP of a few KB as float32 and int8 .tflite, named
    <build>_<variant>: the committed fixtures (tests/fixtures/make_models.py makes them with
    the pipeline's converter), for tests that do not test training or conversion itself."""
    out = fixture_models(run_root)
    return {key: out / name for key, name in file_names().items() if name.endswith(".tflite")}


@pytest.fixture(scope="session")
def tiny_onnx_models(run_root) -> dict[str, Path]:
    """The ONNX variants of tiny_models' CNN and MLP, named <build>_<variant>.onnx: exported,
    quantized by ONNX Runtime, and tiny_models' int8 .tflite translated (committed fixtures,
    as tiny_models)."""
    out = fixture_models(run_root)
    return {key: out / name for key, name in file_names().items() if name.endswith(".onnx")}


@pytest.fixture(scope="session")
def peak_models(run_root) -> dict[str, Path]:
    """The synthetic GEMM models, in every variant, with which a board measures its peak
    (built once per run, shared by the workers)."""
    from pipeline.bench.floor import PEAK_VARIANTS, build_peak_models
    from pipeline.core.layout import Layout

    made: dict[str, Path] = {}

    def build(out: Path) -> None:
        made.update(build_peak_models(PEAK_VARIANTS, Layout(out)))
        (out / "index.json").write_text(json.dumps(
            {key: str(path.relative_to(out)) for key, path in made.items()}))

    out = built_once(run_root, "peak_models", build)
    return {key: out / rel for key, rel in json.loads((out / "index.json").read_text()).items()}


def run_doit(project: Path, *args: str, env: dict | None = None,
             python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # Only the variables a test sets: a developer's own PIPELINE_* must not leak in.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    # PIPELINE_OFFLINE: tests never reach past 127.0.0.1, even when a local mirror fails.
    full_env.update({"PIPELINE_PARAMS": "params/smoke.toml", "PIPELINE_OFFLINE": "1",
                     **(env or {})})
    return subprocess.run([sys.executable, *python_flags, "-m", "doit", *args], cwd=project,
                          env=full_env, capture_output=True, text=True, timeout=1200)


def executed_tasks(output: str) -> set[str]:
    """Tasks doit ran (lines '.  name'), as opposed to skipped ones ('-- name')."""
    return {line[3:].strip() for line in output.splitlines() if line.startswith(".  ")}


@pytest.fixture(scope="session")
def smoke_project(request, tmp_path_factory, run_root, mnist_url) -> Path:
    """The project copied to a temporary directory and built once with the smoke preset.
    One build per test run; each xdist worker gets its own copy of it (mtimes kept, so doit
    sees it up to date), since some tests run doit in it."""

    def build(out: Path) -> None:
        project = copy_project(out / "project")
        proc = run_doit(project, env={"PIPELINE_MIRROR": mnist_url})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (project / "first_run.log").write_text(proc.stdout)
        (project / "first_run.err").write_text(proc.stderr)

    built = built_once(run_root, "smoke_project", build) / "project"
    if not xdist_worker(request.config):
        return built
    project = tmp_path_factory.mktemp("smoke") / "project"
    shutil.copytree(built, project, symlinks=True)
    return project


# Where the folded data skips point: the line of the mnist_dir fixture.
DATA_SKIP_LINE = next(i for i, line in enumerate(Path(__file__).read_text().splitlines())
                      if line.endswith("# DATA_SKIP_LINE"))
