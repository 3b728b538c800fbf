"""Atomic file writes, all-or-nothing output sets, and hashing shared by every stage.

A stage writes each artifact to a unique hidden temporary name in the same directory and renames
it into place, so an interrupted task never leaves a file that looks finished. A stage with
several outputs writes them inside `outputs_together()`: every file is renamed only when all
of them are complete, so a failure (a full disk, Ctrl-C, a bug) leaves the previous set or
nothing, never a new file beside an old or missing sibling. A full disk is one line naming the
file and the space needed (`DiskFullError`), not a traceback.

`sha256_file`, `target_stamps` and `changed_targets` live in pipeline/core/stamps.py (a
no-op `doit` checks every target with them without compiling this module) and are
importable from here too.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline import PipelineError
from pipeline.core.stamps import (  # noqa: F401 (this module's API too)
    changed_targets, sha256_file, target_stamps)

# The errors a full file system (or an exhausted quota) raises.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

# The set of outputs being written by the innermost `outputs_together()`: final path ->
# its finished temporary file. A context variable, so the stages' helpers (render_chart,
# write_csv ...) take part without being handed it.
_pending: contextvars.ContextVar[dict[Path, Path] | None] = contextvars.ContextVar(
    "pending_outputs", default=None)


class DiskFullError(PipelineError):
    """No space left while writing an output; the message names it and the space needed."""


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def disk_full_message(path: Path, finished: Iterable[Path], current: Path | None = None,
                      payload: int = 0) -> str:
    """What to tell the user when writing `path` (into temporary `current`) ran out of space.

    The space needed is a lower bound from what is known: the task's outputs already
    written (`finished`, temporaries about to be removed) plus this file (`payload` bytes
    when known, else what it reached), or the size of the files it would replace, whichever
    is larger.
    """
    finished = [Path(t) for t in finished]
    written = sum(_size(t) for t in finished)
    reached = _size(Path(current)) if current else 0
    previous = sum(_size(Path(p)) for p in {Path(path), *_final_names(finished)})
    needed = max(written + max(payload, reached), previous, 1)
    free = free_bytes(Path(path).parent) + written + reached  # freed on the way out
    return (f"no space left on the device writing {path}: this task's files need more than "
            f"{_mib(needed)}, {_mib(free)} free there; free some space and rerun (nothing "
            "partial was kept, the previous files are unchanged)")


def _final_names(temporaries: Iterable[Path]) -> list[Path]:
    pending = _pending.get() or {}
    by_tmp = {tmp: final for final, tmp in pending.items()}
    return [by_tmp[t] for t in temporaries if t in by_tmp]


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Every file written through `atomic_path` in this block is renamed into place only when
    the block completes; if it raises, none is, and their temporaries are removed.

    Nested blocks join the outermost one. The renames themselves need no space, so a full
    disk can only strike before them; a SIGKILL between two renames can leave a mixed set,
    which doit reruns (the task was never recorded as done).
    """
    if _pending.get() is not None:
        yield
        return
    pending: dict[Path, Path] = {}
    token = _pending.set(pending)
    try:
        yield
        for final, tmp in pending.items():
            try:
                _fsync(tmp)
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise DiskFullError(disk_full_message(final, pending.values())) from None
                raise
        for final, tmp in pending.items():
            os.replace(tmp, final)
        for parent in {final.parent for final in pending}:
            _fsync(parent)  # the renames survive a power cut
    finally:
        _pending.reset(token)
        for tmp in pending.values():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "", payload: int = 0) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds
    (inside `outputs_together()`, when the whole set does).

    `suffix` keeps an extension that a writer insists on (Keras needs `.h5`); `payload` is
    the number of bytes about to be written, when known, for the disk-full message.
    """
    path = Path(path)
    pending = _pending.get()
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique name per writer: two tasks writing the same file at once (doit -n) never
        # share a temporary file, and O_EXCL never follows a symlink planted under that name.
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}",
                                    dir=path.parent)
        os.close(fd)
        os.chmod(name, 0o644)  # mkstemp's 0600 would make artifacts private to one user
        tmp = Path(name)
        yield tmp
        if pending is not None:
            earlier = pending.pop(path, None)  # written twice in one set: the last one wins
            if earlier is not None:
                earlier.unlink(missing_ok=True)
            pending[path] = tmp
            tmp = None  # outputs_together renames it, or removes it
        else:
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        # Libraries (h5py, zipfile, matplotlib) raise ENOSPC as an OSError with errno 28.
        raise DiskFullError(disk_full_message(path, (pending or {}).values(), tmp,
                                              payload)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path, payload=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
