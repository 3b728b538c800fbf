"""End-to-end nightly: real `python -m pipeline.nightly` runs (real doit, SQLite, signals).

Part 1, the real build graph (TensorFlow and all) in a copy of a smoke-built project, one
module-scoped sequence feeding several tests:

1. a nightly is started and, while it trains, a second one is refused; then it gets SIGTERM;
2. lock files of random bytes and naming a live unrelated PID are planted: the next nightly
   runs (an flock decides, not their content) and succeeds;
3. a nightly with an impossible gate (only the [nightly] section differs) and a board that is
   down exits non-zero;
4. a nightly with that board dropped from the inventory again: reproducible, board "dropped";
5. a plain `doit` in the project (built normally before step 1).

Part 2, the nightly's own steps (record, signals, database trouble, retention) against a
stand-in graph: a dodo.py that copies the smoke build's finished artifacts into the run
directory in a second instead of rebuilding them for minutes. The nightly, doit, SQLite and
the signals are all real; only what doit runs is shorter.
"""

from __future__ import annotations

import dataclasses
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

from tests.conftest import REPO, executed_tasks, free_port, run_doit, third_party_notices
from tests.conftest import wait_for as wait_until  # this file's wait_for waits for a log line

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
    out["runs_after_kill"] = sqlite3.connect(art / "history.sqlite").execute(
        "SELECT id, status, message FROM runs").fetchall()

    out["killed_md"] = (art / "reports" / "nightly.md").read_text()
    out["killed_partials"] = sorted(str(p) for p in (art / "nightly").rglob(".*.partial*"))
    [killed_dir] = [p for p in (art / "nightly").iterdir()]
    out["killed_manifest"] = json.loads((killed_dir / "manifest.json").read_text())

    # 2. Lock files left behind: random bytes, and a live unrelated PID (1, init) without a
    # start time. Neither decides anything: nobody holds the flock.
    (art / "nightly.lock").write_bytes(os.urandom(64))
    (art / "history.sqlite.lock").write_text(json.dumps({"pid": 1}))
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
    out["run2_sizes"] = {name: (art / "reports" / name).stat().st_size
                         for name in ("nightly.md", "nightly.json", "nightly.png")}
    out["run2_md"] = (art / "reports" / "nightly.md").read_text()
    out["run2_json"] = json.loads((art / "reports" / "nightly.json").read_text())
    # Their run directories are pruned by the next run (keep_runs = 2): keep the manifests.
    run_dirs = dict(sqlite3.connect(art / "history.sqlite").execute(
        "SELECT id, run_dir FROM runs").fetchall())
    out["manifests"] = {i: json.loads((Path(run_dirs[i]) / "manifest.json").read_text())
                        for i in (2, 3)}
    out["train_seconds"] = {build: json.loads((Path(run_dirs[2]) / "models" / build /
                                               "history.json").read_text())["train_seconds"]
                            for build in BUILDS}

    # 4. The ghost board dropped from the inventory again, the gates back to normal.
    out["run3"] = run_nightly(project, env)
    out["run3_md"] = (art / "reports" / "nightly.md").read_text()
    out["run3_json"] = json.loads((art / "reports" / "nightly.json").read_text())

    # 5. The normal incremental build afterwards.
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
    assert "nightly terminated by SIGTERM during doit; run 1 recorded as failed" in log
    assert third_party_notices(log) == []  # TensorFlow's stage was stopped mid-import/train
    assert nightly_runs["runs_after_kill"] == [
        (1, "failed", "terminated by SIGTERM during doit")]
    # The reports say that THIS run failed, and why; so does its manifest.
    assert nightly_runs["killed_md"].startswith("# Nightly run 1 — failed\n")
    assert "**This run FAILED**: terminated by SIGTERM during doit." in nightly_runs["killed_md"]
    assert (nightly_runs["killed_manifest"]["run_id"],
            nightly_runs["killed_manifest"]["status"]) == (1, "failed")
    assert nightly_runs["killed_partials"] == []  # no half-written file left behind
    doit_pid = int(re.search(r"doit --continue started \(PID (\d+)\)", log).group(1))
    assert not alive(doit_pid)
    for table in ("accuracy", "latency", "boards"):
        assert db_rows(nightly_runs["project"], f"SELECT * FROM {table} WHERE run_id = 1") == []


def test_leftover_lock_files_of_any_content_do_not_stop_the_next_nightly(nightly_runs):
    run1 = nightly_runs["run1"]
    assert run1.returncode == 0, run1.stdout[-3000:] + run1.stderr[-3000:]
    assert run1.stderr == ""  # no traceback
    art = nightly_runs["project"] / "artifacts"
    for name in ("nightly.lock", "history.sqlite.lock"):  # released: they name nobody
        assert (art / name).read_text() == "", name


def test_progress_per_stage_and_board_and_total_wall_time(nightly_runs):
    out = nightly_runs["run1"].stdout
    for line in ("stage download", "stage preprocess", "stage train", "stage convert",
                 "stage evaluate", "stage bench", "bench:local (board)",
                 f"board local: ok, {len(BUILDS) * (2 + len(ONNX)) * 2} case(s)",
                 "cached archive(s) seeded"):
        assert line in out, line
    assert "4 cached archive(s) seeded" in out
    assert out.strip().splitlines()[-1].startswith("nightly run 2: OK, total wall time")


def test_the_runs_are_recorded_with_a_row_per_case(nightly_runs):
    project = nightly_runs["project"]
    assert db_rows(project, "SELECT id, status FROM runs") == [
        (1, "failed"), (2, "ok"), (3, "breached"), (4, "ok")]
    accuracy = db_rows(project, "SELECT build, variant, COUNT(*) FROM accuracy "
                                "GROUP BY build, variant")
    assert {(b, v) for b, v, _ in accuracy} == {
        (b, v) for b in BUILDS for v in ("keras", "float32", "int8", *ONNX)}
    assert {n for *_, n in accuracy} == {3}
    latency = db_rows(project, "SELECT build, variant, board, threads, COUNT(*), "
                               "MIN(p50_us) > 0 FROM latency GROUP BY 1, 2, 3, 4")
    assert {(b, v, t) for b, v, _, t, *_ in latency} == {
        (b, v, t) for b in BUILDS for v in ("float32", "int8", *ONNX) for t in (1, 2)}
    assert {(board, n, positive) for _, _, board, _, n, positive in latency} == {("local", 3, 1)}
    assert set(db_rows(project, "SELECT run_id, board, status FROM boards")) == {
        (2, "local", "ok"), (3, "local", "ok"), (3, "ghost", "failed"), (4, "local", "ok")}
    [(error,)] = db_rows(project, "SELECT error FROM boards WHERE board = 'ghost'")
    assert "board 'ghost' (host 127.0.0.1 port" in error and "unreachable" in error


def test_impossible_gate_exits_non_zero_after_every_report_is_written(nightly_runs):
    run2 = nightly_runs["run2"]
    assert run2.returncode == 1, run2.stdout[-3000:] + run2.stderr[-3000:]
    for build in BUILDS:
        assert (f"GATE BREACHED: {build} int8: accuracy" in run2.stdout
                and "(nightly.min_accuracy_int8)" in run2.stdout)
    assert run2.stdout.strip().splitlines()[-1].startswith("nightly run 3: BREACHED")
    assert all(size > 0 for size in nightly_runs["run2_sizes"].values())
    report = nightly_runs["run2_json"]
    assert report["run"]["id"] == 3 and report["run"]["status"] == "breached"
    assert {(b["build"], b["variant"], b["board"], b["figure"], b["limit"])
            for b in report["breaches"]} == {
        *((b, v, "", "accuracy", ">= 1.0") for b in BUILDS for v in INT8_FLOORED),
        ("", "", "ghost", "board", "status ok")}
    assert "GATE BREACHED: board ghost: FAILED: board 'ghost'" in run2.stdout
    assert "board ghost: failed, 0 case(s)" in run2.stdout  # the per-board progress line
    md = nightly_runs["run2_md"]
    assert f"{1 + len(BUILDS) * len(INT8_FLOORED)} gate(s) BREACHED" in md
    assert "board **ghost** FAILED" in md


def test_nightly_md_compares_the_run_with_the_previous_one(nightly_runs):
    md = nightly_runs["run3_md"]
    assert md.startswith("# Nightly run 4 — ok")
    # Three completed runs: the previous one is the latest, not the oldest.
    assert "Compared with the previous completed run (run 3 of " in md
    assert "median of the 2 completed run(s) before this one (2, 3)" in md
    report = nightly_runs["run3_json"]
    assert report["previous_run"] == 3 and report["median_of_runs"] == [2, 3]
    row = next(r for r in report["accuracy"] if r["build"] == "mnist_cnn"
               and r["variant"] == "int8")
    assert row["accuracy"] == row["accuracy_prev"] and row["accuracy_change_pt"] == 0
    assert all(r["p50_prev"] and r["p50_median"] for r in report["latency"])
    assert {r["runs_in_median"] for r in report["latency"]} == {2}
    assert "No earlier completed run to compare with" in nightly_runs["run1_md"]


def test_a_board_dropped_from_the_inventory_is_dropped_not_unreproducible(nightly_runs):
    run3 = nightly_runs["run3"]
    assert run3.returncode == 0, run3.stdout[-3000:] + run3.stderr[-3000:]
    repro = nightly_runs["run3_json"]["reproducibility"]
    assert repro["reproducible"] is True and repro["missing"] == []
    ghost = sorted(rel for rel in nightly_runs["manifests"][3]["artifacts"]
                   if rel.startswith("bench/ghost/") or rel == "reports/latency/ghost.json")
    assert {"bench/ghost/plan.json", "reports/latency/ghost.json"} <= set(ghost)
    assert repro["dropped"] == ghost and repro["dropped_boards"] == ["ghost"]
    assert (f"{len(ghost)} file(s) of board(s) dropped from the inventory (ghost) not "
            "compared") in repro["summary"]
    assert "- board **ghost** dropped from the inventory since run 3" in nightly_runs["run3_md"]
    assert {b["board"]: b["status"] for b in nightly_runs["run3_json"]["boards"]} == {
        "local": "ok", "ghost": "dropped"}


def test_manifest_has_each_tasks_outcome_and_wall_time_from_doits_events(nightly_runs):
    """Followed through doit's task events (pipeline/core/events.py), not its console text.
    Wall times are checked against clocks that do not share their code: the training time
    train.py measured inside the task, and the run's own wall time (doit runs one task at a
    time, so their sum cannot exceed it)."""
    manifest = nightly_runs["manifests"][2]
    tasks = manifest["tasks"]
    for build in BUILDS:
        for family in ("train", "convert", "evaluate", "curves", "card"):
            assert tasks[f"{family}:{build}"]["status"] == "success", (family, build)
        train = tasks[f"train:{build}"]["wall_s"]
        assert nightly_runs["train_seconds"][build] <= train <= manifest["wall_s"]
    assert tasks["download:mnist"]["status"] in ("success", "up-to-date")
    assert tasks["bench:local"]["status"] == "success"
    ran = [t["wall_s"] for t in tasks.values() if t["status"] in ("success", "failure")]
    assert all(w is not None and w >= 0 for w in ran)
    assert sum(ran) <= manifest["wall_s"]
    # The board that is down failed, with the first line of its error.
    ghost = nightly_runs["manifests"][3]["tasks"]["bench:ghost"]
    assert ghost["status"] == "failure" and "ghost" in ghost["message"], ghost


def test_manifest_is_complete_and_says_the_second_run_is_byte_identical(nightly_runs):
    first, second = nightly_runs["manifests"][2], nightly_runs["manifests"][3]
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
    assert kept == sorted(Path(run_dirs[i]).name for i in (3, 4))  # keep_runs = 2 in smoke


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
    # Runs 3 and 4, mnist_cnn x {float32, int8, 3 ONNX variants} x {1, 2} threads on local.
    assert sum("mnist_cnn" in line and "local" in line for line in lines) == 20
    assert {line.split()[0] for line in lines[2:]} == {"3", "4"}
    assert not any("mnist_mlp" in line for line in lines)




# --- part 2: the nightly's own steps, against a stand-in graph ------------------------------

STANDIN_DODO = '''"""Stand-in build graph for the nightly's tests: copies a finished smoke
build's artifacts into PIPELINE_ARTIFACTS (the nightly's own steps are tested, not the build)."""
import os
import shutil
import time
from pathlib import Path

SOURCE = Path(os.environ["STANDIN_SOURCE"])
ART = Path(os.environ.get("PIPELINE_ARTIFACTS", "artifacts"))
DOIT_CONFIG = {"dep_file": str(ART / ".doit.db"), "backend": "json", "verbosity": 2,
               "default_tasks": ["build"]}


def build():
    for part in ("models", "reports"):
        shutil.copytree(SOURCE / part, ART / part, dirs_exist_ok=True)
    for rel in filter(None, os.environ.get("STANDIN_DROP", "").split(",")):
        (ART / rel).unlink()
    if os.environ.get("STANDIN_BIG"):
        # An output larger than the disk, written (and given up) the pipeline's way.
        from doit.exceptions import TaskFailed
        from pipeline.core.files import DiskFullError, write_bytes
        try:
            write_bytes(ART / "models" / "big.bin", bytes(int(os.environ["STANDIN_BIG"])))
        except DiskFullError as exc:  # what dodo.py's _guarded does with it
            return TaskFailed(str(exc))
    pause = float(os.environ.get("STANDIN_SLEEP", "0"))
    if pause:
        # What an interrupted atomic write leaves: a temporary sibling of the file.
        (ART / "models" / ".late.txt.x1y2.partial").write_bytes(bytes(1000))
        print("standin sleeping", flush=True)
        time.sleep(pause)
        (ART / "late.txt").write_text("written after the pause")


def task_build():
    return {"actions": [build], "verbosity": 2}


def task_bench():
    def bench():
        shutil.copytree(SOURCE / "bench", ART / "bench", dirs_exist_ok=True)
    return {"actions": [bench], "verbosity": 2}
'''


@pytest.fixture
def standin(smoke_project, tmp_path, mnist_url):
    """A project whose dodo.py is the stand-in; returns a helper to run/start nightlies."""
    project = tmp_path / "p"
    for name in ("pipeline", "board", "params"):
        shutil.copytree(smoke_project / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(smoke_project / "params.toml", project / "params.toml")
    (project / "dodo.py").write_text(STANDIN_DODO)
    return Standin(project, {**nightly_env(mnist_url),
                             "STANDIN_SOURCE": str(smoke_project / "artifacts")})


class Standin:
    def __init__(self, project: Path, env: dict[str, str]):
        self.project, self.env = project, env
        self.art = project / "artifacts"
        self.db = self.art / "history.sqlite"
        self.logs = 0

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.nightly", *args],
                              cwd=self.project, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=300)

    def start(self, *args: str, **env: str) -> tuple[subprocess.Popen, Path]:
        self.logs += 1
        log = self.project / f"nightly{self.logs}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.nightly", *args],
                                    cwd=self.project, env={**self.env, **env}, stdout=fh,
                                    stderr=subprocess.STDOUT)
        return proc, log

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def report(self) -> tuple[str, dict]:
        return ((self.art / "reports" / "nightly.md").read_text(),
                json.loads((self.art / "reports" / "nightly.json").read_text()))

    def run_dir(self, run_id: int) -> Path:
        [(path,)] = self.rows("SELECT run_dir FROM runs WHERE id = ?", (run_id,))
        return Path(path)


def hold_database(path: Path, begin: str = "BEGIN") -> subprocess.Popen:
    """A real sqlite3 reader in another process holding a read transaction (as a sqlite3 shell
    or a notebook cursor left open does) until its stdin gets a line."""
    holder = subprocess.Popen(
        ["sqlite3", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    holder.stdin.write(f"{begin};\nSELECT COUNT(*) FROM runs;\n.print holding\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip().isdigit()
    assert holder.stdout.readline().strip() == "holding"
    return holder


def release_database(holder: subprocess.Popen) -> None:
    holder.communicate("COMMIT;\n.quit\n", timeout=30)


def start_then_hold(standin: Standin, run_id: int, *args: str
                    ) -> tuple[subprocess.Popen, Path, subprocess.Popen]:
    """Start a nightly; once its doit runs, a reader takes the database (as someone who
    opens it during the night does): the record step finds it held."""
    proc, log = standin.start(*args, STANDIN_SLEEP="2")
    assert wait_for_text(log, f"run {run_id} in", 60), log.read_text()
    assert wait_for_text(standin.run_dir(run_id) / "doit.log", "standin sleeping", 60)
    return proc, log, hold_database(standin.db)


def test_a_reader_holding_the_database_at_the_record_step_loses_nothing(standin):
    first = standin.run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    proc, log, holder = start_then_hold(standin, 2, "--db-timeout", "2")
    try:
        status = proc.wait(timeout=120)
    finally:
        release_database(holder)
        if proc.poll() is None:
            proc.kill()
    held = subprocess.CompletedProcess(proc.args, status, log.read_text(), "")
    assert held.returncode == 3, held.stdout[-3000:]
    assert "Traceback" not in held.stdout
    pending = standin.run_dir(2) / "record.json"
    assert (f"NOT RECORDED: run 2 is not in the history database yet: {standin.db} is locked "
            "by another connection (waited 2 s)") in held.stdout
    assert f"its figures are kept in {pending} and the next nightly records them" in held.stdout
    assert held.stdout.strip().splitlines()[-1].startswith("nightly run 2: OK (NOT RECORDED)")
    # The reports and the manifest describe run 2, and say it is not in the database yet.
    md, doc = standin.report()
    assert md.startswith("# Nightly run 2 — ok") and "is not in the history database yet" in md
    assert doc["run"]["id"] == 2 and "not in the history database yet" in doc["note"]
    manifest = json.loads((standin.run_dir(2) / "manifest.json").read_text())
    assert (manifest["run_id"], manifest["status"]) == (2, "ok")
    kept = json.loads(pending.read_text())
    assert kept["status"] == "ok" and len(kept["accuracy"]) == 12 and len(kept["latency"]) == 20
    assert standin.rows("SELECT status FROM runs WHERE id = 2") == [("running",)]

    # The next nightly records run 2 from its record.json, then runs and compares with it.
    after = standin.run()
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr
    assert f"run 2: recorded from {pending} (ok)" in after.stdout
    assert standin.rows("SELECT id, status, ended_utc FROM runs") == [
        (1, "ok", standin.rows("SELECT ended_utc FROM runs WHERE id = 1")[0][0]),
        (2, "ok", kept["ended_utc"]), (3, "ok", standin.rows(
            "SELECT ended_utc FROM runs WHERE id = 3")[0][0])]
    assert sorted(standin.rows("SELECT build, variant, accuracy FROM accuracy WHERE run_id = 2")
                  ) == sorted((r["build"], r["variant"], r["accuracy"]) for r in kept["accuracy"])
    assert standin.report()[1]["previous_run"] == 2


def test_sigterm_while_a_reader_holds_the_database_exits_143_at_once_and_says_failed(standin):
    assert standin.run().returncode == 0
    proc, log, holder = start_then_hold(standin, 2)  # the default, long database timeout
    try:
        try:
            assert wait_for_text(log, "writing run 2 to", 120)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        release_database(holder)
    out = log.read_text()
    assert status == 143, out[-3000:]
    assert took < 20, took  # not the 60 s database timeout
    pending = standin.run_dir(2) / "record.json"
    assert (f"nightly terminated by SIGTERM during record; run 2 kept as failed in {pending} "
            "for the next nightly") in out
    md, doc = standin.report()
    assert md.startswith("# Nightly run 2 — failed")
    assert "**This run FAILED**: terminated by SIGTERM during record." in md
    assert doc["run"]["id"] == 2 and doc["run"]["status"] == "failed"
    manifest = json.loads((standin.run_dir(2) / "manifest.json").read_text())
    assert (manifest["status"], manifest["message"]) == ("failed",
                                                        "terminated by SIGTERM during record")
    after = standin.run()
    assert after.returncode == 0, after.stdout[-3000:]
    assert f"run 2: recorded from {pending} (failed)" in after.stdout
    assert standin.rows("SELECT id, status, message FROM runs WHERE id = 2") == [
        (2, "failed", "terminated by SIGTERM during record")]
    assert standin.rows("SELECT COUNT(*) FROM accuracy WHERE run_id = 2") == [(0,)]
    assert standin.report()[1]["previous_run"] == 1  # a failed run is no comparison


def wait_for_text(path: Path, text: str, seconds: float) -> bool:
    return wait_until(lambda: path.exists() and text in path.read_text(), seconds)


def sigterm_during_doit(standin: Standin, run_id: int) -> tuple[int, str, int, Path]:
    proc, log = standin.start(STANDIN_SLEEP="30")
    try:
        assert wait_for_text(log, f"run {run_id} in", 60)
        run_dir = standin.run_dir(run_id)
        assert wait_for_text(run_dir / "doit.log", "standin sleeping", 60)
        doit_pid = int(re.search(r"doit --continue started \(PID (\d+)\)",
                                 log.read_text()).group(1))
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return status, log.read_text(), doit_pid, run_dir


def test_sigterm_during_doit_writes_failed_reports_removes_partials_and_prunes(standin):
    for _ in range(3):  # three completed runs; keep_runs = 2 in the smoke preset
        assert standin.run().returncode == 0
    status, out, doit_pid, run_dir = sigterm_during_doit(standin, 4)
    assert status == 143, out[-3000:]
    assert "nightly terminated by SIGTERM during doit; run 4 recorded as failed" in out
    assert not alive(doit_pid)
    assert list(run_dir.rglob(".*.partial*")) == []
    md, doc = standin.report()
    assert md.startswith("# Nightly run 4 — failed")
    assert "The last completed run is run 3" in md
    assert doc["run"]["id"] == 4 and doc["run"]["message"] == "terminated by SIGTERM during doit"
    # Nightlies that keep being stopped still prune: of the failed runs, the last two stay.
    for run_id in (5, 6):
        assert sigterm_during_doit(standin, run_id)[0] == 143
    kept = sorted(p.name for p in (standin.art / "nightly").iterdir())
    assert kept == sorted(standin.run_dir(i).name for i in (2, 3, 5, 6))


def test_after_a_sigkill_doit_dies_at_once_and_never_writes_into_the_run_directory(standin):
    proc, log = standin.start(STANDIN_SLEEP="4")
    try:
        assert wait_for_text(log, "run 1 in", 60)
        run_dir = standin.run_dir(1)
        assert wait_for_text(run_dir / "doit.log", "standin sleeping", 60)
        doit_pid = int(re.search(r"doit --continue started \(PID (\d+)\)",
                                 log.read_text()).group(1))
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_until(lambda: not alive(doit_pid), 5), "doit outlived the nightly"
    time.sleep(5)  # past the stand-in's pause: a surviving doit would write late.txt now
    assert not (run_dir / "late.txt").exists()
    assert standin.rows("SELECT status FROM runs") == [("running",)]
    after = standin.run()
    assert after.returncode == 0, after.stdout[-3000:]
    assert "run 1: killed before recording its end: marked failed" in after.stdout
    assert "removed 1 temporary file(s) of run 1" in after.stdout
    assert standin.rows("SELECT id, status FROM runs") == [(1, "failed"), (2, "ok")]


def test_a_stage_that_produced_no_report_fails_the_run_naming_the_files(standin):
    proc = standin.run(STANDIN_DROP="reports/mnist_cnn/layers.md,models/mnist_mlp/model_card.md")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    run_dir = standin.run_dir(1)
    message = (f"mnist_cnn: no reports/mnist_cnn/layers.md; mnist_mlp: no "
               f"models/mnist_mlp/model_card.md (see {run_dir / 'doit.log'})")
    assert f"NIGHTLY FAILED: {message}" in proc.stdout
    assert standin.rows("SELECT status, message FROM runs") == [("failed", message)]
    assert standin.report()[0].startswith("# Nightly run 1 — failed")


def test_a_full_disk_during_the_build_is_said_on_the_console_and_in_the_report(standin,
                                                                              small_disk):
    where = small_disk(32 * 1024)
    proc = standin.run("--db", str(standin.db), PIPELINE_ARTIFACTS=str(where / "art"),
                       STANDIN_DROP="reports/mnist_cnn/layers.md", STANDIN_BIG=str(64 << 20))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    run_dir = standin.run_dir(1)
    said = f"no space left on the device writing {run_dir / 'models' / 'big.bin'}"
    # The line doit printed reaches the console, the failure message and nightly.md.
    assert f"  {said}" in proc.stdout
    [(status, message)] = standin.rows("SELECT status, message FROM runs")
    assert status == "failed" and message.startswith(said), message
    assert message.endswith(f"; mnist_cnn: no reports/mnist_cnn/layers.md "
                            f"(see {run_dir / 'doit.log'})")
    assert f"NIGHTLY FAILED: {message}" in proc.stdout
    from pipeline.core.text import escape_md

    md = (where / "art" / "reports" / "nightly.md").read_text()
    assert escape_md(said) in md  # as Markdown shows it (its underscores escaped)


def test_the_manifest_keeps_no_login_nor_key_of_a_board(standin, tmp_path):
    secret_key, login = "/home/someone/.ssh/k1_secret_key", "someone_private"
    boards = tmp_path / "boards.toml"
    boards.write_text(f"""[[boards]]
name = "far"
host = "{login}@k1.example"
user = "{login}"
ssh_options = ["-i", "{secret_key}", "-o", "IdentityFile={secret_key}", "-l{login}",
               "-o", "StrictHostKeyChecking=yes"]
""")
    standin.run("--db", str(standin.db), PIPELINE_BOARDS=str(boards))
    manifest = standin.run_dir(1) / "manifest.json"
    text = manifest.read_text()
    assert secret_key not in text and login not in text
    [far] = json.loads(text)["boards"]
    assert far["host"] == "<redacted>@k1.example" and far["user"] == "<redacted>"
    assert far["ssh_options"] == ["-i", "<redacted>", "-o", "IdentityFile=<redacted>",
                                  "-l<redacted>", "-o", "StrictHostKeyChecking=yes"]


def test_two_artifact_trees_sharing_one_database_never_run_together(standin, tmp_path):
    shared = tmp_path / "shared.sqlite"
    first, log = standin.start("--db", str(shared), STANDIN_SLEEP="6",
                               PIPELINE_ARTIFACTS=str(tmp_path / "tree_a"))
    try:
        assert wait_for_text(log, "run 1 in", 60)
        [run_dir] = (tmp_path / "tree_a" / "nightly").iterdir()
        assert wait_for_text(run_dir / "doit.log", "standin sleeping", 60)
        second = standin.run("--db", str(shared), PIPELINE_ARTIFACTS=str(tmp_path / "tree_b"))
        status = first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 75, second.stdout[-3000:]
    assert f"error: another nightly is running: PID {first.pid}" in second.stdout
    assert f"lock file {shared}.lock" in second.stdout
    assert status == 0, log.read_text()[-3000:]
    rows = sqlite3.connect(shared).execute("SELECT id, status, message FROM runs").fetchall()
    assert rows == [(1, "ok", None)]  # the first run was never marked killed


@pytest.mark.parametrize("damage", ["random", "foreign", "lock-directory"])
def test_an_unusable_database_or_lock_is_one_line_and_exit_2(standin, damage):
    standin.art.mkdir(parents=True)
    if damage == "random":
        standin.db.write_bytes(os.urandom(4096))
        expected = f"error: history database: {standin.db} is not an SQLite database"
    elif damage == "foreign":
        other = sqlite3.connect(standin.db)
        other.execute("CREATE TABLE notes (text TEXT)")
        other.commit()
        other.close()
        expected = f"error: history database: {standin.db} is not a nightly history database"
    else:
        (standin.art / "nightly.lock").mkdir()
        expected = f"error: lock path {standin.art / 'nightly.lock'} is a directory"
    before = standin.db.read_bytes() if standin.db.exists() else None
    proc = standin.run()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == "" and proc.stdout.splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith(expected), proc.stdout
    assert (standin.db.read_bytes() if standin.db.exists() else None) == before
    assert not (standin.art / "nightly").exists()  # nothing was run


def test_a_full_disk_under_the_database_keeps_the_run_for_the_next_nightly(standin, small_disk):
    from tests.test_history import fill_disk

    where = small_disk(256)
    db = where / "h.sqlite"
    proc, log = standin.start("--db", str(db), "--db-timeout", "1", STANDIN_SLEEP="2")
    try:
        assert wait_for_text(log, "run 1 in", 60)
        fill_disk(where)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert status == 3, out[-3000:]
    assert f"the disk holding {db} is full: free some space, then retry" in out
    (where / "filler").unlink()
    after = standin.run("--db", str(db))
    assert after.returncode == 0, after.stdout[-3000:]
    assert "run 1: recorded from " in after.stdout
    assert sqlite3.connect(db).execute("SELECT id, status FROM runs").fetchall() == [
        (1, "ok"), (2, "ok")]


def test_expected_reports_follow_every_stage_and_variant():
    from pipeline.nightly.run import expected_reports
    from pipeline.core.params import load_params

    params = load_params(Path(__file__).parent.parent / "params" / "smoke.toml")
    expected = expected_reports(params)
    assert set(expected) == set(BUILDS)
    cnn = expected["mnist_cnn"]
    for rel in ("models/mnist_cnn/mnist_cnn.h5", "models/mnist_cnn/mnist_cnn_int8.tflite",
                "reports/mnist_cnn/accuracy.json", "reports/mnist_cnn/training.png",
                "reports/mnist_cnn/analysis.md", "reports/mnist_cnn/layers.md",
                "models/mnist_cnn/model_card.md", "reports/mnist_cnn/layers_onnx.md",
                "reports/mnist_cnn/layers_onnx.json"):
        assert rel in cnn, rel
    # Without onnx_int8 the layers task writes no layers_onnx.*: a nightly does not wait for it.
    tflite_only = expected_reports(dataclasses.replace(
        params, convert=dataclasses.replace(params.convert, onnx=False)))["mnist_cnn"]
    assert set(cnn) - set(tflite_only) == {
        *(f"models/mnist_cnn/mnist_cnn_{v}.onnx"
          for v in ("onnx_float32", "onnx_int8", "onnx_int8_tflite")),
        "reports/mnist_cnn/layers_onnx.md", "reports/mnist_cnn/layers_onnx.json"}


def test_a_run_that_lost_its_onnx_layer_report_misses_it(tmp_path):
    from pipeline.nightly.run import expected_reports, missing_reports
    from pipeline.core.params import load_params

    expected = expected_reports(load_params(Path(__file__).parent.parent / "params" /
                                            "smoke.toml"))
    for files in expected.values():
        for rel in files:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("x")
    assert missing_reports(tmp_path, expected) == {}
    (tmp_path / "reports/mnist_mlp/layers_onnx.json").unlink()
    (tmp_path / "reports/mnist_cnn/layers_onnx.md").write_text("")
    assert missing_reports(tmp_path, expected) == {
        "mnist_cnn": ["reports/mnist_cnn/layers_onnx.md"],
        "mnist_mlp": ["reports/mnist_mlp/layers_onnx.json"]}


def test_a_full_disk_under_the_run_directory_fails_the_run_naming_the_file(standin, tmp_path,
                                                                           small_disk):
    from tests.test_history import fill_disk

    where = small_disk(32 * 1024)
    db = tmp_path / "h.sqlite"
    proc, log = standin.start("--db", str(db), STANDIN_SLEEP="2",
                              PIPELINE_ARTIFACTS=str(where / "art"))
    try:
        assert wait_for_text(log, "run 1 in", 60)
        [run_dir] = (where / "art" / "nightly").iterdir()
        assert wait_for_text(run_dir / "doit.log", "standin sleeping", 60)
        fill_disk(where)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert status == 2, out[-3000:]
    assert "Traceback" not in out
    message = (f"could not write {run_dir / 'manifest.json'}: No space left on device "
               "(0 MiB free there; free some space and run the nightly again)")
    assert f"NIGHTLY FAILED: {message}" in out
    assert sqlite3.connect(db).execute("SELECT status, message FROM runs").fetchall() == [
        ("failed", message)]


def test_a_run_killed_after_its_reports_is_failed_in_manifest_and_reports_too(tmp_path):
    """SIGKILL after the manifest and the reports but before record.json: the next nightly
    marks it failed, and its manifest and the reports (which named it) say so too."""
    from pipeline.nightly import history
    from pipeline.nightly import report as nightly_report
    from pipeline.nightly.run import _fix_abandoned
    from pipeline.core.params import load_params

    params = load_params(Path(__file__).parent.parent / "params" / "smoke.toml")
    db = history.connect(tmp_path / "h.sqlite")
    run_dir, reports = tmp_path / "nightly" / "20260101T020000Z", tmp_path / "reports"
    run_dir.mkdir(parents=True)
    run = history.start_run(db, "2026-01-01T02:00:00Z", None, None, "p", str(run_dir))
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": run, "status": "ok"}))
    (run_dir / ".model.tflite.abc.partial").write_bytes(b"half")
    row = {**history.run_row(db, run), "status": "ok"}
    empty = history.as_figures([], [], [])
    nightly_report.write_reports(row, empty, nightly_report.assess(db, run, empty,
                                                                   params.nightly),
                                 params.nightly, reports)
    assert (reports / "nightly.md").read_text().startswith(f"# Nightly run {run} — ok")
    said = []
    [(settled, what)] = history.settle_unfinished_runs(db, "2026-01-01T03:00:00Z")
    _fix_abandoned(db, settled, reports, params, said.append)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    md = (reports / "nightly.md").read_text()
    assert md.startswith(f"# Nightly run {run} — failed")
    assert "abandoned: the nightly was killed before it could record its end" in md
    assert said == [f"removed 1 temporary file(s) of run {run} from {run_dir}"]
    assert not (run_dir / ".model.tflite.abc.partial").exists()


def test_stop_child_interrupts_doits_whole_process_group_first_then_kills_it(tmp_path):
    """SIGINT to the group (doit's stages clean up on it), SIGKILL for whatever ignores it."""
    from pipeline.nightly.run import stop_child

    said = tmp_path / "said.txt"
    child_code = (
        "import signal, subprocess, sys, time\n"
        # As doit under the nightly (which catches SIGINT, so exec resets it to the default),
        # even when this test runs in the background with SIGINT ignored.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        # A grandchild that ignores SIGINT: only the group's SIGKILL stops it.
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); print(1, flush=True); time.sleep(60)'],"
        " stdout=subprocess.PIPE)\n"
        "g.stdout.readline()\n"
        "try:  # the PID is written inside: a SIGINT from then on is caught\n"
        f"    open({str(said)!r}, 'w').write(str(g.pid))\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        f"    open({str(said)!r}, 'a').write(' interrupted')\n")
    child = subprocess.Popen([sys.executable, "-c", child_code], start_new_session=True)
    assert wait_until(lambda: said.exists() and said.read_text().strip().isdigit(), 120)
    grandchild = int(said.read_text())
    started = time.monotonic()
    stop_child(child)
    assert child.poll() is not None
    assert said.read_text().endswith(" interrupted")  # SIGINT came first
    assert wait_until(lambda: not alive(grandchild), 5)
    assert time.monotonic() - started < 30


def test_user_model_files_are_inputs_and_unstable_names_are_reported(tmp_path):
    import json as json_module

    from pipeline.core.layout import Layout
    from pipeline.nightly.provenance import unstable_names_note, user_model_hashes
    from pipeline.core.params import load_params

    (tmp_path / "mine.py").write_text("def build(s, n): pass\n")
    text = (REPO / "params" / "smoke.toml").read_text() + (
        '\n[[builds]]\nname = "mnist_cnn"\ndataset = "mnist"\nmodel = "cnn"\n'
        '\n[[builds]]\nname = "mnist_mine"\ndataset = "mnist"\nmodel = "mine.py:build"\n')
    (tmp_path / "p.toml").write_text(text)
    params = load_params(tmp_path / "p.toml")
    before = user_model_hashes(params)
    assert set(before) == {"mnist_mine"}
    (tmp_path / "mine.py").write_text("def build(s, n): return None\n")
    assert user_model_hashes(params) != before  # an edit is a change of inputs
    history = Layout(tmp_path / "run").history_json("mnist_mine")
    history.parent.mkdir(parents=True)
    history.write_text(json_module.dumps({"layer_names_stable": True}))
    assert unstable_names_note(tmp_path / "run", ["mnist_cnn", "mnist_mine"]) == ""
    history.write_text(json_module.dumps({"layer_names_stable": False}))
    note = unstable_names_note(tmp_path / "run", ["mnist_cnn", "mnist_mine"])
    assert note.startswith("; mnist_mine: its layer names depend on") and "name=" in note
