"""The history database: defensive reading of board documents, all-or-nothing run writes,
abandoned runs, and the `python -m pipeline.history` table. Real SQLite files in tmp_path."""

import sqlite3

import pytest

from pipeline import history
from pipeline.files import write_json

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
        {"model": "x.tflite", "threads": 1, "error": "unattributed"}]})
    # Partial results from a board that then failed are recorded, and the board is failed.
    write_json(latency / "partial.json", {"board": "partial", "status": "failed",
                                          "error": "ssh dropped", "measured_utc": "x",
                                          "results": [{"build": "b", "variant": "int8",
                                                       "threads": 1, "p50_us": 7.0}]})
    (latency / "garbage.json").write_text("{not json")
    boards, cases = history.read_latency(tmp_path, ["ok", "partial", "garbage", "absent"])
    assert [(b["board"], b["status"]) for b in boards] == [
        ("ok", "ok"), ("partial", "failed"), ("garbage", "failed"), ("absent", "failed")]
    assert boards[1]["error"] == "ssh dropped"
    by_case = {(c["board"], c["variant"], c["threads"]): c for c in cases}
    assert by_case[("ok", "int8", 1)]["status"] == "ok"
    assert (by_case[("ok", "int8", 2)]["status"], by_case[("ok", "int8", 2)]["error"]) == (
        "failed", "invoke failed")
    assert by_case[("ok", "float32", 1)]["status"] == "failed"  # no p50: not a measurement
    assert by_case[("ok", "float32", 1)]["p50_us"] is None
    assert by_case[("partial", "int8", 1)]["p50_us"] == 7.0
    assert len(cases) == 4


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
    run = history.start_run(db, "2026-01-01T00:00:00Z", None, None, "p", str(tmp_path))
    assert history.fail_abandoned_runs(db, "2026-01-02T00:00:00Z") == [run]
    assert [dict(r)["status"] for r in db.execute("SELECT status FROM runs")] == ["failed"]
    assert history.completed_runs(db, 5) == []


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
