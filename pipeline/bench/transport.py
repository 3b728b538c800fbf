"""The seam between the bench and a board: how a command runs there and files get there.

The bench (pipeline/bench/session.py) only ever talks to a `Transport`: it pushes the plan's
files, runs the runner with a timeout, and asks the transport to explain an exit status that
means something about the way the board is reached. Two implementations exist:
LocalTransport (pipeline/bench/local.py, this machine) and SshTransport
(pipeline/bench/ssh.py, the system OpenSSH client). Another way to reach a board (adb, a
labgrid place) is one more module implementing this protocol, and one line in `connect`.
"""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Protocol, Sequence

from pipeline import PipelineError
from pipeline.core.boards import Board

MAX_OUTPUT = 16 * 2**20    # bytes read from a command's stdout (or stderr) before giving up

Progress = Callable[[str], None]


class BoardError(PipelineError):
    pass


class Transport(Protocol):
    """One board, reached one way, for the length of a `with` block (a transport may hold a
    connection open; leaving the block closes it)."""

    board: Board
    python: str  # the interpreter that runs board/runner.py there

    def __enter__(self) -> "Transport": ...

    def __exit__(self, *exc: object) -> None: ...

    def push(self, files: Sequence[Path]) -> list[str]:
        """Make `files` available to commands on the board; return the names copied."""

    def path(self, local: Path) -> str:
        """How a command on the board names a file handed to push()."""

    def run(self, argv: Sequence[str], timeout: float, on_progress: Progress | None = None,
            stdin: bytes | None = None, step: str = "the runner") -> tuple[int, bytes, str]:
        """Run `argv` on the board, stopped after `timeout` s; (its status, stdout, stderr).

        A failure to reach the board raises BoardError saying why; the status is always the
        command's own."""

    def explain(self, status: int) -> str | None:
        """What an exit status means for this transport (None: nothing special)."""


def connect(board: Board) -> Transport:
    """The transport that reaches `board`: this machine without `host`, else OpenSSH."""
    if board.is_local:
        from pipeline.bench.local import LocalTransport

        return LocalTransport(board)
    from pipeline.bench.ssh import SshTransport

    return SshTransport(board)


def stream_process(argv: Sequence[str], timeout: float, describe: str,
                   on_progress: Progress | None = None, stdin_data: bytes | None = None,
                   step: str = "the runner") -> tuple[int, bytes, str]:
    """Run `argv`, reading at most MAX_OUTPUT bytes of stdout; (status, stdout, stderr).

    stdin stays open while we wait (the runner stops when it closes) and is closed, and the
    process killed, on every way out of this function: timeout, too much output, Ctrl-C.
    Lines `progress {json}` on stderr are passed to `on_progress` as they arrive.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err_tail, overflow, readers = _read_outputs(proc, on_progress)
    try:
        if stdin_data is not None:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BoardError(f"{describe}: {step} gave no result within {timeout:.0f} s; "
                             "stopped it (what it ran on the board stops when the connection "
                             "closes)") from None
        for reader in readers:
            reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
    if overflow:
        raise BoardError(f"{describe}: printed more than {MAX_OUTPUT >> 20} MiB on "
                         f"{overflow[0]}; stopped it")
    return status, bytes(out), "\n".join(err_tail)


def _read_outputs(proc: subprocess.Popen, on_progress: Progress | None
                  ) -> tuple[bytearray, deque[str], list[str], list[threading.Thread]]:
    """Threads reading `proc`'s stdout (at most MAX_OUTPUT bytes) and stderr (its last 200
    lines, `progress` lines to `on_progress`), killing it when either says too much:
    (stdout so far, stderr tail, which stream overflowed, the started threads)."""
    out = bytearray()
    err_tail: deque[str] = deque(maxlen=200)
    overflow: list[str] = []

    def read_stdout() -> None:
        while block := proc.stdout.read(65536):
            if len(out) + len(block) > MAX_OUTPUT:
                overflow.append("stdout")
                proc.kill()
                return
            out.extend(block)

    def read_stderr() -> None:
        total = 0
        for raw in proc.stderr:
            total += len(raw)
            if total > MAX_OUTPUT:
                overflow.append("stderr")
                proc.kill()
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith("progress ") and on_progress:
                on_progress(line[len("progress "):])
            else:
                err_tail.append(line[:2000])

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    return out, err_tail, overflow, readers
