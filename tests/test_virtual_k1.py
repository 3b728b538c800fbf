"""The virtual K1: brought up once per test run through its own CLI, reached over a real sshd,
really emulated (qemu-user via binfmt), and taken down leaving nothing behind.

Where this machine cannot host it (not root, no binfmt, Debian's archive unreachable for a
first build) the tests skip with the whole reason, except under CI=true: there a board that
does not come up fails the run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench import session as bench
from pipeline.virtual_k1 import host as vk_host
from pipeline.virtual_k1 import inventory as vk_inventory
from pipeline.virtual_k1 import paths as vk_paths
from pipeline.virtual_k1 import processes as vk_processes
from pipeline.virtual_k1 import rootfs as vk_rootfs
from pipeline.virtual_k1 import sshd as vk_sshd
from pipeline.bench.ssh import SshTransport, ssh_argv, ssh_run
from pipeline.bench.transport import BoardError
from pipeline.core.boards import Board, load_boards
from pipeline.core.params import ParamsError
from tests.conftest import REPO, free_port, wait_for

CI = os.environ.get("CI") == "true"


@dataclass
class Virtual:
    board: Board
    layout: vk_paths.BoardPaths
    up_seconds: float
    up_output: str
    binfmt_before: dict | None
    binfmt_mounted_before: bool


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    # The guest must not inherit this: it would make every emulated Python start recompile.
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "pipeline.virtual_k1", *args], cwd=REPO,
                          env={**full_env, **(env or {})}, capture_output=True, text=True,
                          timeout=1800)


def layout_args(layout: vk_paths.BoardPaths) -> list[str]:
    return ["--cache", str(layout.cache), "--state", str(layout.state)]


def cannot_run(reason: str) -> None:
    if CI:
        pytest.fail(f"CI=true: the virtual K1 must come up here: {reason}", pytrace=False)
    pytest.skip(f"virtual K1 not available: {reason} (docs/virtual-k1.md)")


def everything_left(layout: vk_paths.BoardPaths, tag: str) -> list[str]:
    """Processes of the board (tagged, or its sshd) and mounts under its root file system in
    any mount namespace of this machine."""
    left = [f"process {p}" for p in vk_processes.board_processes(tag)]
    config = str(layout.state_file("sshd_config"))
    root = str(layout.rootfs)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            mountinfo = (entry / "mountinfo").read_text()
        except OSError:
            continue
        if config in cmdline:
            left.append(f"process {entry.name}: {cmdline}")
        left += [f"mount {line.split()[4]} (pid {entry.name})" for line in mountinfo.splitlines()
                 if line.split()[4].startswith(root)]
    return sorted(set(left))


@pytest.fixture(scope="session")
def virtual(tmp_path_factory):
    """The virtual K1, up once per test run (root file system from the shared cache)."""
    if os.geteuid() != 0:
        cannot_run("needs root (binfmt_misc, chroot, namespaces, sshd)")
    cache = Path(os.environ.get("VIRTUAL_K1_CACHE") or vk_paths.default_cache(os.environ))
    layout = vk_paths.BoardPaths(cache, tmp_path_factory.mktemp("vk1") / "state")
    mounted_before = (vk_host.BINFMT_DIR / "register").exists()
    binfmt_before = vk_host.binfmt_entry()
    started = time.monotonic()
    proc = cli("up", *layout_args(layout), "--boards", str(REPO / "board" / "boards.toml"))
    seconds = time.monotonic() - started
    if proc.returncode == vk_paths.UNAVAILABLE:
        cannot_run(proc.stderr.strip().removeprefix("error: "))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    board = next(b for b in load_boards(layout.inventory) if b.name == "virtual-k1")
    yield Virtual(board, layout, seconds, proc.stdout, binfmt_before, mounted_before)
    tag = str(layout.state.resolve())
    down = cli("down", *layout_args(layout))
    assert down.returncode == 0, down.stdout + down.stderr
    assert everything_left(layout, tag) == []


def push(board: Board, files: list[Path]) -> list[str]:
    with SshTransport(board) as transport:
        return transport.push(files)


def on_board(virtual: Virtual, *argv: str, stdin: bytes | None = None) -> bytes:
    status, out, err = ssh_run(virtual.board, list(argv), stdin=stdin, timeout=300)
    assert status == 0, err
    return out


# --- what it is -------------------------------------------------------------------------


def test_the_board_is_riscv64_with_the_k1s_vector_unit(virtual):
    assert on_board(virtual, "uname", "-m").strip() == b"riscv64"
    facts = json.loads(on_board(virtual, "python3", "-c", vk_inventory.PROBE).splitlines()[-1])
    assert facts["machine"] == "riscv64"
    assert facts["vlmax_e8m1"] * 8 == 256  # vsetvli e8,m1 on the guest: VLEN 256
    assert facts["numpy"].startswith("2.") and facts["onnxruntime"].startswith("1.")
    assert facts["providers"] == ["CPUExecutionProvider"]
    assert facts["tflite_runtimes"] == []  # as on a K1 today
    assert "emulated" in facts["cpuinfo_model"]
    # the host's PYTHONDONTWRITEBYTECODE=1 (set by cli()) does not reach the guest
    assert facts["dontwritebytecode"] == 0
    assert "riscv64, RVV VLEN 256" in virtual.up_output


def test_child_processes_are_riscv64_too(virtual):
    # The runner starts a child per case with sys.executable: binfmt's F flag makes that work.
    code = ("import subprocess, sys; print(subprocess.run([sys.executable, '-c', "
            "'import platform; print(platform.machine())'], capture_output=True, "
            "text=True, check=True).stdout.strip())")
    assert on_board(virtual, "python3", "-c", code).strip() == b"riscv64"


def test_the_guest_is_an_unprivileged_user_in_its_own_home(virtual):
    out = on_board(virtual, "sh", "-c", 'id -u; pwd; test -w /usr && echo writable || true')
    assert out.split() == [str(vk_paths.GUEST_UID).encode(), vk_paths.GUEST_HOME.encode()]


def test_the_inventory_works_unchanged_and_is_marked_emulated(virtual):
    boards = {b.name: b for b in load_boards(virtual.layout.inventory)}
    assert "local" in boards  # the project's inventory, so dodo's default boards exist
    board = boards["virtual-k1"]
    assert board.emulated and not boards["local"].emulated
    assert (board.threads, board.warmup, board.runs, board.min_seconds) == (
        tuple(vk_inventory.BOARD_SETTINGS["threads"]), vk_inventory.BOARD_SETTINGS["warmup"],
        vk_inventory.BOARD_SETTINGS["runs"], vk_inventory.BOARD_SETTINGS["min_seconds"])
    assert not any("StrictHostKeyChecking" in o for o in board.ssh_options)
    assert board.remote_dir == vk_inventory.remote_dir(virtual.layout)


def test_boards_on_one_cache_never_share_a_directory_in_the_guest(tmp_path):
    """Every board on a cache shares its root file system, so the guest's home: each state
    directory gets its own remote_dir there (two benches in one directory overwrote each
    other's plan), and the same state always the same one (its models stay pushed)."""
    cache = tmp_path / "cache"
    first, second = (vk_paths.BoardPaths(cache, tmp_path / name) for name in ("a", "b"))
    assert vk_inventory.remote_dir(first) != vk_inventory.remote_dir(second)
    again = vk_paths.BoardPaths(tmp_path / "other-cache", tmp_path / "x" / ".." / "a")
    assert vk_inventory.remote_dir(again) == vk_inventory.remote_dir(first)
    for layout in (first, second):
        layout.state.mkdir()
        (layout.state / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA host\n")
        vk_inventory.write_inventory(layout, "v", 2222, None, "k1")
    dirs = [load_boards(layout.inventory)[0].remote_dir for layout in (first, second)]
    assert len(set(dirs)) == 2 and all(d.startswith("tflite-bench-") for d in dirs)


def test_host_key_checking_stays_on(virtual, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = tuple(f"UserKnownHostsFile={empty}" if o.startswith("UserKnownHostsFile=") else o
                    for o in virtual.board.ssh_options)
    stranger = Board(**{**virtual.board.settings(), "ssh_options": options})
    with pytest.raises(BoardError, match="host key is not known"):
        ssh_run(stranger, ["true"])


def test_push_puts_files_in_the_guest(virtual, tmp_path):
    payload = tmp_path / "it's a model.bin"
    payload.write_bytes(os.urandom(4096))
    assert push(virtual.board, [payload]) == [payload.name]
    assert push(virtual.board, [payload]) == []  # the board's sha256sum agrees
    inside = (virtual.layout.rootfs / vk_paths.GUEST_HOME.lstrip("/")
              / virtual.board.remote_dir / payload.name)
    assert inside.read_bytes() == payload.read_bytes()


# --- ONNX Runtime on riscv64 against ONNX Runtime on this host ----------------------------


def tiny_onnx_models() -> dict[str, bytes]:
    """A float MLP layer and the same layer in int8 QDQ form, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.3, (64, 10)).astype(np.float32)
    b = rng.normal(0, 0.1, 10).astype(np.float32)

    def model(nodes, inits, out_type):
        graph = helper.make_graph(
            nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("y", out_type, [1, 10])], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8  # Debian's onnxruntime 1.21 reads IR <= 10
        onnx.checker.check_model(m)
        return m.SerializeToString()

    floats = model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                    helper.make_node("Add", ["h", "b"], ["z"]),
                    helper.make_node("Softmax", ["z"], ["y"], axis=1)],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
                   TensorProto.FLOAT)
    w_scale = np.float32(np.abs(w).max() / 127)
    w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    scalar = lambda name, v, dtype: numpy_helper.from_array(np.array(v, dtype), name)  # noqa: E731
    int8 = model(
        [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
         helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
         helper.make_node("MatMul", ["xd", "wd"], ["h"]),
         helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["y"])],
        [numpy_helper.from_array(w_q, "wq"), scalar("xs", 1 / 127, np.float32),
         scalar("xz", 0, np.int8), scalar("ws", w_scale, np.float32), scalar("wz", 0, np.int8),
         scalar("ys", 0.05, np.float32), scalar("yz", 0, np.int8)],
        TensorProto.INT8)
    return {"float": floats, "int8": int8, "w": w, "b": b, "w_q": w_q, "w_scale": w_scale}


GUEST_RUN = r'''
import io, sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = np.concatenate([s.run(None, {"x": row[None]})[0] for row in x])
buf = io.BytesIO(); np.save(buf, out); sys.stdout.buffer.write(buf.getvalue())
'''


def test_onnxruntime_on_riscv64_gives_the_hosts_outputs(virtual, tmp_path):
    import onnxruntime as ort

    models = tiny_onnx_models()
    x = np.random.default_rng(5).uniform(-1, 1, (32, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    files = [tmp_path / "x.npy"]
    for name in ("float", "int8"):
        (tmp_path / f"{name}.onnx").write_bytes(models[name])
        files.append(tmp_path / f"{name}.onnx")
    push(virtual.board, files)
    outputs = {}
    for name in ("float", "int8"):
        raw = on_board(virtual, "sh", "-c",
                       'cd "$1" && exec python3 -c "$2" "$3" x.npy 2>/dev/null',
                       "sh", virtual.board.remote_dir, GUEST_RUN, f"{name}.onnx")
        board = np.load(io.BytesIO(raw))
        session = ort.InferenceSession(models[name], providers=["CPUExecutionProvider"])
        host = np.concatenate([session.run(None, {"x": row[None]})[0] for row in x])
        outputs[name] = (board, host)
    board, host = outputs["float"]
    assert board.dtype == np.float32 and board.shape == (32, 10)
    np.testing.assert_allclose(board, host, rtol=1e-5, atol=1e-6)
    # an independent reference: numpy's softmax(xW + b)
    z = x.astype(np.float64) @ models["w"] + models["b"]
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(board, ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    board, host = outputs["int8"]
    assert board.dtype == np.int8
    assert np.array_equal(board, host)  # int8: bit for bit
    # numpy's own QDQ arithmetic: within one step of rounding
    xq = np.clip(np.round(x * 127), -128, 127)
    acc = (xq / 127) @ (models["w_q"].astype(np.float64) * models["w_scale"])
    ref = np.clip(np.round(acc / 0.05), -128, 127)
    assert np.abs(board.astype(int) - ref).max() <= 1


# --- the pipeline's own ONNX models on riscv64 against this host --------------------------

# Each model's input file and output, one image per run (the static batch of 1), in a
# session configured as the runner's (its disabled optimizers).
GUEST_MODELS = r'''
import io, sys, numpy as np, onnxruntime as ort
disabled = sys.argv[1].split(",")
outputs = {}
for name in sys.argv[2:]:
    s = ort.InferenceSession(name + ".onnx", providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled)
    feed = s.get_inputs()[0].name
    x = np.load(name + ".npy")
    outputs[name] = np.concatenate([s.run(None, {feed: row[None]})[0] for row in x])
buf = io.BytesIO(); np.savez(buf, **outputs); sys.stdout.buffer.write(buf.getvalue())
'''
# Images of the smoke build's test split each model runs on the board and on this host.
BOARD_IMAGES = 100
# Float outputs (softmax probabilities): riscv64's MLAS kernels sum in another order than
# x86's, so the last bits may differ; 1e-5 of a probability is far below what moves a top-1.
FLOAT_ATOL = 1e-5


def test_every_onnx_model_of_a_build_answers_on_riscv64_as_on_this_host(virtual,
                                                                        smoke_project,
                                                                        tmp_path):
    """Every ONNX variant of both smoke builds (exported, ORT's QDQ, the translated .tflite
    in its rewritten integer form) run by Debian's riscv64 onnxruntime under emulation and by
    this host's on the same test images: the same top-1 class on every image, integer
    outputs equal, float outputs within FLOAT_ATOL."""
    from pipeline import load_runner
    from pipeline.core.layout import Layout
    from pipeline.core.runtimes import OnnxRuntimeModel
    from pipeline.core.variants import VARIANTS
    from pipeline.stages.preprocess import load_arrays

    layout = Layout(smoke_project / "artifacts")
    images = load_arrays(layout.dataset_npz("mnist"))["x_test"][:BOARD_IMAGES, ..., None]
    runner = load_runner()
    host, files = {}, []
    for build in ("mnist_cnn", "mnist_mlp"):
        for variant in (v for v, spec in VARIANTS.items() if spec.format == "onnx"):
            name = f"{build}_{variant}"
            model = OnnxRuntimeModel(layout.variant_path(build, variant), threads=1)
            detail = model._input
            x = np.stack([runner.quantize(image[None], detail)[0] for image in images])
            shutil.copy(layout.variant_path(build, variant), tmp_path / f"{name}.onnx")
            np.save(tmp_path / f"{name}.npy", x)
            files += [tmp_path / f"{name}.onnx", tmp_path / f"{name}.npy"]
            host[name] = np.concatenate(
                [model.session.run(None, {detail["name"]: row[None]})[0] for row in x])
    assert len(host) == 6
    push(virtual.board, files)
    raw = on_board(virtual, "sh", "-c",
                   'cd "$1" && shift && exec python3 -c "$@" 2>/dev/null', "sh",
                   virtual.board.remote_dir, GUEST_MODELS,
                   ",".join(runner.ORT_DISABLED_OPTIMIZERS), *host)
    board = dict(np.load(io.BytesIO(raw)))
    assert set(board) == set(host)
    for name, expected in host.items():
        got = board[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape == (BOARD_IMAGES, 10)
        assert np.array_equal(got.argmax(1), expected.argmax(1)), name
        if np.issubdtype(expected.dtype, np.integer):
            assert np.array_equal(got, expected), (name, np.abs(
                got.astype(int) - expected.astype(int)).max())
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT_ATOL, err_msg=name)
        worst = np.abs(got.astype(np.float64) - expected.astype(np.float64)).max()
        print(f"{name}: top-1 equal on {BOARD_IMAGES} images, largest difference {worst:.3g}")


# --- end to end: `doit bench:virtual-k1` on the smoke build -------------------------------


def test_doit_bench_on_the_virtual_k1(virtual, smoke_project, tmp_path):
    """The whole board path through doit, unchanged: push over SSH, the runner on riscv64
    under Debian's onnxruntime, predictions checked against the host's, the TFLite rows
    marked as having no runtime, every figure marked emulated."""
    from pipeline.core.layout import Layout
    from pipeline.core.variants import VARIANTS
    from tests.conftest import run_doit

    # Its own copy: the bench adds this board's rows to latency.json, which other tests of
    # the shared smoke build read as the local board's only (test_dodo, in whatever order
    # the xdist workers run the files).
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)

    started = time.monotonic()
    proc = run_doit(project, "bench:virtual-k1",
                    env={"PIPELINE_BOARDS": str(virtual.layout.inventory)})
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The figure the issue asks for (runs/warm-up keep one bench under ~2 minutes); printed,
    # not asserted: a timed test would measure the machine's load, not the code.
    print(f"\nbench:virtual-k1 wall time {seconds:.1f} s")
    print("\n".join(line for line in proc.stdout.splitlines()
                    if "virtual-k1" in line or "machine" in line.lower()))
    layout = Layout(project / "artifacts")
    doc = json.loads(layout.board_result("virtual-k1").read_text())
    print(f"machine: {doc['machine']}")
    print("\n".join(line for line in layout.latency_report("md").read_text().splitlines()
                    if "virtual-k1 (EMULATED)" in line and not line.startswith("|")))
    assert doc["machine"]["uname"].split()[-1] == "riscv64"
    assert "emulated" in doc["machine"]["cpu_model"] and doc["emulated"] is True
    assert doc["peak"] == []  # no floor from qemu's speed
    builds = ("mnist_cnn", "mnist_mlp")
    onnx = {(r["build"], r["variant"]): r for r in doc["results"]}
    assert set(onnx) == {(b, v) for b in builds for v, spec in VARIANTS.items()
                         if spec.format == "onnx"}, sorted(onnx)
    for (build, variant), r in onnx.items():
        assert r["runtime"]["name"] == "onnxruntime", (build, variant, r["runtime"])
        assert r["providers"] == ["CPUExecutionProvider"]
        assert r["samples"] > 0 and r["p50_us"] > 0
        if VARIANTS[variant].integer:  # int8: every prediction equals the host's
            assert r["agreement"] == 1.0 and r["disagreements"] == [], (build, variant)
    assert any(VARIANTS[v].integer for _, v in onnx)  # the exact check above did run
    # every TFLite model is there, each saying why it has no figures
    missing = {(m["build"], m["variant"]): m["error"] for m in doc["missing"]}
    tflite = {(b, v) for b in builds for v, spec in VARIANTS.items()
              if spec.format == "tflite" and layout.variant_path(b, v).exists()}
    assert tflite and set(missing) == tflite, sorted(missing)
    assert all(e.startswith("NO RUNTIME: no TFLite runtime on this board")
               for e in missing.values()), set(missing.values())
    rows = json.loads(layout.latency_report("json").read_text())["rows"]
    mine = [r for r in rows if r["board"] == "virtual-k1"]
    assert mine and all(r["emulated"] for r in mine)
    assert "virtual-k1 (EMULATED)" in layout.latency_report("md").read_text()
    assert "virtual-k1 (EMULATED)" in proc.stdout
    for build in builds:  # ONNX Runtime's per-op profile, from the board
        assert layout.op_profile(build, "virtual-k1", "md").stat().st_size > 0
        ops = json.loads(layout.op_profile(build, "virtual-k1", "json").read_text())
        assert ops, build


# --- down and up again --------------------------------------------------------------------


def test_down_stops_a_running_session_then_up_again_is_warm(virtual):
    """Runs last in this file: takes the board down under a live session, checks that
    nothing is left, and brings it up again (warm cache) for whatever test comes next."""
    tag = str(virtual.layout.state.resolve())
    session = subprocess.Popen(ssh_argv(virtual.board, ["sleep", "600"]),
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(vk_processes.board_processes(tag)) >= 2, 30)
        down = cli("down", *layout_args(virtual.layout))
        assert down.returncode == 0, down.stdout + down.stderr
        assert everything_left(virtual.layout, tag) == []
        assert session.wait(timeout=20) != 0  # its connection was cut
        # what up changed on the host is undone
        assert vk_host.binfmt_entry() == virtual.binfmt_before
        assert (vk_host.BINFMT_DIR / "register").exists() == virtual.binfmt_mounted_before
    finally:
        session.kill()
        session.wait()
    again = cli("up", *layout_args(virtual.layout), "--boards",
                str(REPO / "board" / "boards.toml"))
    assert again.returncode == 0, again.stdout + again.stderr
    # the root file system came from the cache (its timings: benchmarks/bench_virtual_k1.py)
    assert "building" not in again.stdout
    port = json.loads(virtual.layout.record.read_text())["port"]
    old_port = virtual.board.port
    virtual.board = next(b for b in load_boards(virtual.layout.inventory)
                         if b.name == "virtual-k1")
    # the same port again, so the entry (and doit's up-to-date check of bench) is unchanged
    assert virtual.board.port == port == old_port
    assert on_board(virtual, "uname", "-m").strip() == b"riscv64"


def test_without_root_up_says_so_in_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop it (this test runs `up` as nobody)")
    code = ("import os, sys; from pipeline.virtual_k1.manage import main; os.setgid(65534); "
            "os.setuid(65534); main(sys.argv[1:])")
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", code, "up", "--cache", str(cache)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == vk_paths.UNAVAILABLE
    assert proc.stderr.count("\n") == 1 and "needs root" in proc.stderr
    assert "Traceback" not in proc.stderr and not cache.exists()


def test_an_unreachable_archive_is_one_line_and_leaves_the_host_as_it_was(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (up gets as far as the first build)")
    mounted_before = (vk_host.BINFMT_DIR / "register").exists()
    binfmt_before = vk_host.binfmt_entry()
    closed = f"http://127.0.0.1:{free_port()}/debian"  # nothing listens there
    layout = vk_paths.BoardPaths(tmp_path / "cache", tmp_path / "state")
    proc = cli("up", *layout_args(layout), "--mirror", closed)
    assert proc.returncode == vk_paths.UNAVAILABLE, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"Debian's archive is unreachable at {closed}" in proc.stderr
    assert not layout.rootfs.exists() and not list(layout.cache.glob(".rootfs.partial*"))
    assert everything_left(layout, str(layout.state.resolve())) == []
    assert vk_host.binfmt_entry() == binfmt_before
    assert (vk_host.BINFMT_DIR / "register").exists() == mounted_before


# Stands in for mmdebstrap where the test is about `up`'s handling of it, not about Debian:
# like mmdebstrap it ignores SIGTERM and runs as several processes (its apt and tar) that keep
# writing into the partial tree until they are killed.
STANDIN_MMDEBSTRAP = f"""#!{sys.executable}
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
target = sys.argv[-2]
os.makedirs(target, exist_ok=True)
for _ in range(3):
    if os.fork() == 0:
        break
with open(os.environ["STANDIN_PIDS"], "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")
while True:
    with open(os.path.join(target, f"file{{os.getpid()}}"), "a") as fh:
        fh.write("x")
    time.sleep(0.05)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_up_during_the_build_leaves_no_build_process(tmp_path, sig):
    if os.geteuid() != 0:
        pytest.skip("needs root (up gets as far as the root file system build)")
    binfmt_before = vk_host.binfmt_entry()
    standin = tmp_path / "bin" / "mmdebstrap"
    standin.parent.mkdir()
    standin.write_text(STANDIN_MMDEBSTRAP)
    standin.chmod(0o755)
    pids = tmp_path / "build.pids"
    layout = vk_paths.BoardPaths(tmp_path / "cache", tmp_path / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PATH=f"{standin.parent}:{env['PATH']}", STANDIN_PIDS=str(pids))
    up = subprocess.Popen([sys.executable, "-m", "pipeline.virtual_k1", "up",
                           *layout_args(layout), "--mirror", "http://127.0.0.1:9/debian"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def running() -> list[int]:
        listed = pids.read_text().split() if pids.exists() else []
        return [pid for pid in map(int, listed) if vk_processes.alive(pid)]

    try:
        assert wait_for(lambda: len(running()) == 4, 120), up.stderr.read1().decode()
        up.send_signal(sig)
        up.communicate(timeout=60)
        if sig == signal.SIGKILL:  # nothing of `up` ran after it: `down` must find the build
            down = cli("down", *layout_args(layout))
            assert down.returncode == 0, down.stdout + down.stderr
        # PDEATHSIG reaches the first process at once; `down` (or `up`'s own SIGTERM
        # handling) stops the rest: 10 s is three times stop_processes' grace.
        assert wait_for(lambda: not running(), 10), f"still writing: {running()}"
    finally:
        for pid in running():
            os.kill(pid, signal.SIGKILL)
        cli("down", *layout_args(layout))
    assert vk_host.binfmt_entry() == binfmt_before


def test_a_read_only_cache_is_one_line_naming_it(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (a read-only mount; root writes through file modes)")
    binfmt_before = vk_host.binfmt_entry()
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                              str(readonly)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
    try:
        layout = vk_paths.BoardPaths(readonly / "cache", tmp_path / "state")
        proc = cli("up", *layout_args(layout), "--mirror", "http://127.0.0.1:9/debian")
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (f"error: {readonly / 'cache'}: cannot write the virtual K1's cache "
                           "there (Read-only file system); give a writable directory with "
                           "--cache or VIRTUAL_K1_CACHE\n")
    assert vk_host.binfmt_entry() == binfmt_before  # up undid what it had done


def test_an_emulated_boards_result_says_so(tiny_models, peak_models, tmp_path):
    """bench writes the inventory's flag into the board's result, which the reports mark, and
    times no peak GEMM there (no floor from qemu's speed); on a local board, so no emulation
    is needed."""
    from pipeline.core.layout import Layout
    from pipeline.stages.preprocess import save_arrays
    from tests.conftest import synthetic_images

    labels = np.arange(20) % 10
    save_arrays(tmp_path / "d.npz", {"x_test": synthetic_images(labels, 2), "y_test": labels})
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}
    layout = Layout(tmp_path / "artifacts")
    for emulated in (True, False):
        board = Board(name="emu", emulated=emulated, warmup=1, runs=3)
        document = bench.run(board, models, {"tiny_mlp": tmp_path / "d.npz"}, 10, layout,
                             [board], peak_models)
        assert document["emulated"] is emulated
        assert bool(document["peak"]) is not emulated
        saved = json.loads(layout.board_result("emu").read_text())
        assert saved["emulated"] is emulated
        rows = json.loads(layout.latency_report("json").read_text())["rows"]
        assert [r["emulated"] for r in rows] == [emulated]
        assert ("floor_us" in rows[0]) is not emulated  # no floor from an emulator's speed


# --- pure parts: no root needed -------------------------------------------------------------


def test_the_mirror_is_the_first_debian_archive_of_the_apt_config(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a-node.sources").write_text(
        "Types: deb\nURIs: https://third.example/node\nSuites: nodistro\nComponents: main\n")
    (d / "b-debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\n# comment\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\n  http://second.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n")
    assert vk_host.apt_mirror(d, tmp_path / "none") == "http://mirror.example/debian"
    (d / "b-debian.sources").unlink()
    assert vk_host.apt_mirror(d, tmp_path / "none") is None
    listing = tmp_path / "sources.list"
    listing.write_text("# deb http://commented.example/debian trixie main\n"
                       "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian trixie main\n")
    assert vk_host.apt_mirror(d, listing) == "http://one.example/debian"


def test_a_cached_build_skips_apts_update(tmp_path):
    layout = vk_paths.BoardPaths(tmp_path / "cache", tmp_path / "state")
    online = vk_rootfs.mmdebstrap_argv(tmp_path / "t", layout, "http://m/debian", "trixie", False)
    offline = vk_rootfs.mmdebstrap_argv(tmp_path / "t", layout, "http://m/debian", "trixie", True)
    assert "--skip=update" in offline and "--skip=update" not in online
    assert online[-3:] == ["trixie", str(tmp_path / "t"), "http://m/debian"]
    assert "--variant=extract" in online and "--arch=riscv64" in online
    assert f"--include={','.join(vk_rootfs.PACKAGES)}" in online


def test_binfmt_line_uses_the_f_flag():
    line = vk_host.binfmt_line("/usr/bin/qemu-riscv64-static")
    fields = line.split(":")
    assert fields[1] == "qemu-riscv64" and fields[2] == "M" and fields[-1] == "F"
    assert fields[-2] == "/usr/bin/qemu-riscv64-static"
    # the magic is the riscv64 ELF header: EM_RISCV = 0xf3 at offset 18
    magic = bytes.fromhex(fields[4].replace("\\x", ""))
    assert magic[:4] == b"\x7fELF" and magic[18] == 0xF3 and len(magic) == len(
        bytes.fromhex(fields[5].replace("\\x", "")))


def test_state_directory_must_be_private_and_sshd_safe(tmp_path):
    with pytest.raises(vk_paths.VirtualK1Error, match="no spaces"):
        vk_sshd.check_state_dir(tmp_path / "a b")
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(vk_paths.VirtualK1Error, match="mode 0700"):
        vk_sshd.check_state_dir(loose)
    vk_sshd.check_state_dir(tmp_path / "fresh")
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700


def test_mounts_under_reads_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /proc rw - proc proc rw\n"
                    f"30 22 0:5 / {tmp_path}/root/proc rw - proc proc rw\n"
                    f"31 30 0:5 /cpuinfo {tmp_path}/root/proc/cpuinfo ro - proc proc rw\n"
                    f"32 1 0:6 / {tmp_path}/rootfs2 rw - tmpfs t rw\n")
    assert vk_processes.mounts_under(tmp_path / "root", info) == [
        f"{tmp_path}/root/proc/cpuinfo", f"{tmp_path}/root/proc"]


def test_cpuinfo_says_emulated_and_counts_the_cpus():
    text = vk_sshd.cpuinfo_text(3)
    assert text.count("processor\t:") == 3 and "not a SpacemiT X60" in text
    assert "rv64imafdcv" in text


def test_answers_help():
    proc = cli("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m pipeline.virtual_k1 ")
    assert "{up,down,status}" in proc.stdout and "--mirror" in proc.stdout


def test_the_inventory_flag_emulated_is_a_boolean_defaulting_to_false(tmp_path):
    inventory = tmp_path / "boards.toml"
    inventory.write_text('[[boards]]\nname = "real"\n\n[[boards]]\nname = "v"\nemulated = true\n')
    assert [b.emulated for b in load_boards(inventory)] == [False, True]
    inventory.write_text('[[boards]]\nname = "v"\nemulated = "yes"\n')
    with pytest.raises(ParamsError, match="emulated"):
        load_boards(inventory)
