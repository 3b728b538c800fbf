"""doit's task events as JSON lines, so the nightly follows doit without reading its console.

dodo.py installs the reporter when PIPELINE_EVENTS names a file (`DOIT_CONFIG["reporter"] =
reporter_writing(path)`): the console shows what it always showed (doit's own console
reporter) and each event is also appended to the file as one JSON object per line:

    {"event": "start", "task": "train:mnist_cnn", "time": 1765000000.123}
    {"event": "success", "task": "train:mnist_cnn", "time": ..., "wall_s": 41.2}
    {"event": "failure", "task": "download:mnist", "time": ..., "wall_s": 0.1,
     "message": "dataset mnist is missing: ..."}
    {"event": "up-to-date" | "ignored", "task": ..., "time": ...}
    {"event": "error", "task": null, "time": ..., "message": ...}   (doit's own, not a task's)

Only tasks with actions are reported (doit's group tasks, e.g. `train`, have none).
`wall_s` is the monotonic time from start to its end; a task that failed before it started
(a dependency failed under --continue) has `wall_s` null. Imports doit only inside
`reporter_writing`: `follow` is all the nightly needs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

# The environment variable naming the events file (set by the nightly for its doit runs).
EVENTS_ENV = "PIPELINE_EVENTS"


def reporter_writing(path: Path) -> type:
    """A doit reporter class: doit's console reporter, plus one JSON line per task event
    appended to `path` (flushed per line, so a follower sees each event as it happens)."""
    # Over 60 lines because it is one class of short methods, defined here so that doit's
    # reporter module is imported only when events are wanted.
    from doit.reporter import ConsoleReporter

    class EventReporter(ConsoleReporter):
        desc = f"console, and task events as JSON lines in {path}"

        def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
            super().__init__(outstream, options)
            self._events = open(path, "a", encoding="utf-8")
            self._started: dict[str, float] = {}

        def _event(self, event: str, task: Any, **extra: Any) -> None:
            line = {"event": event, "task": None if task is None else task.name,
                    "time": round(time.time(), 3), **extra}
            self._events.write(json.dumps(line) + "\n")
            self._events.flush()

        def _wall(self, task: Any) -> float | None:
            start = self._started.pop(task.name, None)
            return None if start is None else round(time.monotonic() - start, 3)

        # Each event is written before doit's console line, so a follower that reads the
        # console line finds the event already in the file.
        def execute_task(self, task: Any) -> None:
            if task.actions:
                self._started[task.name] = time.monotonic()
                self._event("start", task)
            super().execute_task(task)

        def add_success(self, task: Any) -> None:
            if task.actions:
                self._event("success", task, wall_s=self._wall(task))
            super().add_success(task)

        def add_failure(self, task: Any, fail: Any) -> None:
            message = (getattr(fail, "message", "") or fail.get_name()).strip()
            self._event("failure", task, wall_s=self._wall(task),
                        message=message.splitlines()[0] if message else fail.get_name())
            super().add_failure(task, fail)

        def skip_uptodate(self, task: Any) -> None:
            if task.actions:
                self._event("up-to-date", task)
            super().skip_uptodate(task)

        def skip_ignore(self, task: Any) -> None:
            self._event("ignored", task)
            super().skip_ignore(task)

        def runtime_error(self, msg: str) -> None:
            self._event("error", None, message=str(msg).strip().splitlines()[0] if msg else "")
            super().runtime_error(msg)

        def complete_run(self) -> None:
            try:
                super().complete_run()
            finally:
                self._events.close()

    return EventReporter


class EventFollower:
    """Reads the events a running doit appends to `path`: each `poll()` returns the whole
    lines written since the last one (a line being written is kept for the next poll)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stream: TextIO | None = None
        self._partial = ""

    def poll(self) -> list[dict[str, Any]]:
        if self._stream is None:
            try:
                self._stream = open(self.path, encoding="utf-8")
            except FileNotFoundError:
                return []  # doit has not started reporting yet (or never will)
        text = self._partial + self._stream.read()
        *lines, self._partial = text.split("\n")
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def task_times(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Task -> its outcome ("success", "failure", "up-to-date", "ignored", "started" for one
    that never ended) and wall time in seconds (None when it did not run). Over several doit
    calls (the nightly makes two), the last one that ran the task counts."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("task") is None:
            continue
        kind = event["event"]
        if kind in ("up-to-date", "ignored") and event["task"] in out:
            continue  # a later doit call found it done: the run that did it counts
        entry = {"status": "started" if kind == "start" else kind,
                 "wall_s": event.get("wall_s")}
        if kind == "failure":
            entry["message"] = event.get("message", "")
        out[event["task"]] = entry
    return out
