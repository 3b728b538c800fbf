"""doit's task events as JSON lines: a real doit run on a small dodo file in a temporary
directory, with the reporter installed as dodo.py installs it."""

import json
import subprocess
import sys
import textwrap
import time

from pipeline.core.events import EventFollower, task_times

DODO = textwrap.dedent('''
    import os, time
    from pathlib import Path
    from doit.exceptions import TaskFailed
    from pipeline.core.events import reporter_writing

    DOIT_CONFIG = {"verbosity": 2, "backend": "json", "dep_file": ".doit.db"}
    if os.environ.get("EVENTS"):
        DOIT_CONFIG["reporter"] = reporter_writing(Path(os.environ["EVENTS"]))

    def _sleep_then_write(seconds, path):
        time.sleep(seconds)
        Path(path).write_text("done")

    def task_slow():
        return {"actions": [(_sleep_then_write, [0.3, "slow.txt"])], "targets": ["slow.txt"],
                "uptodate": [True]}

    def task_broken():
        return {"actions": [lambda: TaskFailed("first line of the failure\\nsecond line")]}

    def task_group():
        for name in ("a", "b"):
            yield {"name": name, "actions": [f"echo {name}"], "targets": [], "uptodate": [True]}
    ''')


def run(tmp_path, events=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(
        __file__).resolve().parent.parent)}
    if events:
        env["EVENTS"] = str(events)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "doit", "--continue"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def test_each_task_event_is_one_json_line_and_the_console_is_unchanged(tmp_path):
    plain, with_events = tmp_path / "plain", tmp_path / "events"
    for where in (plain, with_events):
        where.mkdir()
        (where / "dodo.py").write_text(DODO)
    console, _ = run(plain)
    path = tmp_path / "events.jsonl"
    proc, outer = run(with_events, path)
    assert proc.returncode == 1  # the broken task
    assert proc.stdout == console.stdout  # what a user sees does not change
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = {(e["event"], e["task"]) for e in events}
    assert {("start", "slow"), ("success", "slow"), ("start", "broken"), ("failure", "broken"),
            ("up-to-date", "group:a"), ("up-to-date", "group:b")} <= kinds
    assert not {e["task"] for e in events} & {"group"}  # a group task has no action
    times = task_times(events)
    # The action sleeps 0.3 s; the wall time lies between that and the whole doit call.
    assert 0.3 <= times["slow"]["wall_s"] <= outer
    assert times["broken"] == {"status": "failure", "wall_s": times["broken"]["wall_s"],
                               "message": "first line of the failure"}
    assert all(abs(e["time"] - time.time()) < outer + 5 for e in events)

    # Again: the slow task is up to date; its earlier success keeps its wall time.
    run(with_events, path)
    again = [json.loads(line) for line in path.read_text().splitlines()]
    assert ("up-to-date", "slow") in {(e["event"], e["task"]) for e in again[len(events):]}
    assert task_times(again)["slow"] == times["slow"]


def test_the_follower_returns_only_whole_lines(tmp_path):
    path = tmp_path / "e.jsonl"
    follower = EventFollower(path)
    assert follower.poll() == []  # not there yet
    with open(path, "w") as fh:
        fh.write('{"event": "start", "task": "t", "time": 1}\n{"event": "succ')
        fh.flush()
        assert follower.poll() == [{"event": "start", "task": "t", "time": 1}]
        fh.write('ess", "task": "t", "time": 2, "wall_s": 1.5}\n')
        fh.flush()
        assert follower.poll() == [{"event": "success", "task": "t", "time": 2, "wall_s": 1.5}]
    assert follower.poll() == []
    follower.close()


def test_task_times_keep_the_run_that_did_the_work():
    events = [{"event": "start", "task": "t"}, {"event": "failure", "task": "t", "wall_s": 2.0,
                                                 "message": "m"},
              {"event": "start", "task": "u"},
              {"event": "up-to-date", "task": "v"}, {"event": "error", "task": None}]
    assert task_times(events) == {"t": {"status": "failure", "wall_s": 2.0, "message": "m"},
                                  "u": {"status": "started", "wall_s": None},
                                  "v": {"status": "up-to-date", "wall_s": None}}
