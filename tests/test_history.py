"""The history database: defensive reading of board documents, all-or-nothing run writes,
unfinished runs settled from their record.json, every bad database file (one line, and a
reader never writes), a database held by another process, a full disk, and the
`python -m pipeline.history` table. Real SQLite files in tmp_path, real other processes."""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.nightly import history
from pipeline.core.files import write_json
from tests.conftest import REPO

ACC = [{"build": "b", "variant": v, "accuracy": 0.9, "agreement": 1.0, "drift_pt": 0.0,
        "bytes": 10, "train_s": 1.0} for v in ("keras", "float32", "int8")]
CASE = {"build": "b", "variant": "int8", "board": "local", "threads": 1, "p50_us": 5.0,
        "p90_us": 6.0, "init_ms": 1.0, "status": "ok", "error": None}


def test_board_documents_are_read_defensively(tmp_path):
    latency = tmp_path / "reports" / "latency"
    write_json(latency / "ok.json", {"board": "ok", "status": "ok", "results": [
        {"build": "b", "variant": "int8", "threads": 1, "p50_us": 5.0, "p90_us": 6.0,
         "init_ms": 1.0},
        {"build": "b", "variant": "int8", "threads": 2, "error": "invoke failed"},
        {"build": "b", "variant": "float32", "threads": 1, "init_ms": 2.0},
        {"model": "x.tflite", "threads": 1, "error": "unattributed"}, "not a dict",
        {"build": "b", "variant": "float16", "threads": "4", "p50_us": "fast"}]})
    # Partial results from a board that then failed are recorded, and the board is failed.
    write_json(latency / "partial.json", {"board": "partial", "status": "failed",
                                          "error": "ssh dropped", "measured_utc": "x",
                                          "results": [{"build": "b", "variant": "int8",
                                                       "threads": 1, "p50_us": 7.0}]})
    (latency / "garbage.json").write_text("{not json")
    # A bench killed mid-run leaves its document saying "running": not a result.
    write_json(latency / "killed.json", {"board": "killed", "status": "running",
                                         "started_utc": "x"})
    (latency / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    boards, cases = history.read_latency(tmp_path, ["ok", "partial", "garbage", "absent",
                                                    "killed", "binary"])
    assert [(b["board"], b["status"]) for b in boards] == [
        ("ok", "ok"), ("partial", "failed"), ("garbage", "failed"), ("absent", "failed"),
        ("killed", "failed"), ("binary", "failed")]
    assert boards[1]["error"] == "ssh dropped"
    assert boards[4]["error"] == "status 'running'"
    by_case = {(c["board"], c["variant"], c["threads"]): c for c in cases}
    assert by_case[("ok", "int8", 1)]["status"] == "ok"
    assert (by_case[("ok", "int8", 2)]["status"], by_case[("ok", "int8", 2)]["error"]) == (
        "failed", "invoke failed")
    assert by_case[("ok", "float32", 1)]["status"] == "failed"  # no p50: not a measurement
    assert by_case[("ok", "float32", 1)]["p50_us"] is None
    assert by_case[("partial", "int8", 1)]["p50_us"] == 7.0
    # Text where a number belongs: no figure, and no crash later in the gates.
    assert (by_case[("ok", "float16", 0)]["status"], by_case[("ok", "float16", 0)]["error"]) == (
        "failed", "no p50")
    assert len(cases) == 5


NO_RUNTIME = {"model": "m.tflite", "threads": 1, "build": "b", "variant": "int8",
              "error": "NO RUNTIME: no TFLite runtime on this board (install ...)"}


def test_a_board_partial_only_by_no_runtime_rows_is_ok_and_carries_emulated(tmp_path):
    latency = tmp_path / "reports" / "latency"
    case = {"build": "b", "variant": "int8_onnx", "threads": 1, "p50_us": 5.0}
    base = {"status": "partial", "results": [case], "errors": [], "missing": [NO_RUNTIME]}
    write_json(latency / "virtual.json", {**base, "board": "virtual", "emulated": True})
    # The boundary: one genuine problem besides the NO RUNTIME rows makes it a failed board.
    write_json(latency / "broken.json", {**base, "board": "broken",
                                         "errors": ["b/int8_onnx x2: invoke failed"]})
    write_json(latency / "other.json", {**base, "board": "other", "missing": [
        NO_RUNTIME, {**NO_RUNTIME, "error": "timed out"}]})
    write_json(latency / "real.json", {"board": "real", "status": "ok", "results": [case]})
    boards, cases = history.read_latency(tmp_path, ["virtual", "broken", "other", "real"])
    assert [(b["board"], b["status"], b["emulated"]) for b in boards] == [
        ("virtual", "ok", 1), ("broken", "failed", 0), ("other", "failed", 0), ("real", "ok", 0)]
    assert boards[0]["error"] is None
    assert boards[1]["error"] == "b/int8_onnx x2: invoke failed"
    assert [c["status"] for c in cases] == ["ok"] * 4
    # The nightly's progress line counts the NO RUNTIME rows of a board that is ok by them.
    assert [history.no_runtime_rows(tmp_path, b) for b in ("virtual", "broken", "other", "real",
                                                           "absent")] == [1, 0, 0, 0, 0]


def test_a_case_whose_predictions_differ_from_the_hosts_is_failed_at_the_boundary(tmp_path):
    case = {"build": "b", "variant": "int8_onnx", "threads": 1, "p50_us": 5.0}
    write_json(tmp_path / "reports" / "latency" / "v.json", {
        "board": "v", "status": "ok", "emulated": True, "results": [
            {**case, "agreement": 1.0, "disagreements": []},
            {**case, "threads": 2, "agreement": 1 - 1 / 1000, "disagreements": [7]},
            {**case, "threads": 3}]})  # no agreement figure (a peak-like row): no verdict
    _, cases = history.read_latency(tmp_path, ["v"])
    assert [(c["threads"], c["status"]) for c in cases] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert cases[1]["error"] == ("predictions differ from the host's (agreement 0.9990; "
                                 "samples [7])")
    assert cases[1]["p50_us"] is None  # a wrong answer's latency is no figure


def test_an_old_database_gains_emulated_from_the_writer_and_stays_readable(tmp_path):
    path = tmp_path / "h.sqlite"
    old_schema = history.SCHEMA.replace("    emulated INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_schema != history.SCHEMA
    old = sqlite3.connect(path)
    old.executescript(old_schema)
    old.execute("INSERT INTO runs (id, started_utc, status) VALUES (1, 'x', 'ok')")
    old.execute("INSERT INTO boards VALUES (1, 'k1', 'ok', NULL)")
    old.commit()
    old.close()
    reader = history.connect_reader(path)  # read-only: no migration, and no refusal
    assert history.figures(reader, [1])[1]["boards"]["k1"].get("emulated") is None
    assert "k1" not in history.render(history.table_rows(reader, 5))  # and no error either
    reader.close()
    db = history.connect(path)
    run = history.start_run(db, "2026-01-02T00:00:00Z", None, None, "p", str(tmp_path))
    history.finish_run(db, run, "ok", "y", 1.0, ACC, [
        {"board": "k1", "status": "ok", "error": None, "emulated": 0},
        {"board": "virtual", "status": "ok", "error": None, "emulated": 1}], [CASE])
    assert {(r, b["board"], b["emulated"]) for r, f in history.figures(db, [1, run]).items()
            for b in f["boards"].values()} == {(1, "k1", 0), (run, "k1", 0), (run, "virtual", 1)}
    # A second connect finds nothing left to migrate.
    assert history._migrations(db) == []


def test_the_history_table_marks_an_emulated_boards_rows(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-02T00:00:00Z", None, None, "p", str(tmp_path))
    history.finish_run(db, run, "ok", "y", 1.0, ACC, [
        {"board": "local", "status": "ok", "error": None, "emulated": 0},
        {"board": "virtual", "status": "ok", "error": None, "emulated": 1}],
        [CASE, {**CASE, "board": "virtual", "p50_us": 5000.0}])
    lines = history.render(history.table_rows(db, 5)).splitlines()
    int8 = [line for line in lines if " int8 " in line]
    assert len(int8) == 2 and " local " in int8[0] and "EMULATED" not in int8[0]
    assert " virtual (EMULATED) " in int8[1]
    assert [r["board"] for r in history.table_rows(db, 5, board="virtual")
            if r["board"]] == ["virtual"]  # the filter takes the board's own name


def test_accuracy_reports_are_read_defensively(tmp_path):
    write_json(tmp_path / "reports" / "a" / "accuracy.json", {"variants": [
        {"name": "int8", "accuracy": "0.9", "drift_pt": -0.1, "bytes": 10}, ["not", "a", "dict"],
        {"accuracy": 0.5}, {"name": "float32", "accuracy": 0.95, "bytes": True}]})
    write_json(tmp_path / "models" / "a" / "history.json", ["not", "a", "dict"])
    write_json(tmp_path / "reports" / "b" / "accuracy.json", ["not", "a", "dict"])
    write_json(tmp_path / "reports" / "c" / "accuracy.json", {"variants": "none"})
    rows = history.read_accuracy(tmp_path, ["a", "b", "c", "absent"])
    assert [(r["build"], r["variant"], r["accuracy"], r["drift_pt"], r["bytes"], r["train_s"])
            for r in rows] == [("a", "int8", None, -0.1, 10, None),
                               ("a", "float32", 0.95, None, None, None)]


def test_a_run_is_written_all_or_nothing(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path))
    # The second latency row repeats the first's key: the insert fails half-way through.
    with pytest.raises(sqlite3.IntegrityError):
        history.finish_run(db, run, "ok", "2026-01-01T00:01:00Z", 60.0, ACC,
                           [{"board": "local", "status": "ok", "error": None}], [CASE, CASE])
    # What the nightly then does: record the run as failed, in a transaction of its own.
    history.finish_run(db, run, "failed", "2026-01-01T00:01:00Z", 60.0, message="boom")
    reader = sqlite3.connect(tmp_path / "h.sqlite")
    assert reader.execute("SELECT status FROM runs").fetchall() == [("failed",)]
    for table in ("accuracy", "boards", "latency"):
        assert reader.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table


def test_a_reader_sees_a_finished_run_whole(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-01T00:00:00Z", "abc", True, "p", str(tmp_path))
    history.finish_run(db, run, "ok", "2026-01-01T00:01:00Z", 60.0, ACC,
                       [{"board": "local", "status": "ok", "error": None}], [CASE], None, "i")
    reader = sqlite3.connect(tmp_path / "h.sqlite")
    assert reader.execute("SELECT status, dirty, inputs_hash FROM runs").fetchall() == [
        ("ok", 1, "i")]
    assert reader.execute("SELECT COUNT(*) FROM accuracy").fetchone() == (3,)
    assert history.figures(db, [run])[run]["latency"][("b", "int8", "local", 1)]["p50_us"] == 5


def test_runs_left_running_by_a_killed_nightly_are_marked_failed(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    done = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path))
    history.finish_run(db, done, "ok", "2026-01-01T01:00:00Z", 1.0)
    run = history.start_run(db, "2026-01-02T00:00:00Z", None, None, "p", str(tmp_path / "gone"))
    assert history.settle_unfinished_runs(db, "2026-01-03T00:00:00Z") == [
        (run, "killed before recording its end: marked failed")]
    assert [(r["id"], r["status"]) for r in history.run_dirs(db)] == [(done, "ok"),
                                                                      (run, "failed")]
    rows = db.execute("SELECT id, status, ended_utc FROM runs ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(done, "ok", "2026-01-01T01:00:00Z"),
                                        (run, "failed", "2026-01-03T00:00:00Z")]
    assert [r["id"] for r in history.completed_runs(db, 5)] == [done]


def test_cli_prints_the_last_runs_filtered_by_build_and_board(tmp_path, capsys):
    path = tmp_path / "h.sqlite"
    db = history.connect(path)
    for i in range(3):
        run = history.start_run(db, f"2026-01-0{i + 1}T00:00:00Z", None, None, "p", "d")
        other = dict(CASE, build="other")
        history.finish_run(db, run, "ok", "x", 1.0, ACC, [], [dict(CASE, p50_us=10.0 + i),
                                                              other])
    history.main(["--db", str(path), "--last", "2", "--build", "b", "--board", "local"])
    out = capsys.readouterr().out
    assert "2026-01-01" not in out and "2026-01-02" in out and "2026-01-03" in out
    assert "12.0" in out and "other" not in out
    assert "p50 µs" in out.splitlines()[0]


def test_cli_without_a_database_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit) as exc:
        history.main(["--db", str(tmp_path / "none.sqlite")])
    assert "python -m pipeline.nightly" in str(exc.value)
    assert not (tmp_path / "none.sqlite").exists()


# --- runs kept in their run directory until the database has them ---------------------------


def record_for(run_id: int, status: str = "ok") -> dict:
    return history.run_record(run_id, status, "2026-01-01T00:09:00Z", 9.0, ACC,
                              [{"board": "local", "status": "ok", "error": None}], [CASE],
                              None, "inputs")


def test_a_run_kept_in_record_json_is_recorded_by_the_next_settle_exactly_as_kept(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    first = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path / "1"))
    pending = history.keep_pending(tmp_path / "1", record_for(first, "breached"))
    assert pending == tmp_path / "1" / "record.json"
    # A record.json naming another run, and one of random bytes: neither is trusted.
    second = history.start_run(db, "2026-01-02T00:00:00Z", None, None, "p", str(tmp_path / "2"))
    history.keep_pending(tmp_path / "2", record_for(first))
    third = history.start_run(db, "2026-01-03T00:00:00Z", None, None, "p", str(tmp_path / "3"))
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "record.json").write_bytes(os.urandom(200))
    assert history.settle_unfinished_runs(db, "2026-01-04T00:00:00Z") == [
        (first, f"recorded from {pending} (breached)"),
        (second, "killed before recording its end: marked failed"),
        (third, "killed before recording its end: marked failed")]
    run = history.run_row(db, first)
    assert (run["status"], run["ended_utc"], run["wall_s"], run["inputs_hash"]) == (
        "breached", "2026-01-01T00:09:00Z", 9.0, "inputs")
    figs = history.figures(db, [first, second])
    assert {part: {k: {c: v for c, v in row.items() if c != "run_id"}
                   for k, row in rows.items()} for part, rows in figs[first].items()} == \
        history.as_figures(ACC, [{"board": "local", "status": "ok", "error": None,
                                  "emulated": 0}],  # an older record: the defaults
                           [{**CASE, **{c: None for c in (*history.VERDICT_COLUMNS, "sha256",
                                                          "reference_sha256")}}])
    assert figs[second] == history.as_figures([], [], [])
    assert history.settle_unfinished_runs(db, "2026-01-05T00:00:00Z") == []  # nothing left


def test_a_record_that_cannot_be_inserted_fails_its_run_and_blocks_nothing(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "t", None, None, "p", str(tmp_path / "1"))
    record = record_for(run)
    record["latency"].append(dict(record["latency"][0]))  # the same key twice
    history.keep_pending(tmp_path / "1", record)
    other = history.start_run(db, "t", None, None, "p", str(tmp_path / "2"))
    history.keep_pending(tmp_path / "2", record_for(other))
    done = history.settle_unfinished_runs(db, "e")
    assert done[0][0] == run and done[0][1].endswith("marked failed")
    assert "UNIQUE constraint failed" in done[0][1]
    assert done[1] == (other, f"recorded from {tmp_path / '2' / 'record.json'} (ok)")
    assert history.figures(db, [run])[run] == history.as_figures([], [], [])  # nothing half
    assert history.run_row(db, run)["status"] == "failed"
    assert history.run_row(db, other)["status"] == "ok"


def test_a_record_with_a_missing_or_extra_key_is_not_trusted(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path))
    record = record_for(run)
    record["latency"][0] = {k: v for k, v in CASE.items() if k != "p90_us"}
    history.keep_pending(tmp_path, record)
    assert history.settle_unfinished_runs(db, "x")[0][1].endswith("marked failed")


# --- every bad database file: one line naming it, and a reader never writes ------------------


def snapshot(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_history(path: Path, runs: int = 3) -> sqlite3.Connection:
    db = history.connect(path)
    for i in range(runs):
        run = history.start_run(db, f"2026-01-0{i + 1}T00:00:00Z", f"c{i}", False, "p", "d")
        history.finish_run(db, run, "ok", "x", 1.0, ACC, [], [dict(CASE, p50_us=10.0 + i)])
    return db


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.history", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def foreign_database(path: Path) -> None:
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    other.execute("INSERT INTO notes VALUES (1, 'mine')")
    other.commit()
    other.close()


def test_an_empty_file_is_refused_by_the_reader_and_left_empty(tmp_path):
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"")
    proc = cli("--db", str(path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"error: {path} holds no nightly history (an empty database): run "
                           "python -m pipeline.nightly, or give the right --db\n")
    assert path.read_bytes() == b""  # the reader created no schema in it


def test_a_foreign_database_is_refused_by_reader_and_writer_and_never_changed(tmp_path):
    path = tmp_path / "h.sqlite"
    foreign_database(path)
    before = snapshot(path)
    proc = cli("--db", str(path))
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {path} is not a nightly history database (it lacks "
                                  "accuracy, boards, latency, runs; tables found: notes)")
    with pytest.raises(history.HistoryError, match="never adds its tables"):
        history.connect(path)
    assert snapshot(path) == before


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_random_bytes_or_a_truncated_database_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "h.sqlite"
    if damage == "random":
        path.write_bytes(os.urandom(8192))
        expected = f"error: {path} is not an SQLite database"
    else:
        make_history(path, runs=40).close()
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
        expected = f"error: {path} is damaged (truncated or corrupt)"
    before = snapshot(path)
    proc = cli("--db", str(path))
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(expected) and "mv " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(history.HistoryError) as err:  # the nightly's way in: the same line
        db = history.connect(path)
        history.start_run(db, "t", None, None, "p", "d")
    assert str(err.value).startswith(expected[len("error: "):])
    assert snapshot(path) == before


HOLD = ("import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute(sys.argv[2])\n"
        "db.execute('SELECT * FROM runs').fetchall()\n"
        "print('holding', flush=True)\n"
        "sys.stdin.readline()  # until the test lets go\n")


def hold(path: Path, begin: str) -> subprocess.Popen:
    """Another process holding the database: a read transaction ('BEGIN') or the write lock
    ('BEGIN IMMEDIATE'), as a sqlite3 shell or a notebook left open does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), begin],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


@pytest.mark.parametrize("begin", ["BEGIN", "BEGIN IMMEDIATE"], ids=["reader", "writer"])
def test_a_held_database_makes_a_write_wait_the_stated_time_then_fail_whole(tmp_path, begin):
    path = tmp_path / "h.sqlite"
    db = make_history(path, runs=1)
    run = history.start_run(db, "t", None, None, "p", "d")
    holder = hold(path, begin)
    try:
        started = time.monotonic()
        with pytest.raises(history.HistoryError) as err:
            history.finish_run(db, run, "ok", "e", 1.0, ACC, [], [CASE], timeout_s=1.5)
        waited = time.monotonic() - started
    finally:
        holder.communicate("\n", timeout=30)
    assert 1.5 <= waited < 5, waited
    assert str(err.value).startswith(f"{path} is locked by another connection (waited ")
    assert "close the sqlite3 shell, notebook or program holding it open" in str(err.value)
    assert history.run_row(db, run)["status"] == "running"  # nothing of it was written
    assert history.figures(db, [run])[run] == history.as_figures([], [], [])
    # Let go: the same write now goes through.
    history.finish_run(db, run, "ok", "e", 1.0, ACC, [], [CASE], timeout_s=1.5)
    assert history.run_row(db, run)["status"] == "ok"


def test_a_write_goes_through_when_the_holder_lets_go_within_the_timeout(tmp_path):
    path = tmp_path / "h.sqlite"
    db = make_history(path, runs=1)
    holder = hold(path, "BEGIN")
    try:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"]).wait()
        holder.stdin.write("\n")
        holder.stdin.flush()
        run = history.start_run(db, "t", None, None, "p", "d", timeout_s=20)
    finally:
        holder.communicate(timeout=30)
    assert history.run_row(db, run)["status"] == "running"


def test_a_reader_reads_while_another_process_holds_the_write_lock(tmp_path):
    path = tmp_path / "h.sqlite"
    make_history(path).close()
    holder = hold(path, "BEGIN IMMEDIATE")
    try:
        proc = cli("--db", str(path), "--last", "3")
    finally:
        holder.communicate("\n", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert [proc.stdout.count(f"c{i}") for i in range(3)] == [3, 3, 3]  # 3 rows a run


@pytest.fixture
def small_mount(tmp_path):
    """mount(path, options) -> a tmpfs mounted there, unmounted at the end (root only)."""
    mounts = []

    def mount(where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")
        mounts.append(where)
        return where

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path) -> None:
    try:
        with open(where / "filler", "wb", buffering=0) as fh:
            for _ in range(100_000):  # bounded; a small tmpfs is full long before
                fh.write(b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full, as wanted


def test_a_read_only_database_is_one_line_for_the_writer_and_readable(tmp_path, small_mount):
    where = small_mount(tmp_path / "ro", "size=1m")
    make_history(where / "h.sqlite").close()
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    db = history.connect(where / "h.sqlite")
    with pytest.raises(history.HistoryError) as err:
        history.start_run(db, "t", None, None, "p", "d", timeout_s=1)
    assert str(err.value) == (f"{where / 'h.sqlite'} is read-only for this user: make it "
                              f"writable (chmod u+w {where / 'h.sqlite'} and its directory) or "
                              "give another --db")
    proc = cli("--db", str(where / "h.sqlite"), "--last", "1")
    assert proc.returncode == 0 and "c2" in proc.stdout, proc.stderr


def test_a_full_disk_is_one_line_and_the_run_is_not_half_written(tmp_path, small_mount):
    where = small_mount(tmp_path / "full", "size=256k")
    db = make_history(where / "h.sqlite", runs=1)
    run = history.start_run(db, "t", None, None, "p", "d")
    fill_disk(where)
    many = [dict(CASE, threads=t) for t in range(1, 400)]
    with pytest.raises(history.HistoryError) as err:
        history.finish_run(db, run, "ok", "e", 1.0, ACC, [], many, timeout_s=1)
    assert str(err.value) == (f"the disk holding {where / 'h.sqlite'} is full: free some "
                              "space, then retry")
    (where / "filler").unlink()
    assert history.run_row(db, run)["status"] == "running"
    assert history.figures(db, [run])[run]["latency"] == {}


def test_a_malformed_value_in_an_earlier_row_reads_as_no_figure(tmp_path):
    path = tmp_path / "h.sqlite"
    db = make_history(path, runs=2)
    editor = sqlite3.connect(path)  # a hand edit: text where a number belongs
    editor.execute("UPDATE accuracy SET accuracy = 'n/a' WHERE run_id = 1 AND variant = 'int8'")
    editor.execute("UPDATE latency SET p50_us = X'00' WHERE run_id = 1")
    editor.commit()
    figs = history.figures(db, [1, 2])
    assert figs[1]["accuracy"][("b", "int8")]["accuracy"] is None
    assert figs[1]["accuracy"][("b", "keras")]["accuracy"] == 0.9
    assert figs[1]["latency"][("b", "int8", "local", 1)]["p50_us"] is None
    assert figs[2]["latency"][("b", "int8", "local", 1)]["p50_us"] == 11.0


# --- queries over several runs (ordering shows only with three or more) ----------------------


def test_completed_runs_are_the_latest_ones_oldest_first_up_to_and_including_an_id(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    ids = []
    for status in ("ok", "failed", "breached", "ok", "ok"):
        run = history.start_run(db, "t", None, None, "p", "d")
        history.finish_run(db, run, status, "e", 1.0)
        ids.append(run)
    assert [r["id"] for r in history.completed_runs(db, 2)] == [ids[3], ids[4]]
    assert [r["id"] for r in history.completed_runs(db, 3, ids[3])] == [ids[0], ids[2], ids[3]]
    assert [r["id"] for r in history.completed_runs(db, 9, ids[2])] == [ids[0], ids[2]]


def test_cli_last_n_shows_the_newest_runs(tmp_path):
    path = tmp_path / "h.sqlite"
    make_history(path, runs=4).close()
    proc = cli("--db", str(path), "--last", "2")
    assert proc.returncode == 0, proc.stderr
    runs = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert runs == ["3", "3", "3", "4", "4", "4"]  # keras/float32 alone, int8 with its case


@pytest.mark.parametrize("value", ["0", "-1", "99999999999999999999", "two"])
def test_cli_last_out_of_range_is_one_usage_line(tmp_path, value):
    path = tmp_path / "h.sqlite"
    make_history(path, runs=1).close()
    proc = cli("--db", str(path), "--last", value)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith("history.py: error: argument --last: ")
    assert "Traceback" not in proc.stderr


def test_cli_last_at_its_bounds_is_accepted(tmp_path):
    path = tmp_path / "h.sqlite"
    make_history(path, runs=2).close()
    assert cli("--db", str(path), "--last", "1").returncode == 0
    assert cli("--db", str(path), "--last", str(history.MAX_LAST)).returncode == 0
    assert cli("--db", str(path), "--last", str(history.MAX_LAST + 1)).returncode == 2


def test_cli_unknown_build_or_board_fails_naming_what_is_recorded(tmp_path):
    path = tmp_path / "h.sqlite"
    db = make_history(path, runs=1)
    run = history.start_run(db, "t", None, None, "p", "d")
    history.finish_run(db, run, "failed", "e", 1.0, message="terminated by SIGTERM during doit")
    db.close()
    proc = cli("--db", str(path), "--build", "nope")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"error: --build nope: no such build in the last 5 run(s) of {path} "
                           "(builds recorded: b)\n")
    proc = cli("--db", str(path), "--board", "k1")
    assert proc.returncode == 1 and "(boards recorded: local)" in proc.stderr
    proc = cli("--db", str(path), "--build", "b")
    assert proc.returncode == 0 and "terminated by SIGTERM during doit" in proc.stdout


def test_a_verdict_is_read_into_its_columns_and_a_garbled_one_is_none():
    good = {"ratio": 1.1, "low": 1.05, "high": 1.15, "p": 0.001, "word": "slower"}
    row = {"sha256": "a" * 64, "reference_sha256": "b" * 64, "verdict": good}
    assert history.verdict_columns(row, False) == {
        "ratio": 1.1, "ratio_low": 1.05, "ratio_high": 1.15, "p_value": 0.001,
        "word": "slower", "sha256": "a" * 64, "reference_sha256": "b" * 64}
    for bad in ({**good, "word": "worse"}, {**good, "p": "0.001"}, {**good, "high": True},
                "slower", None):
        cols = history.verdict_columns({**row, "verdict": bad}, False)
        assert cols["ratio"] is None and cols["word"] is None and cols["sha256"] == "a" * 64
    assert history.verdict_columns(row, True)["word"] is None  # a failed case: no verdict


def test_verdict_columns_round_trip_through_the_database(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path))
    case = {**CASE, "ratio": 1.1, "ratio_low": 1.05, "ratio_high": 1.15, "p_value": 0.001,
            "word": "slower", "sha256": "a" * 64, "reference_sha256": "b" * 64}
    history.finish_run(db, run, "ok", "e", 1.0, ACC, [{"board": "local", "status": "ok",
                                                       "error": None}], [case])
    [(key, row)] = history.figures(db, [run])[run]["latency"].items()
    assert {k: row[k] for k in case} == case


def test_each_figure_read_from_the_reports_lands_in_its_own_column(tmp_path):
    """Rows whole, against documents written here by hand: each key read into its column."""
    write_json(tmp_path / "reports" / "a" / "accuracy.json", {"variants": [
        {"name": "int8", "accuracy": 0.9, "agreement": 0.97, "drift_pt": -0.5, "bytes": 10}]})
    write_json(tmp_path / "models" / "a" / "history.json", {"train_seconds": 12.5})
    assert history.read_accuracy(tmp_path, ["a"]) == [
        {"build": "a", "variant": "int8", "accuracy": 0.9, "agreement": 0.97,
         "drift_pt": -0.5, "bytes": 10, "train_s": 12.5}]
    shas = {"sha256": "n" * 64, "reference_sha256": "r" * 64}
    results = [{"build": "b", "variant": "int8", "threads": 1, "p50_us": 5.0, "p90_us": 6.0,
                "init_ms": 1.5, **shas, "verdict": {"ratio": 1.0 + i / 10, "low": 0.9,
                                                     "high": 1.5, "p": 0.2, "word": word}}
               for i, word in enumerate(("faster", "same", "slower", "environment"))]
    results[1]["threads"], results[2]["threads"], results[3]["threads"] = 2, 3, 4
    results += [{"build": "b", "threads": 8, "p50_us": 1.0},            # no variant: skipped
                {"build": "b", "variant": "int8", "threads": 5, "p50_us": 5.0, "p90_us": 6.0,
                 "init_ms": 2.0, "error": "invoke failed", **shas,
                 "verdict": {"ratio": 1.2, "low": 1.1, "high": 1.3, "p": 0.001,
                             "word": "slower"}},
                {"build": "b", "variant": "int8", "threads": 6, "p50_us": 5.0,
                 "agreement": 0.5, "disagreements": "some"}]
    write_json(tmp_path / "reports" / "latency" / "k1.json",
               {"board": "k1", "status": "ok", "results": results})
    boards, cases = history.read_latency(tmp_path, ["k1", "gone"])
    assert boards[1] == {"board": "gone", "status": "failed",
                         "error": "no latency report (bench did not finish)"}
    assert [c["threads"] for c in cases] == [1, 2, 3, 4, 5, 6]
    for case, result in zip(cases[:4], results):
        v = result["verdict"]
        assert case == {"build": "b", "variant": "int8", "board": "k1",
                        "threads": result["threads"], "p50_us": 5.0, "p90_us": 6.0,
                        "init_ms": 1.5, "status": "ok", "error": None, "ratio": v["ratio"],
                        "ratio_low": 0.9, "ratio_high": 1.5, "p_value": 0.2,
                        "word": v["word"], **shas}
    assert cases[4] == {"build": "b", "variant": "int8", "board": "k1", "threads": 5,
                        "p50_us": None, "p90_us": None, "init_ms": 2.0, "status": "failed",
                        "error": "invoke failed", "ratio": None, "ratio_low": None,
                        "ratio_high": None, "p_value": None, "word": None, **shas}
    assert cases[5]["error"] == ("predictions differ from the host's (agreement 0.5000; "
                                 "samples ?)")
    assert history.verdict_columns({"sha256": 5, "verdict": None}, False)["sha256"] is None


def test_the_table_joins_each_case_with_its_builds_accuracy_and_lists_failed_boards(tmp_path):
    db = history.connect(tmp_path / "h.sqlite")
    sha = "0123456789abcdef0123456789abcdef01234567"
    run = history.start_run(db, "2026-01-02T00:00:00Z", sha, True, "p", str(tmp_path))
    acc = [{**ACC[0], "accuracy": 0.99, "drift_pt": 0.0, "bytes": 100},
           {**ACC[2], "accuracy": 0.97, "drift_pt": -0.25, "bytes": 30}]
    history.finish_run(db, run, "ok", "y", 1.0, acc, [
        {"board": "local", "status": "ok", "error": None, "emulated": 0},
        {"board": "dead", "status": "failed", "error": "unreachable", "emulated": 0}],
        [{**CASE, "threads": 2, "p50_us": 4.0, "init_ms": 3.0}])
    base = {"run": run, "started": "2026-01-02T00:00:00Z", "status": "ok",
            "commit": sha[:10] + "+dirty"}
    assert history.table_rows(db, 5) == [
        dict(base, build="b", variant="keras", board="", threads=None, accuracy=0.99,
             drift_pt=0.0, bytes=100),
        dict(base, build="b", variant="int8", board="local", threads=2, accuracy=0.97,
             drift_pt=-0.25, bytes=30, p50_us=4.0, init_ms=3.0, emulated=False, case="ok"),
        dict(base, build="", variant="", board="dead", threads=None,
             case="BOARD FAILED unreachable")]
    # A run without figures is one row saying why; without a message, an empty one.
    for day, message in ((3, "disk full"), (4, None)):
        clean = history.start_run(db, f"2026-01-0{day}T00:00:00Z", sha if message else None,
                                  False, "p", str(tmp_path))
        history.finish_run(db, clean, "failed", "y", 1.0, [], [], [], message=message)
        assert history.table_rows(db, 1, build="b", board="local") == [
            {"run": clean, "started": f"2026-01-0{day}T00:00:00Z", "status": "failed",
             "commit": sha[:10] if message else "", "build": "", "variant": "", "board": "",
             "threads": None, "case": message or ""}]
    failed_case = history.start_run(db, "2026-01-05T00:00:00Z", sha, False, "p", str(tmp_path))
    history.finish_run(db, failed_case, "failed", "y", 1.0, [], [], [
        {**CASE, "status": "failed", "error": "timed out", "p50_us": None}])
    assert [r["case"] for r in history.table_rows(db, 1)] == ["FAILED timed out"]


def simple_table(text: str) -> list[dict[str, str]]:
    """tabulate's "simple" table as one dict per row, its columns cut where the dashes under
    the headers are (a cell may be empty)."""
    lines = text.splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[1])]
    cut = [[line[a:b].strip() if i + 1 < len(spans) else line[a:].strip()
            for i, (a, b) in enumerate(spans)] for line in [lines[0], *lines[2:]]]
    return [dict(zip(cut[0], row)) for row in cut[1:]]


def test_the_history_tables_cells_are_its_figures_as_printed(tmp_path):
    """`python -m pipeline.history`'s figures against the rows written: accuracy in percent,
    drift in points with its sign, bytes with separators, p50 µs and init ms (exact text)."""
    db = history.connect(tmp_path / "h.sqlite")
    run = history.start_run(db, "2026-01-02T00:00:00Z", None, None, "p", str(tmp_path))
    acc = [{**ACC[2], "accuracy": 0.97125, "drift_pt": -0.25, "bytes": 12345}]
    history.finish_run(db, run, "ok", "y", 1.0, acc, [
        {"board": "local", "status": "ok", "error": None, "emulated": 0}],
        [{**CASE, "threads": 2, "p50_us": 1234.56, "init_ms": 3.14159}])
    [row] = simple_table(history.render(history.table_rows(db, 5)))
    assert {k: row[k] for k in ("variant", "board", "thr", "acc %", "drift pt", "bytes",
                                "p50 µs", "init ms", "case")} == {
        "variant": "int8", "board": "local", "thr": "2", "acc %": "97.12",
        "drift pt": "-0.25", "bytes": "12,345", "p50 µs": "1234.6", "init ms": "3.14",
        "case": "ok"}
