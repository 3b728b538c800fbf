"""The nightly's flock lock, with real files and real processes: held, refused, released only by
its holder, dropped by the kernel when the holder is killed, and whatever is at its path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.nightly.lock import LockUnusable, NightlyLocked, acquire, release
from tests.conftest import REPO

INFO = {"pid": 4242, "started_utc": "2026-01-01T02:00:00Z",
        "run_dir": "artifacts/nightly/20260101T020000Z"}

# A holder in another process: takes the lock, says so, then sleeps until killed.
HOLDER = ("import sys, time\n"
          "from pathlib import Path\n"
          "from pipeline.nightly.lock import acquire\n"
          "fd = acquire(Path(sys.argv[1]), {'pid': 99, 'started_utc': 'then', 'run_dir': 'd'})\n"
          "print('held', flush=True)\n"
          "time.sleep(60)\n")


def start_holder(lock: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_lock_is_refused_naming_its_holder_and_the_refusal_changes_nothing(tmp_path):
    lock = tmp_path / "nightly.lock"
    fd = acquire(lock, INFO)
    try:
        assert json.loads(lock.read_text()) == INFO
        for _ in range(2):  # refused twice: the first refusal did not release anything
            with pytest.raises(NightlyLocked) as err:
                acquire(lock, {**INFO, "pid": 1})
            assert str(err.value) == (
                "another nightly is running: PID 4242, started 2026-01-01T02:00:00Z (run "
                f"directory artifacts/nightly/20260101T020000Z); lock file {lock}")
        assert json.loads(lock.read_text()) == INFO  # the holder's details are intact
    finally:
        release(fd)
    fd = acquire(lock, {**INFO, "pid": 7})  # released: free again
    assert json.loads(lock.read_text())["pid"] == 7
    release(fd)
    assert lock.read_text() == ""  # a released lock names nobody


def test_the_kernel_drops_the_lock_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / "nightly.lock"
    holder = start_holder(lock)
    try:
        with pytest.raises(NightlyLocked, match="PID 99"):
            acquire(lock, INFO)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The holder's details are still in the file, but nobody holds the flock: taken at once.
    assert json.loads(lock.read_text())["pid"] == 99
    release(acquire(lock, INFO))


@pytest.mark.parametrize("content", [os.urandom(300), b"", b'{"pid": 1}', b"[1, 2]",
                                     json.dumps({"pid": 1, "start_ticks": None}).encode()],
                         ids=["random-bytes", "empty", "live-unrelated-pid", "not-a-dict",
                              "pid-without-start-ticks"])
def test_whatever_a_free_lock_file_holds_it_is_taken(tmp_path, content):
    lock = tmp_path / "nightly.lock"
    lock.write_bytes(content)
    fd = acquire(lock, INFO)
    assert json.loads(lock.read_text()) == INFO  # replaced whole, nothing of the old left
    release(fd)


@pytest.mark.parametrize("scribble", [os.urandom(64), b'{"started_utc": "no pid"}  '],
                         ids=["random-bytes", "json-without-pid"])
def test_a_held_lock_with_unreadable_details_is_still_refused(tmp_path, scribble):
    lock = tmp_path / "nightly.lock"
    holder = start_holder(lock)
    try:
        with open(lock, "r+b") as fh:  # someone scribbles over the holder's details
            fh.truncate()
            fh.write(scribble)
        with pytest.raises(NightlyLocked) as err:
            acquire(lock, INFO)
        assert str(err.value).startswith("another nightly is running (its lock file names no "
                                         "readable holder)")
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_directory_or_a_symlink_at_the_lock_path_is_one_clear_error(tmp_path):
    lock = tmp_path / "nightly.lock"
    lock.mkdir()
    with pytest.raises(LockUnusable) as err:
        acquire(lock, INFO)
    assert str(err.value) == (f"lock path {lock} is a directory, not the nightly's lock file: "
                              f"remove it (rmdir {lock}) and start the nightly again")
    link, target = tmp_path / "other.lock", tmp_path / "target"
    target.write_text("keep me")
    link.symlink_to(target)
    with pytest.raises(LockUnusable, match="is a symbolic link"):
        acquire(link, INFO)
    assert target.read_text() == "keep me"  # never followed, never written


def test_of_processes_racing_for_the_lock_exactly_one_wins(tmp_path):
    lock = tmp_path / "nightly.lock"
    lock.write_bytes(os.urandom(50))  # a stale, unreadable file: no obstacle
    racer = ("import sys, time\n"
             "from pathlib import Path\n"
             "from pipeline.nightly.lock import NightlyLocked, acquire\n"
             "try:\n"
             f"    acquire(Path({str(lock)!r}), {{'pid': 1}})\n"
             "except NightlyLocked:\n"
             "    sys.exit(75)\n"
             "time.sleep(3)  # hold it while the others try\n")
    racers = [subprocess.Popen([sys.executable, "-c", racer], cwd=REPO) for _ in range(4)]
    assert sorted(r.wait(timeout=60) for r in racers) == [0, 75, 75, 75]


def test_the_lock_descriptor_is_not_inherited_by_children(tmp_path):
    """A doit started by the nightly must not keep the lock alive after the nightly died."""
    lock = tmp_path / "nightly.lock"
    fd = acquire(lock, INFO)
    try:
        child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True);"
                                  " time.sleep(30)"], close_fds=False, stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "up"  # exec'd: only what it inherited
            release(fd)
            fd = None
            release(acquire(lock, INFO))  # free although the child still runs
        finally:
            child.kill()
            child.wait(timeout=30)
    finally:
        if fd is not None:
            release(fd)


def test_release_leaves_a_lock_file_that_a_later_nightly_can_take(tmp_path):
    lock: Path = tmp_path / "sub" / "nightly.lock"  # the directory is made
    release(acquire(lock, INFO))
    assert lock.is_file()
    release(acquire(lock, INFO))
