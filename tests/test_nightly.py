"""End-to-end nightly: real `python -m pipeline.nightly` runs (real doit, TensorFlow, SQLite)
in a copy of a smoke-built project. One module-scoped sequence feeds every test:

1. a nightly is started and, while it trains, a second one is refused; then it gets SIGTERM;
2. a stale lock (a dead PID) is planted, and the next nightly takes it over and succeeds;
3. a nightly with an impossible gate (only the [nightly] section differs) and a board that is
   down exits non-zero;
4. a plain `doit` in the project (built normally before step 1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import executed_tasks, free_port, run_doit

BUILDS = ("mnist_cnn", "mnist_mlp")
# The ONNX variants (convert.onnx): history rows and gates from the registry like the rest;
# the two integer ones get the int8 floor.
ONNX = ("onnx_float32", "onnx_int8", "onnx_int8_tflite")
INT8_FLOORED = ("int8", "onnx_int8", "onnx_int8_tflite")


def nightly_env(mnist_url: str, params: str = "params/smoke.toml") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return {**env, "PIPELINE_PARAMS": params, "PIPELINE_OFFLINE": "1",
            "PIPELINE_MIRROR": mnist_url}


def run_nightly(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.nightly"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1200)


def wait_for(path: Path, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text()[-3000:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def nightly_runs(smoke_project, tmp_path_factory, mnist_url):
    project = tmp_path_factory.mktemp("nightly") / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    art = project / "artifacts"
    env = nightly_env(mnist_url)
    out: dict = {"project": project}
    # The copy's doit database names board/runner.py by the original's absolute path: one
    # normal build here first, so that the last step measures only what the nightly did.
    out["doit_before"] = run_doit(project)

    # 1. Refused while another holds the lock; then SIGTERM mid-train.
    log = project / "killed.log"
    with open(log, "w") as fh:
        first = subprocess.Popen([sys.executable, "-m", "pipeline.nightly"], cwd=project,
                                 env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(log, "train:mnist_cnn")
        out["lock"] = json.loads((art / "nightly.lock").read_text())
        started = time.monotonic()
        out["refused"] = run_nightly(project, env)
        out["refused_seconds"] = time.monotonic() - started
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    out["first_pid"] = first.pid
    out["killed"] = (first.returncode, log.read_text())
    out["lock_after_kill"] = (art / "nightly.lock").exists()
    out["runs_after_kill"] = sqlite3.connect(art / "history.sqlite").execute(
        "SELECT id, status, message FROM runs").fetchall()

    # 2. A stale lock: the PID of a process that has exited.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (art / "nightly.lock").write_text(json.dumps({"pid": dead.pid,
                                                  "started_utc": "2026-01-01T03:00:00Z"}))
    out["dead_pid"] = dead.pid
    out["run1"] = run_nightly(project, env)
    out["run1_md"] = (art / "reports" / "nightly.md").read_text()

    # 3. Same build params, an impossible gate, and a board that is down (nothing listens
    # on its port): every breach is named, the failed board is recorded and is a breach.
    impossible = project / "params" / "impossible.toml"
    impossible.write_text((project / "params" / "smoke.toml").read_text().replace(
        "min_accuracy_int8 = 0.7", "min_accuracy_int8 = 1.0"))
    (project / "board" / "with_ghost.toml").write_text(
        (project / "board" / "boards.toml").read_text() + "\n[[boards]]\nname = \"ghost\"\n"
        f"host = \"127.0.0.1\"\nport = {free_port()}\nconnect_timeout_s = 2\n")
    for name in ("nightly.md", "nightly.json", "nightly.png"):
        (art / "reports" / name).unlink()
    out["run2"] = run_nightly(project, {**nightly_env(mnist_url, "params/impossible.toml"),
                                        "PIPELINE_BOARDS": "board/with_ghost.toml"})

    # 4. The normal incremental build afterwards.
    out["doit"] = run_doit(project)
    return out


def db_rows(project: Path, sql: str) -> list[tuple]:
    return sqlite3.connect(project / "artifacts" / "history.sqlite").execute(sql).fetchall()


def test_a_second_nightly_is_refused_at_once_naming_the_running_one(nightly_runs):
    refused, lock = nightly_runs["refused"], nightly_runs["lock"]
    assert refused.returncode == 75, refused.stdout + refused.stderr
    assert lock["pid"] == nightly_runs["first_pid"]
    assert f"another nightly is running: PID {lock['pid']}, started {lock['started_utc']}" \
        in refused.stdout
    assert nightly_runs["refused_seconds"] < 30  # no TensorFlow, no waiting


def test_sigterm_mid_train_records_a_failed_run_and_stops_doit(nightly_runs):
    status, log = nightly_runs["killed"]
    assert status == 143, log[-3000:]
    assert "terminated by SIGTERM during doit" in log
    assert not nightly_runs["lock_after_kill"]
    assert nightly_runs["runs_after_kill"] == [
        (1, "failed", "terminated by SIGTERM during doit")]
    doit_pid = int(re.search(r"doit --continue started \(PID (\d+)\)", log).group(1))
    assert not alive(doit_pid)
    for table in ("accuracy", "latency", "boards"):
        assert db_rows(nightly_runs["project"], f"SELECT * FROM {table} WHERE run_id = 1") == []


def test_a_stale_lock_is_taken_over_and_the_next_nightly_succeeds(nightly_runs):
    run1 = nightly_runs["run1"]
    assert run1.returncode == 0, run1.stdout[-3000:] + run1.stderr[-3000:]
    assert (f"stale lock {nightly_runs['project'] / 'artifacts' / 'nightly.lock'} from PID "
            f"{nightly_runs['dead_pid']} (started 2026-01-01T03:00:00Z) whose process is "
            f"gone: taking it over") in run1.stdout
    assert not (nightly_runs["project"] / "artifacts" / "nightly.lock").exists()


def test_progress_per_stage_and_board_and_total_wall_time(nightly_runs):
    out = nightly_runs["run1"].stdout
    for line in ("stage download", "stage preprocess", "stage train", "stage convert",
                 "stage evaluate", "stage bench", "bench:local (board)",
                 "board local: ok, 8 case(s)", "cached archive(s) seeded"):
        assert line in out, line
    assert "4 cached archive(s) seeded" in out
    assert out.strip().splitlines()[-1].startswith("nightly run 2: OK, total wall time")


def test_two_runs_are_recorded_with_a_row_per_case(nightly_runs):
    project = nightly_runs["project"]
    assert db_rows(project, "SELECT id, status FROM runs") == [
        (1, "failed"), (2, "ok"), (3, "breached")]
    accuracy = db_rows(project, "SELECT build, variant, COUNT(*) FROM accuracy "
                                "GROUP BY build, variant")
    assert {(b, v) for b, v, _ in accuracy} == {
        (b, v) for b in BUILDS for v in ("keras", "float32", "int8", *ONNX)}
    assert {n for *_, n in accuracy} == {2}
    latency = db_rows(project, "SELECT build, variant, board, threads, COUNT(*), "
                               "MIN(p50_us) > 0 FROM latency GROUP BY 1, 2, 3, 4")
    assert {(b, v, t) for b, v, _, t, *_ in latency} == {
        (b, v, t) for b in BUILDS for v in ("float32", "int8") for t in (1, 2)}
    assert {(board, n, positive) for _, _, board, _, n, positive in latency} == {("local", 2, 1)}
    assert set(db_rows(project, "SELECT run_id, board, status FROM boards")) == {
        (2, "local", "ok"), (3, "local", "ok"), (3, "ghost", "failed")}
    [(error,)] = db_rows(project, "SELECT error FROM boards WHERE board = 'ghost'")
    assert "board 'ghost' (host 127.0.0.1 port" in error and "unreachable" in error


def test_impossible_gate_exits_non_zero_after_every_report_is_written(nightly_runs):
    run2, art = nightly_runs["run2"], nightly_runs["project"] / "artifacts"
    assert run2.returncode == 1, run2.stdout[-3000:] + run2.stderr[-3000:]
    for build in BUILDS:
        assert (f"GATE BREACHED: {build} int8: accuracy" in run2.stdout
                and "(nightly.min_accuracy_int8)" in run2.stdout)
    assert run2.stdout.strip().splitlines()[-1].startswith("nightly run 3: BREACHED")
    for name in ("nightly.md", "nightly.json", "nightly.png"):
        assert (art / "reports" / name).stat().st_size > 0, name
    report = json.loads((art / "reports" / "nightly.json").read_text())
    assert report["run"]["id"] == 3 and report["run"]["status"] == "breached"
    assert {(b["build"], b["variant"], b["board"], b["figure"], b["limit"])
            for b in report["breaches"]} == {
        *((b, v, "", "accuracy", ">= 1.0") for b in BUILDS for v in INT8_FLOORED),
        ("", "", "ghost", "board", "status ok")}
    assert "GATE BREACHED: board ghost: FAILED: board 'ghost'" in run2.stdout
    assert "board ghost: failed, 0 case(s)" in run2.stdout  # the per-board progress line
    md = (art / "reports" / "nightly.md").read_text()
    assert f"{1 + len(BUILDS) * len(INT8_FLOORED)} gate(s) BREACHED" in md and "board **ghost** FAILED" in md


def test_nightly_md_compares_the_run_with_the_previous_one(nightly_runs):
    md = (nightly_runs["project"] / "artifacts" / "reports" / "nightly.md").read_text()
    assert md.startswith("# Nightly run 3 — breached")
    assert "Compared with the previous completed run (run 2 of " in md
    assert "median of the 1 completed run(s) before this one (2)" in md
    report = json.loads((nightly_runs["project"] / "artifacts" / "reports" /
                         "nightly.json").read_text())
    assert report["previous_run"] == 2
    row = next(r for r in report["accuracy"] if r["build"] == "mnist_cnn"
               and r["variant"] == "int8")
    assert row["accuracy"] == row["accuracy_prev"] and row["accuracy_change_pt"] == 0
    assert all(r["p50_prev"] and r["p50_median"] for r in report["latency"])
    assert "No earlier completed run to compare with" in nightly_runs["run1_md"]


def test_manifest_is_complete_and_says_the_second_run_is_byte_identical(nightly_runs):
    project = nightly_runs["project"]
    run_dirs = dict(db_rows(project, "SELECT id, run_dir FROM runs"))
    first = json.loads((Path(run_dirs[2]) / "manifest.json").read_text())
    second = json.loads((Path(run_dirs[3]) / "manifest.json").read_text())
    for key in ("started_utc", "ended_utc", "git", "python", "packages", "machine", "datasets",
                "params", "params_hash", "inputs_hash", "code_hash", "boards", "artifacts",
                "reproducibility"):
        assert key in second, key
    assert set(second["packages"]) == {"tensorflow", "keras", "ai-edge-litert", "numpy", "doit"}
    assert all(second["packages"].values())
    assert second["machine"]["cores"] >= 1 and second["machine"]["cpu_model"]
    assert second["datasets"]["mnist"]["train-images-idx3-ubyte.gz"] == (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db")
    assert second["boards"][0]["name"] == "local"
    assert second["params_hash"] != first["params_hash"]  # the gate differs...
    assert second["inputs_hash"] == first["inputs_hash"]  # ...nothing that shapes artifacts
    repro = second["reproducibility"]
    assert repro["comparable"] and repro["reproducible"] and repro["previous_run"] == 2
    assert repro["differing"] == [] and repro["missing"] == []
    # The ghost board staged its plan: new files, not differences.
    assert "bench/ghost/plan.json" in repro["new"]
    assert second["artifacts"]["bench/ghost/plan.json"]["identical_to_previous"] is None
    for build in BUILDS:
        for name in (f"{build}.h5", f"{build}_float32.tflite", f"{build}_int8.tflite",
                     *(f"{build}_{v}.onnx" for v in ONNX)):
            entry = second["artifacts"][f"models/{build}/{name}"]
            assert entry["identical_to_previous"] is True
            assert entry["sha256"] == first["artifacts"][f"models/{build}/{name}"]["sha256"]
            assert entry["bytes"] > 0
    assert first["reproducibility"]["comparable"] is False  # nothing completed before it


def test_retention_keeps_the_last_run_directories(nightly_runs):
    project = nightly_runs["project"]
    kept = sorted(p.name for p in (project / "artifacts" / "nightly").iterdir())
    run_dirs = dict(db_rows(project, "SELECT id, run_dir FROM runs"))
    assert kept == sorted(Path(run_dirs[i]).name for i in (2, 3))  # keep_runs = 2 in smoke


def test_plain_doit_after_a_nightly_executes_nothing(nightly_runs):
    assert nightly_runs["doit_before"].returncode == 0
    proc = nightly_runs["doit"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert executed_tasks(proc.stdout) == set()


def test_history_cli_reads_the_runs(nightly_runs):
    proc = subprocess.run([sys.executable, "-m", "pipeline.history", "--last", "2",
                           "--build", "mnist_cnn", "--board", "local"],
                          cwd=nightly_runs["project"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Runs 2 and 3, mnist_cnn x {float32, int8} x {1, 2} threads on local.
    assert sum("mnist_cnn" in line and "local" in line for line in lines) == 8
    assert not any("mnist_mlp" in line for line in lines)


# --- the lock on its own (real files, real processes) ---------------------------------------


def lock_info(pid: int, ticks: int | None) -> dict:
    return {"pid": pid, "start_ticks": ticks, "started_utc": "2026-01-01T02:00:00Z",
            "run_dir": "artifacts/nightly/20260101T020000Z"}


def test_lock_held_by_a_live_process_is_refused_and_released_only_by_its_owner(tmp_path):
    from pipeline.nightly import (NightlyLocked, acquire_lock, process_start_ticks,
                                  release_lock)

    lock, said = tmp_path / "nightly.lock", []
    acquire_lock(lock, lock_info(os.getpid(), process_start_ticks(os.getpid())), said.append)
    with pytest.raises(NightlyLocked) as err:
        acquire_lock(lock, lock_info(os.getpid() + 1, None), said.append)
    assert (f"another nightly is running: PID {os.getpid()}, started 2026-01-01T02:00:00Z"
            in str(err.value))
    assert said == []
    release_lock(lock)
    assert not lock.exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    from pipeline.nightly import acquire_lock, process_start_ticks

    lock, said = tmp_path / "nightly.lock", []
    # This process's PID, but a different start time: the PID was reused after a reboot.
    lock.write_text(json.dumps(lock_info(os.getpid(), process_start_ticks(os.getpid()) + 1)))
    acquire_lock(lock, lock_info(os.getpid(), None), said.append)
    assert len(said) == 1 and "taking it over" in said[0]


def test_of_nightlies_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    lock = tmp_path / "nightly.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps(lock_info(dead.pid, None)))
    contender = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from pipeline.nightly import NightlyLocked, acquire_lock\n"
        "try:\n"
        f"    acquire_lock(Path({str(lock)!r}), {{'pid': os.getpid()}}, print)\n"
        "except NightlyLocked:\n"
        "    sys.exit(75)\n"
        "time.sleep(3)  # hold it while the others try\n")
    racers = [subprocess.Popen([sys.executable, "-c", contender], cwd=Path(__file__).parent.parent,
                               stdout=subprocess.DEVNULL) for _ in range(4)]
    codes = sorted(r.wait(timeout=60) for r in racers)
    assert codes == [0, 75, 75, 75]
