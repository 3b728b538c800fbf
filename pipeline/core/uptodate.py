"""A task's code and settings as one doit up-to-date check that says what changed.

dodo.py gives each task one of these instead of one file_dep per code file: doit stats,
compares and stores every file_dep of every task on every run (about 500 of them here),
while this compares two small dicts. The code is each file's SHA-256
(pipeline/core/codedeps.py, cached by mtime and size), so, as with doit's own check of a
file_dep, a file rewritten with the same bytes is no change. doit's `config_changed` keeps
one digest, after which `doit info` could only say that something changed; this keeps the
files' hashes and the settings' digest in doit's database, so `doit info` names them.

It also keeps the stamps of what the task wrote (size, mtime, SHA-256 of each target, saved
with the rest after each successful run) and checks them: doit only checks that a target
exists, and a truncated or replaced .h5/.tflite would otherwise fail every later task
instead of being made again. One object does both because doit inspects the signature of
every check of every task on every run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

CODE_KEY, SETTINGS_KEY = "_code", "_settings"  # this check's values in doit's database
_UTC_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def settings_digest(settings: Any) -> str:
    return hashlib.md5(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def changes(old_code: dict[str, str] | None, old_settings: str | None,
            code: dict[str, str], settings: str) -> list[str]:
    """What differs from the task's last successful run, one phrase each; [] when nothing."""
    if old_code == code and old_settings == settings:
        return []  # a no-op `doit`: every task, every run
    if old_code is None:
        return ["not recorded (a first run, or the task last ran under an older pipeline)"]
    out = [f"{rel} {'added' if rel not in old_code else 'removed' if rel not in code else 'edited'}"
           for rel in sorted(old_code.keys() | code.keys()) if old_code.get(rel) != code.get(rel)]
    if old_settings != settings:
        out.append("its settings")
    return out


class CodeAndSettings:
    """Up to date while the task's code files have the bytes and its settings the values
    they had when it last ran. `code` is {file: SHA-256}; `settings` anything JSON."""

    # doit reads the signature of every check of every task on every run (to pass `task`
    # and `values`); stated, it is found at once instead of derived from __call__.
    __signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("task", "values")])

    def __init__(self, code: dict[str, str], settings: Any = None) -> None:
        self.code, self.settings = code, settings_digest(settings)
        self.changes: list[str] = []

    @classmethod
    def recorded(cls, code: dict[str, str], digest: str) -> CodeAndSettings:
        """The check with its settings' digest as recorded (the cached graph keeps that)."""
        check = cls(code)
        check.settings = digest
        return check

    def configure_task(self, task: Any) -> None:
        """doit calls this once per task: what it ran with, and what it wrote, is kept
        after each success."""
        task.value_savers.append(lambda: self.record(task.targets))

    def record(self, targets: list[str]) -> dict[str, Any]:
        from pipeline.core.stamps import target_stamps

        # A target the task did not write is not stamped (doit reruns a task whose target
        # is missing); stamping it would raise inside doit, past its task error handling.
        return {CODE_KEY: self.code, SETTINGS_KEY: self.settings,
                "targets": target_stamps(t for t in targets if os.path.exists(t))}

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        self.changes = changes(values.get(CODE_KEY), values.get(SETTINGS_KEY), self.code,
                               self.settings)
        if values.get("targets"):  # the stamps of what the task last wrote
            from pipeline.core.stamps import changed_targets

            damaged = changed_targets(values["targets"], task.targets)
            for line in damaged:
                print(f"{line}: rerunning {task.name}")
            self.changes += damaged
        return not self.changes

    def __repr__(self) -> str:
        # What `doit info` prints for a check that says "run".
        return "changed since the last run: " + ("; ".join(self.changes) or "nothing")


def measured_within(result_path: Path, hours: float) -> bool:
    """doit `uptodate` check: the board's last result is a success measured < `hours` ago.

    A success is what `bench_succeeded` says: timing it again would not change a board
    that lacks a runtime for some models. A time in the future is not
    fresh (a clock set wrong would otherwise keep old figures for as long as it is wrong).
    Reads one small JSON and imports nothing heavy (dodo.py calls it on every `doit`).
    """
    try:
        doc = json.loads(Path(result_path).read_text())
        stamp = doc["measured_utc"]
        # Not strptime: its first call imports _strptime and builds its locale's patterns
        # (5-15 ms of a no-op `doit`); the pattern is utc_now()'s "%Y-%m-%dT%H:%M:%SZ".
        if not _UTC_STAMP.fullmatch(stamp):
            return False
        when = dt.datetime.fromisoformat(stamp[:-1])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    age = dt.datetime.now(dt.timezone.utc) - when.replace(tzinfo=dt.timezone.utc)
    return bench_succeeded(doc) and 0 <= age.total_seconds() < hours * 3600


def bench_succeeded(doc: Any) -> bool:
    """Whether a board's bench document is a success: `ok`, or `partial` only because the
    board has no runtime for some rows (NO RUNTIME: the virtual K1, a K1 without TFLite) and
    no case failed, so the board did all it can. The bench's freshness check, the nightly's
    board status and its NO RUNTIME count all ask this one function."""
    if not isinstance(doc, dict) or doc.get("status") not in ("ok", "partial"):
        return False
    if doc["status"] == "ok":
        return True
    errors, missing = doc.get("errors"), doc.get("missing")
    if errors != [] or not isinstance(missing, list) or not missing:
        return False
    # Here, not at the top: only a partial result needs it (a no-op `doit` checks each
    # board's result).
    from pipeline.core.formats import NO_RUNTIME_MARK

    return all(isinstance(m, dict) and str(m.get("error", "")).startswith(NO_RUNTIME_MARK)
               for m in missing)
