"""LocalTransport: a board without `host` is this machine; the runner runs here, no copy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from pipeline.bench.transport import Progress, stream_process
from pipeline.core.boards import Board


class LocalTransport:
    """Files stay where they are; commands run as child processes of this one."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.python = sys.executable  # the pipeline's own interpreter has numpy and a runtime

    def __enter__(self) -> "LocalTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def push(self, files: Sequence[Path]) -> list[str]:
        return []

    def path(self, local: Path) -> str:
        return str(local)

    def run(self, argv: Sequence[str], timeout: float, on_progress: Progress | None = None,
            stdin: bytes | None = None, step: str = "the runner") -> tuple[int, bytes, str]:
        status, out, err = stream_process(argv, timeout, self.board.label, on_progress,
                                          stdin, step)
        return (128 - status if status < 0 else status), out, err  # a signal, as a shell says

    def explain(self, status: int) -> str | None:
        return None
