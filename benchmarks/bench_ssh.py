"""SSH connection sharing: connections and wall time of one board's bench, without and with.

    python benchmarks/bench_ssh.py --repeats 5                 # a throwaway sshd on 127.0.0.1
    python benchmarks/bench_ssh.py --boards /path/boards.toml --board virtual-k1 \
        --log /path/state/sshd.log --format onnx --repeats 3   # e.g. the virtual K1

Stages one plan (four tiny untrained models: float32 and int8 of a CNN and an MLP, as
.tflite or with --format onnx as .onnx, 16 samples each), then runs it on the board
alternately through an SshTransport without sharing (one connection per command: the bench
before) and with it (one connection per bench), each time into a fresh remote_dir (`cold`:
every file pushed) and again into the same one (`warm`: nothing pushed); the fresh
directories are removed at the end. Connections are
counted from the sshd's log ("Accepted publickey"): the benchmark's own sshd, or --log.
Prints per mode the median wall time and range and the ratio of medians unshared/shared,
all measured interleaved in this one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.bench.plan import stage_plan  # noqa: E402
from pipeline.bench.session import run_on_board  # noqa: E402
from pipeline.bench.ssh import SshTransport, ssh_run  # noqa: E402
from pipeline.core.boards import Board, load_boards  # noqa: E402


def start_sshd(d: Path) -> tuple[subprocess.Popen, Board, Path]:
    """A real sshd on a free 127.0.0.1 port with fresh keys; (process, board, its log)."""
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nMaxStartups 100\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                              stderr=open(d / "sshd.log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    kind, key = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
    options = ("-F", "/dev/null", "-i", str(d / "user_key"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
               "-o", "GlobalKnownHostsFile=/dev/null")
    board = Board(name="loop", host="127.0.0.1", port=port, ssh_options=options,
                  remote_dir=str(d / "home" / "bench"), python=sys.executable, warmup=2, runs=10)
    return server, board, d / "sshd.log"


def tiny_plan(board: Board, stage: Path, fmt: str) -> Path:
    """The plan: 4 models of `fmt` (.tflite; .onnx for a board without TFLite)."""
    from pipeline.stages.convert import convert
    from pipeline.stages.convert_onnx import export_float, quantize_int8
    from pipeline.stages.train import build_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = np.arange(16) % 10
    models = {}
    for kind in ("cnn", "mlp"):
        model = build_model(kind, (28, 28), 10)
        if fmt == "onnx":
            exported = export_float(model)
            contents = {"onnx_float32": exported,
                        "onnx_int8": quantize_int8(exported, images[:8])}
        else:
            contents = {v: convert(model, v, images[:8]) for v in ("float32", "int8")}
        for variant, content in contents.items():
            path = stage.parent / "models" / f"tiny_{kind}_{variant}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            models[f"tiny_{kind}/{variant}"] = path
    samples = {b: (images, labels) for b in ("tiny_cnn", "tiny_mlp")}
    return stage_plan(models, samples, board, stage)


def once(board: Board, plan: Path, share: bool, log: Path | None) -> tuple[float, int | None]:
    """(wall seconds, connections accepted) of one run_on_board."""
    before = log.read_text().count("Accepted publickey") if log else 0
    started = time.monotonic()
    with SshTransport(board, share=share) as transport:
        run_on_board(board, plan, transport=transport)
    seconds = time.monotonic() - started
    if log is None:
        return seconds, None
    time.sleep(0.3)  # the sshd's last log line
    return seconds, log.read_text().count("Accepted publickey") - before


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--board", help="a board of --boards (default: a throwaway sshd)")
    parser.add_argument("--boards", type=Path, default=REPO / "board" / "boards.toml")
    parser.add_argument("--log", type=Path, help="the board's sshd log, to count connections")
    parser.add_argument("--format", choices=("tflite", "onnx"), default="tflite",
                        help="the models' format (onnx for the virtual K1: no TFLite there)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        d = Path(tmp)
        server, log = None, args.log
        if args.board:
            board = next(b for b in load_boards(args.boards) if b.name == args.board)
        else:
            server, board, log = start_sshd(d)
        try:
            plan = tiny_plan(board, d / "stage", args.format)
            figures: dict[str, list[tuple[float, int | None]]] = {}
            made = []
            for i in range(args.repeats):
                for share in ((False, True) if i % 2 == 0 else (True, False)):
                    fresh = dataclasses.replace(
                        board, remote_dir=f"{board.remote_dir}-{os.getpid()}-{i}-{share}")
                    made.append(fresh.remote_path)
                    for when in ("cold", "warm"):
                        key = f"{when} {'shared' if share else 'unshared'}"
                        figures.setdefault(key, []).append(once(fresh, plan, share, log))
            ssh_run(board, ["rm", "-rf", "--", *made])
        finally:
            if server:
                server.terminate()
                server.wait(timeout=10)
    for key, values in sorted(figures.items()):
        seconds = [s for s, _ in values]
        print(f"{key:15} median {statistics.median(seconds):6.3f} s  range "
              f"{min(seconds):.3f}-{max(seconds):.3f} s  connections "
              f"{sorted({c for _, c in values})}  (n={len(values)})")
    for when in ("cold", "warm"):
        ratio = (statistics.median(s for s, _ in figures[f"{when} unshared"])
                 / statistics.median(s for s, _ in figures[f"{when} shared"]))
        print(f"{when}: unshared/shared wall time = {ratio:.2f}x")


if __name__ == "__main__":
    main()
