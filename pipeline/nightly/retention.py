"""Run directories of the nightly: their names, and what is kept of them.

artifacts/nightly/<UTC stamp>/ per run; `prune` keeps the last completed runs (see its
docstring) and never touches anything the nightly did not make; `remove_partials` removes
the temporary files an interrupted write leaves in a run directory.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from pipeline.nightly import history

# The name of a run directory the nightly made: nothing else under nightly/ is ever pruned.
RUN_DIR_NAME = re.compile(r"\d{8}T\d{6}Z(-\d+)?")


def run_stamp(started_utc: str, parent: Path) -> Path:
    """artifacts/nightly/<UTC stamp> for an ISO time; a suffix if that second's exists."""
    base = started_utc.replace("-", "").replace(":", "")
    candidate, n = parent / base, 1
    while candidate.exists() or candidate.is_symlink():
        candidate, n = parent / f"{base}-{n}", n + 1
    return candidate


def remove_partials(run_dir: Path) -> int:
    """Delete the temporary `.<name>.<random>.partial` files an interrupted write left."""
    removed = 0
    for path in Path(run_dir).rglob(".*.partial*"):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def prune(nightly_dir: Path, keep: int, current: Path, runs: Sequence[dict[str, Any]]
          ) -> list[Path]:
    """Delete run directories beyond the last `keep` completed runs; return what was deleted.

    `runs` are the database's (id, status, run_dir) rows. Only directories this module made
    for a run of this database are candidates (a stamp name, a real directory: never a
    symlink, never a user's own folder); order is the run id, not the name (a clock set
    wrong does not make a directory the newest for ever). The current run is always kept.
    Failed runs do not count toward `keep`, so they never push out the last good run: of
    those newer than the oldest kept completed run, the last `keep` stay too (their doit.log
    says why they failed); older ones go.
    """
    nightly_dir = Path(nightly_dir)
    if not nightly_dir.is_dir():
        return []
    by_name = {Path(r["run_dir"]).name: r for r in runs if r.get("run_dir")
               and Path(r["run_dir"]).parent.resolve() == nightly_dir.resolve()}
    completed = [r["id"] for r in runs if r["status"] in history.COMPLETED]
    kept = set(completed[-keep:])
    oldest_kept = min(kept) if kept else 0
    failed = [r["id"] for r in runs if r["status"] not in history.COMPLETED
              and r["id"] > oldest_kept]
    kept |= set(failed[-keep:])
    doomed = []
    for path in sorted(nightly_dir.iterdir()):
        run = by_name.get(path.name)
        if (run is None or run["id"] in kept or path.name == current.name
                or path.is_symlink() or not path.is_dir()
                or not RUN_DIR_NAME.fullmatch(path.name)):
            continue
        shutil.rmtree(path)
        doomed.append(path)
    return doomed
