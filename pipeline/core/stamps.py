"""What a task wrote, recorded so that dodo.py can notice a target that was truncated or
replaced behind doit's back and rerun the task that makes it; and the SHA-256 of a file.

Apart from pipeline/core/files.py (which imports these for its callers): every no-op `doit`
checks each task's targets with `changed_targets`, and need not compile the writers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def target_stamps(paths: Iterable[Path]) -> dict[str, list[Any]]:
    """{path: [bytes, mtime_ns, sha256]} of files a task just wrote, to be kept by doit."""
    stamps = {}
    for path in map(Path, paths):
        st = path.stat()
        stamps[str(path)] = [st.st_size, st.st_mtime_ns, sha256_file(path)]
    return stamps


def changed_targets(stamps: dict[str, list[Any]], paths: Iterable[Path]) -> list[str]:
    """One line per file of `paths` that is not what `target_stamps` recorded: a different
    size, or (when its time changed) different bytes. A file without a record, or missing
    (doit notices that itself), is not reported. Costs one stat per file when nothing changed.
    """
    changed = []
    for path in map(str, paths):  # no Path objects: every no-op `doit` runs this per target
        recorded = stamps.get(path)
        if not recorded:
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        size, mtime_ns, digest = recorded
        if st.st_size != size:
            changed.append(f"{path} is {st.st_size:,} bytes, {size:,} when it was written")
        elif st.st_mtime_ns != mtime_ns and sha256_file(path) != digest:
            changed.append(f"{path} has changed since it was written (same size, other bytes)")
    return changed
