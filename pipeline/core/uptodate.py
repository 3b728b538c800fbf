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

import hashlib
import inspect
import json
import os
from typing import Any

CODE_KEY, SETTINGS_KEY = "_code", "_settings"  # this check's values in doit's database


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
