"""The nightly's lock: an `flock` on a file beside what it protects.

The kernel holds the lock for the open file and drops it when the holder dies, however it
dies (SIGKILL, a reboot), so there is no stale lock to detect: no PID, no start time, no
takeover. The file's content (PID, start, run directory) is only for the message a refused
nightly prints; whatever it holds (nothing, random bytes, a live unrelated PID) never decides
anything. The file is never removed: removing it would let a second nightly lock a new inode
while the first still holds the old one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from pipeline import PipelineError


class NightlyLocked(PipelineError):
    """Another nightly holds the lock."""


class LockUnusable(PipelineError):
    """The lock path cannot be a lock file (a directory, a symlink, no permission)."""


def _describe_holder(content: bytes) -> str:
    try:
        holder = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        holder = None
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another nightly is running (its lock file names no readable holder)"
    return (f"another nightly is running: PID {holder.get('pid')}, started "
            f"{holder.get('started_utc', '?')} (run directory {holder.get('run_dir', '?')})")


def acquire(path: Path, info: dict[str, Any]) -> int:
    """Take the lock at `path` without waiting; return its file descriptor (hold it open).

    Raises NightlyLocked naming the holder, or LockUnusable saying what to do with the path.
    The file is opened without truncating: a refused nightly never touches the holder's
    content; the holder rewrites it only once the lock is its own.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted at the lock path is never followed to its target.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except IsADirectoryError:
        raise LockUnusable(f"lock path {path} is a directory, not the nightly's lock file: "
                           f"remove it (rmdir {path}) and start the nightly again") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockUnusable(f"lock path {path} is a symbolic link: remove it (the nightly "
                               "never follows links) and start the nightly again") from None
        raise LockUnusable(f"cannot open the lock file {path}: {exc.strerror}; make its "
                           "directory writable by this user") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            content = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        raise NightlyLocked(f"{_describe_holder(content)}; lock file {path}") from None
    except OSError as exc:  # e.g. a filesystem without flock
        os.close(fd)
        raise LockUnusable(f"cannot lock {path}: {exc.strerror}; put the artifacts (or --db) "
                           "on a local filesystem") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    return fd


def release(fd: int) -> None:
    """Drop the lock: only the holder has the descriptor, so nobody else's lock is touched.

    The details are cleared first (a finished nightly is named by nothing), then the
    descriptor is closed, which is what releases the flock.
    """
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass
