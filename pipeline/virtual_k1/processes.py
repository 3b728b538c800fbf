"""The board's processes and mounts: found by the tag in their environment, stopped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    prefix = str(Path(path).resolve())
    found = []
    for line in mountinfo.read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def board_processes(tag: str, extra: Sequence[int] = ()) -> list[int]:
    """PIDs carrying this board's tag in their environment (every login and what it ran),
    plus `extra` PIDs still alive."""
    marker = f"VIRTUAL_K1_ID={tag}".encode() + b"\0"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() \
                and marker in _environ(entry.name) + b"\0":
            found.add(int(entry.name))
    found.update(pid for pid in extra if Path(f"/proc/{pid}").exists() and not is_zombie(pid))
    return sorted(found)


# In the environment of the root file system build (mmdebstrap and everything it starts):
# how `down` and the next `up` find a build whose `up` was killed (mmdebstrap ignores
# SIGTERM and outlives its parent, still writing into its partial tree).
BUILD_MARKER = "VIRTUAL_K1_BUILD"


def build_processes(cache: Path) -> list[int]:
    """PIDs of root file system builds into `cache` (their environment carries its path)."""
    marker = f"{BUILD_MARKER}={Path(cache).absolute()}".encode() + b"\0"
    return sorted(int(entry.name) for entry in Path("/proc").iterdir()
                  if entry.name.isdigit() and int(entry.name) != os.getpid()
                  and not is_zombie(int(entry.name)) and marker in _environ(entry.name) + b"\0")


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_processes(pids: Sequence[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace_s` (bounded)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(
                Path(f"/proc/{p}").exists() and not is_zombie(p) for p in pids):
            time.sleep(0.05)


def alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists() and not is_zombie(pid)
