"""Nightly regeneration: rebuild everything from scratch in its own run directory, record it.

    python -m pipeline.nightly            # from the project root, like `doit`

One run: take the locks (artifacts/nightly.lock and <db>.lock, both flock: the kernel drops
them when the holder dies), settle runs an earlier nightly left unfinished, make
artifacts/nightly/<UTC stamp>/, seed its dataset cache with hard links to
artifacts/data/<dataset>/raw (the download task then re-verifies every archive by checksum
and fetches only what is missing or bad), run the real doit graph there (`doit --continue`,
then `doit --continue bench` for every board in the inventory) with PIPELINE_ARTIFACTS
pointing at the run directory, then record: manifest.json, reports/nightly.{json,md,png},
<run dir>/record.json (the figures) and last the database row that points to them; apply
the [nightly] gates and prune old run directories.

Why a module and not a `doit nightly` task: the nightly must ignore doit's up-to-date checks
and must not touch artifacts/.doit.db. A doit task would run inside the normal build's doit
process and database; a separate process pointing doit at the run directory gets a database
of its own for free, runs the graph exactly as `doit` does, and can own the lock, SIGTERM
handling and the exit status.

Exit status: 0 all gates pass; 1 a gate is breached (a failed board is one); 2 the run
failed (a stage did not produce its reports, bad params, an unusable lock or database);
3 the run finished but the history database could not be written (its figures wait in
<run dir>/record.json for the next nightly); 75 another nightly holds a lock; 143
terminated by SIGTERM (130 by SIGINT). Environment as for doit: PIPELINE_PARAMS,
PIPELINE_SET (or --set), PIPELINE_ARTIFACTS, PIPELINE_BOARDS, PIPELINE_MIRROR,
PIPELINE_OFFLINE.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.bench.reference import accept_references, seed_references
from pipeline.nightly import history
from pipeline.nightly import lock as nightly_lock
from pipeline.nightly import report as nightly_report
from pipeline.core.boards import Board, load_boards
from pipeline.core.datasets import DATASETS
from pipeline.core.events import EVENTS_ENV, EventFollower, task_times
from pipeline.core.files import DiskFullError, write_json
from pipeline.core.layout import NIGHTLY_JSON, NIGHTLY_MD, Layout
from pipeline.nightly.provenance import (DOIT_LOG, EVENTS_JSONL, MANIFEST_JSON, artifact_hashes,
                                         canonical_hash, code_hash, dataset_hashes, git_state,
                                         machine, package_versions, reproducibility,
                                         unstable_names_note, user_model_hashes)
from pipeline.nightly.retention import prune, remove_partials, run_stamp
from pipeline.core.params import OVERRIDE_ENV, Params, ParamsError, load_params, write_resolved
from pipeline.core.text import clean_text, utc_now
from pipeline.core.variants import ONNX_INT8, variant_names

# doit's default tasks (the whole build, as dodo.py declares it), then `bench` for every board
# in the inventory; both against the run directory's own database.
DOIT_RUNS = (("--continue",), ("--continue", "bench"))
EXIT_BREACHED, EXIT_FAILED, EXIT_UNRECORDED, EXIT_LOCKED = 1, 2, 3, 75  # 128 + signal: killed
# Writing the end of a run that was stopped by a signal: short, the record waits on disk.
TERMINATED_DB_TIMEOUT_S = 5.0
# doit gets SIGINT (its tasks clean their temporary files) this long before SIGKILL.
CHILD_STOP_TIMEOUT_S = 20.0


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler, with the signal number
    (BaseException: no `except Exception` on the way may swallow it)."""


def seed_datasets(main_artifacts: Path, run_dir: Path, datasets: Sequence[str],
                  specs: Mapping[str, Any] = DATASETS) -> int:
    """Hard-link (or copy) the cached archives into the run directory; return files seeded.

    Safe to share inodes: the download task replaces a bad file by rename, never in place.
    """
    seeded = 0
    for name in datasets:
        source = Layout(main_artifacts).raw_dir(name)
        for remote in specs[name].files:
            src, dest = source / remote.name, Layout(run_dir).raw_dir(name) / remote.name
            if not src.is_file():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(src, dest)
            seeded += 1
    return seeded


def expected_reports(params: Params) -> dict[str, list[str]]:
    """Per build, every file its stages must produce (run-directory relative): the models,
    accuracy, curves, analysis, layers (with onnx_int8: layers_onnx too, as the layers task
    writes them) and card. A stage that failed leaves some missing."""
    layout, out = Layout(Path(".")), {}
    for build in params.builds:
        b = build.name
        variants = variant_names(params.convert, build.float_layers)
        files = [layout.keras_model(b), layout.history_json(b),
                 *(layout.variant_path(b, v) for v in variants),
                 layout.accuracy_json(b), layout.accuracy_md(b), layout.training_png(b),
                 *layout.analysis_outputs(b), *layout.layers_outputs(b),
                 *(layout.layers_onnx_outputs(b) if ONNX_INT8 in variants else ()),
                 layout.card_json(b), layout.card_md(b)]
        out[b] = [f.as_posix() for f in files]
    return out


def missing_reports(run_dir: Path, expected: dict[str, list[str]]) -> dict[str, list[str]]:
    """The expected files that are not in `run_dir` (or are empty), per build."""
    missing = {}
    for build, files in expected.items():
        absent = [f for f in files if not (run_dir / f).is_file()
                  or (run_dir / f).stat().st_size == 0]
        if absent:
            missing[build] = absent
    return missing


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn for doit: SIGKILL when the nightly dies, however it dies (Linux
    PR_SET_PDEATHSIG), so no doit outlives it to write into an abandoned run directory.
    The nightly has no other thread at that point, so a preexec_fn is safe here."""
    def preexec() -> None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the nightly died before the line above
            os._exit(1)
    return preexec


# How a task's failure says that the disk is full: pipeline.core.files' DiskFullError and
# dodo.py's one line for other writers, or the system's own words in a traceback.
DISK_FULL_WORDS = ("no space left on the device", "No space left on device",
                   "Disk quota exceeded")


def run_graph(project: Path, run_dir: Path, env: dict[str, str],
              progress: Callable[[str], None],
              started: Callable[[subprocess.Popen], None],
              events: list[dict[str, Any]] | None = None,
              disk_full: list[str] | None = None) -> int:
    """Run the whole doit graph for `run_dir` (see DOIT_RUNS); log doit's output to
    run_dir/doit.log and print a line per stage and per task (each board is a task),
    following doit through its task events (pipeline/core/events.py, run_dir/EVENTS_JSONL),
    never its console text; each event is appended to `events`. Returns the worst doit exit
    status. A log that cannot be written (a full disk) is said once; doit's output is still
    read, so doit is never blocked on it. A line of doit's saying that the disk is full is
    printed too and appended to `disk_full`: it is the cause of whatever fails next, and
    must not stay in doit.log alone."""
    events = [] if events is None else events
    follower = EventFollower(run_dir / EVENTS_JSONL)
    announce = _announcer(progress)
    worst = 0
    log = open(run_dir / DOIT_LOG, "w", encoding="utf-8")
    logging = True
    try:
        for args in DOIT_RUNS:
            # Its own process group: stop_child() signals doit and everything it started.
            child = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project,
                                     env={**env, EVENTS_ENV: str(run_dir / EVENTS_JSONL)},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
            started(child)
            progress(f"doit {' '.join(args)} started (PID {child.pid}), full log: "
                     f"{run_dir / DOIT_LOG}")
            assert child.stdout is not None
            # doit writes each event before its console line: polling per line keeps the
            # progress as current as the console, without parsing it.
            for line in child.stdout:
                if logging:
                    try:
                        log.write(line)
                        log.flush()
                    except OSError as exc:
                        logging = False
                        progress(f"cannot write {run_dir / DOIT_LOG}: {exc.strerror}; the "
                                 "rest of doit's output is not kept")
                if any(words in line for words in DISK_FULL_WORDS):
                    progress(f"  {line.strip()}")
                    if disk_full is not None:
                        disk_full.append(line.strip())
                _follow(follower, events, announce)
            worst = max(worst, child.wait())
            _follow(follower, events, announce)
    finally:
        follower.close()
        try:
            log.close()
        except OSError:
            pass  # said above; what it could not flush is lost, nothing else
    return worst


def _follow(follower: EventFollower, events: list[dict[str, Any]],
            announce: Callable[[dict[str, Any]], None]) -> None:
    try:
        new = follower.poll()
    except (OSError, ValueError):
        return  # an unreadable events file costs the progress lines, not the run
    events.extend(new)
    for event in new:
        announce(event)


def _announcer(progress: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """The progress lines of task events: a line per new stage, per task that starts, and
    per failure (with its first line)."""
    stage: list[str | None] = [None]

    def announce(event: dict[str, Any]) -> None:
        task = event.get("task")
        if event["event"] == "start":
            family = task.split(":")[0]
            if family != stage[0]:
                stage[0] = family
                progress(f"stage {family}")
            progress(f"  {task}" + (" (board)" if family == "bench" else ""))
        elif event["event"] == "failure":
            progress(f"  {task} failed: {event.get('message', '')}")
        elif event["event"] == "error":
            progress(f"  doit: {event.get('message', '')}")

    return announce


def stop_child(child: subprocess.Popen | None) -> None:
    """Stop doit's process group: SIGINT first (its stages remove their temporary files and
    stop their runners), SIGKILL after CHILD_STOP_TIMEOUT_S."""
    if child is None or child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGINT)
        child.wait(timeout=CHILD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    child.wait()


@dataclass
class Run:
    """What the nightly knows about its run so far (for the signal handler's report)."""
    started_utc: str
    run_dir: Path
    stage: str = "setup"
    run_id: int | None = None
    db: history.HistoryDB | None = None
    child: subprocess.Popen | None = None
    events: list[dict[str, Any]] = field(default_factory=list)   # doit's task events
    locked: bool = False
    recorded: bool = False
    disk_full: list[str] = field(default_factory=list)  # doit's lines saying so
    manifest: dict[str, Any] = field(default_factory=dict)


def _row(run: Run, status: str, ended_utc: str, wall_s: float, message: str | None) -> dict:
    """This run's runs-table row as the reports show it (the same as the database's)."""
    return {"id": run.run_id, "started_utc": run.started_utc, "ended_utc": ended_utc,
            "status": status, "commit_sha": run.manifest.get("git", {}).get("commit"),
            "dirty": run.manifest.get("git", {}).get("dirty"),
            "params_hash": run.manifest.get("params_hash"),
            "inputs_hash": run.manifest.get("inputs_hash"), "wall_s": wall_s,
            "run_dir": str(run.run_dir), "message": message}


def _assess(db: history.HistoryDB | None, run_id: int | None, current: dict[str, Any],
            params: Params, failed: bool) -> dict[str, Any]:
    """The comparison with earlier runs; without a usable database, with none."""
    if db is not None:
        try:
            return nightly_report.assess(db, run_id, current, params.nightly, failed=failed)
        except history.HistoryError:
            pass
    return {"earlier": [], "figures": {}, "breaches": [],
            "comparison": {k: list(v) for k, v in nightly_report.NO_COMPARISON.items()}}


def _fix_abandoned(db: history.HistoryDB, run_id: int, reports: Path, params: Params,
                   log: Callable[[str], None]) -> None:
    """A run killed (SIGKILL) after writing some of its files but before its record: its
    manifest and, if they name it, the reports are rewritten to say it failed, as the
    database now does."""
    row = history.run_row(db, run_id)
    if row is None or not row["run_dir"]:
        return
    run_dir = Path(row["run_dir"])
    if run_dir.is_dir() and not run_dir.is_symlink():
        removed = remove_partials(run_dir)
        if removed:
            log(f"removed {removed} temporary file(s) of run {run_id} from {run_dir}")
        manifest = run_dir / MANIFEST_JSON
        if manifest.is_file():
            try:
                doc = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                doc = {}
            if isinstance(doc, dict):
                write_json(manifest, {**doc, "status": "failed", "message": row["message"]})
    try:
        named = json.loads((reports / NIGHTLY_JSON).read_text())["run"]["id"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        named = None
    if named == run_id:
        empty = history.as_figures([], [], [])
        nightly_report.write_reports(row, empty, _assess(db, run_id, empty, params, True),
                                     params.nightly, reports)


def nightly(project: Path, artifacts: Path, params_path: Path, boards_path: Path,
            db_path: Path, env: dict[str, str], log: Callable[[str], None] = print,
            db_timeout_s: float = history.WRITE_TIMEOUT_S) -> int:
    """One nightly run; returns the exit status (see the module docstring)."""
    t0 = time.monotonic()

    def progress(message: str) -> None:
        log(f"[nightly {time.monotonic() - t0:7.1f} s] {message}")

    try:
        params: Params = load_params(params_path, env.get(OVERRIDE_ENV, ""))
        boards: tuple[Board, ...] = load_boards(boards_path)
    except ParamsError as exc:
        log(f"error: {exc}")
        return EXIT_FAILED
    nightly_dir, reports = Layout(artifacts).nightly_dir(), Layout(artifacts).reports_dir()
    started = utc_now()
    run = Run(started, run_stamp(started, nightly_dir))
    # One lock for the artifact tree (its reports and run directories), one for the database:
    # every nightly that writes either is excluded, whatever --db or PIPELINE_ARTIFACTS say.
    lock_paths = sorted({Layout(artifacts).nightly_lock(),
                         db_path.with_name(db_path.name + ".lock")})
    locks: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    # Installed before the locks are taken: a signal at any point is handled below. SIGINT
    # (Ctrl-C) too: an interactive nightly stopped by hand is recorded the same way.
    saved_handlers = {sig: signal.signal(sig, on_signal)
                      for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        refused = _lock(run, lock_paths, locks, log)
        if refused is None:
            refused = _open_history(run, db_path, db_timeout_s, reports, params, progress, log)
        if refused is not None:
            return refused
        return _build_and_record(run, project, artifacts, params, params_path, boards,
                                 boards_path, env, db_timeout_s, t0, progress, log)
    except Terminated as exc:
        for sig in saved_handlers:  # a second signal must not interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        return _terminated(run, signal.Signals(exc.args[0]), params, artifacts, t0, log,
                           progress)
    finally:
        stop_child(run.child)
        if run.db is not None:
            run.db.close()
        for fd in reversed(locks):
            nightly_lock.release(fd)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)


def _build_and_record(run: Run, project: Path, artifacts: Path, params: Params,
                      params_path: Path, boards: Sequence[Board], boards_path: Path,
                      env: dict[str, str], db_timeout_s: float, t0: float,
                      progress: Callable[[str], None], log: Callable[[str], None]) -> int:
    """With the locks held and the database open: start the run, let doit build everything
    in its directory, record it; the exit status."""
    run.run_dir.mkdir(parents=True)
    # What this run was made with, whatever happens next (the build's own params task
    # writes the same file once doit gets that far).
    write_resolved(Layout(run.run_dir).resolved_params(), params, params_path,
                   env.get(OVERRIDE_ENV, ""))
    code = code_hash(project)
    build_params = {k: v for k, v in asdict(params).items() if k != "nightly"}
    if not _start_run(run, project, artifacts, params, boards, db_timeout_s, progress, log):
        return EXIT_FAILED
    child_env = {**env, "PIPELINE_ARTIFACTS": str(run.run_dir.resolve()),
                 "PIPELINE_PARAMS": str(params_path.resolve()),
                 "PIPELINE_BOARDS": str(boards_path.resolve())}
    run.stage = "doit"
    status = run_graph(project, run.run_dir, child_env, progress,
                       lambda child: setattr(run, "child", child), run.events, run.disk_full)
    run.stage = "record"
    progress(f"doit finished with exit status {status}; recording")
    return _record(run, params, boards, project, artifacts, code, build_params, status,
                   t0, progress, log, db_timeout_s)


def _lock(run: Run, lock_paths: Sequence[Path], locks: list[int],
          log: Callable[[str], None]) -> int | None:
    """Take every lock (each fd appended to `locks`, which the caller releases); the exit
    status when one cannot be taken, else None."""
    try:
        info = {"pid": os.getpid(), "started_utc": run.started_utc, "run_dir": str(run.run_dir)}
        for path in lock_paths:
            locks.append(nightly_lock.acquire(path, info))
        run.locked = True
    except nightly_lock.NightlyLocked as exc:
        log(f"error: {exc}")
        return EXIT_LOCKED
    except nightly_lock.LockUnusable as exc:
        log(f"error: {exc}")
        return EXIT_FAILED
    return None


def _open_history(run: Run, db_path: Path, db_timeout_s: float, reports: Path, params: Params,
                  progress: Callable[[str], None], log: Callable[[str], None]) -> int | None:
    """Open the history database and settle runs a killed nightly left unfinished (their
    files marked failed too); EXIT_FAILED when the database cannot be used, else None."""
    try:
        run.db = history.connect(db_path, db_timeout_s)
        for run_id, what in history.settle_unfinished_runs(run.db, utc_now(), db_timeout_s):
            progress(f"run {run_id}: {what}")
            if "marked failed" in what:
                try:
                    _fix_abandoned(run.db, run_id, reports, params, progress)
                except OSError as exc:
                    progress(f"could not mark run {run_id}'s files failed: {exc}")
    except history.HistoryError as exc:
        log(f"error: history database: {exc}")
        return EXIT_FAILED
    return None


def _start_run(run: Run, project: Path, artifacts: Path, params: Params,
               boards: Sequence[Board], db_timeout_s: float, progress: Callable[[str], None],
               log: Callable[[str], None]) -> bool:
    """The run's manifest start, its seeded datasets and its history row; False (its empty
    directory removed) when the database refuses the row."""
    assert run.db is not None
    commit, dirty = git_state(project)
    run.manifest = {"git": {"commit": commit, "dirty": dirty},
                    "params_hash": canonical_hash(asdict(params))}
    seeded = seed_datasets(artifacts, run.run_dir, params.datasets, params.dataset_specs())
    # Tonight's models are timed beside the last accepted night's (bench/reference.py).
    references = seed_references(Layout(artifacts).accepted_references_dir(),
                                 Layout(run.run_dir))
    try:
        run.run_id = history.start_run(run.db, run.started_utc, commit, dirty,
                                       run.manifest["params_hash"], str(run.run_dir),
                                       db_timeout_s)
    except history.HistoryError as exc:
        shutil.rmtree(run.run_dir, ignore_errors=True)  # nothing was done in it yet
        log(f"error: history database: {exc}; nothing was run")
        return False
    progress(f"run {run.run_id} in {run.run_dir} ({seeded} cached archive(s) seeded; "
             f"references of {references} board(s) from the last accepted run; "
             f"boards: {', '.join(b.name for b in boards) or 'none'})")
    return True


def _record(run: Run, params: Params, boards: Sequence[Board], project: Path, artifacts: Path,
            code: str, build_params: dict[str, Any], status: int, t0: float,
            progress: Callable[[str], None], log: Callable[[str], None],
            db_timeout_s: float) -> int:
    """The record step, files first: manifest.json, the reports, record.json (the run's
    figures: from here on the run is never lost), then the database row. A signal before
    the row is committed makes the run failed everywhere (see _terminated); a database that
    stays busy or broken leaves record.json for the next nightly and exit status 3."""
    assert run.db is not None and run.run_id is not None
    remove_partials(run.run_dir)  # what a killed task left (doit --continue went on)
    builds = [b.name for b in params.builds]
    accuracy = history.read_accuracy(run.run_dir, builds)
    board_rows, latency = history.read_latency(run.run_dir, [b.name for b in boards])
    for line in _board_lines(run.run_dir, board_rows, latency):
        progress(line)
    missing = missing_reports(run.run_dir, expected_reports(params))
    datasets, inputs_hash, artifacts_now, repro = _inputs_and_repro(run, params, boards, code,
                                                                     build_params)
    current = history.as_figures(accuracy, board_rows, latency)
    assessment = _assess(run.db, run.run_id, current, params, failed=False)
    found = assessment["breaches"]
    outcome = "failed" if missing else ("breached" if found else "ok")
    message = _missing_message(run, missing)
    ended, wall = utc_now(), time.monotonic() - t0
    run.manifest = {
        "run_id": run.run_id, "status": outcome, "message": message,
        "started_utc": run.started_utc, "ended_utc": ended, "wall_s": wall,
        "doit_exit_status": status, **run.manifest, "python": sys.version,
        "packages": package_versions(), "machine": machine(), "datasets": datasets,
        "params": asdict(params), "inputs_hash": inputs_hash, "code_hash": code,
        "boards": [b.public_settings() for b in boards], "artifacts": artifacts_now,
        "reproducibility": repro, "tasks": task_times(run.events)}
    row = _row(run, outcome, ended, wall, message)
    reports = Layout(artifacts).reports_dir()
    record = history.run_record(run.run_id, outcome, ended, wall, accuracy, board_rows, latency,
                                message, inputs_hash)
    for target, write in (
            (run.run_dir / MANIFEST_JSON,
             lambda: write_json(run.run_dir / MANIFEST_JSON, run.manifest)),
            (reports / "nightly.{json,md,png}",  # Layout.nightly_reports(), all three
             lambda: nightly_report.write_reports(row, current, assessment, params.nightly,
                                                  reports, repro)),
            (run.run_dir / history.PENDING, lambda: history.keep_pending(run.run_dir, record))):
        try:
            write()
        # A full disk, most likely (files.py turns ENOSPC into DiskFullError): the run
        # cannot be kept whole.
        except (OSError, DiskFullError) as exc:
            return _unwritable(run, target, exc, t0, log, db_timeout_s)
    unrecorded = _commit(run, record, db_timeout_s, progress)
    if unrecorded:
        nightly_report.write_reports(row, current, assessment, params.nightly, reports, repro,
                                     note=unrecorded)
    if run.recorded:
        if outcome == "ok":
            _accept(run, artifacts, progress)
        _prune(run, params, progress)
    progress(f"reports: {reports / NIGHTLY_MD}, manifest: {run.run_dir / MANIFEST_JSON}")
    progress(repro["summary"])
    return _verdict(run.run_id, outcome, message, found, unrecorded, t0, log)


def _missing_message(run: Run, missing: dict[str, list[str]]) -> str | None:
    """A failed run's message: the reports it lacks, after the cause when doit said the disk
    was full ("no models/..." alone hides it)."""
    if not missing:
        return None
    cause = f"{run.disk_full[0]}; " if run.disk_full else ""
    return (cause + "; ".join(f"{build}: no {', '.join(files)}" for build, files in missing.items())
            + f" (see {run.run_dir / DOIT_LOG})")


def _accept(run: Run, artifacts: Path, progress: Callable[[str], None]) -> None:
    """An accepted run's models become the next run's latency references."""
    try:
        accept_references(Layout(run.run_dir), Layout(artifacts).accepted_references_dir())
    except OSError as exc:
        progress(f"references not kept for the next run: {exc}")


def _commit(run: Run, record: dict[str, Any], db_timeout_s: float,
            progress: Callable[[str], None]) -> str | None:
    """Write the run's row; None when it is in the database, else why not (its figures stay
    in record.json for the next nightly)."""
    assert run.db is not None
    progress(f"writing run {run.run_id} to {run.db.path} (waits up to {db_timeout_s:.0f} s "
             "for a busy database)")
    try:
        history.finish_run(run.db, **{k: v for k, v in record.items()}, timeout_s=db_timeout_s)
        run.recorded = True
    except history.HistoryError as exc:
        return (f"run {run.run_id} is not in the history database yet: {exc}; its figures "
                f"are kept in {run.run_dir / history.PENDING} and the next nightly records them")
    return None


def _inputs_and_repro(run: Run, params: Params, boards: Sequence[Board], code: str,
                      build_params: dict[str, Any]
                      ) -> tuple[dict[str, Any], str, dict[str, str], dict[str, Any]]:
    """(dataset hashes, the hash of every input, the artifacts' hashes, the reproducibility
    verdict against the previous run's manifest)."""
    assert run.db is not None and run.run_id is not None
    datasets = dataset_hashes(run.run_dir, params.datasets, params.dataset_specs())
    inputs_hash = canonical_hash({"params": build_params, "code": code, "datasets": datasets,
                                  "models": user_model_hashes(params)})
    artifacts_now = artifact_hashes(run.run_dir)
    repro = reproducibility(artifacts_now, inputs_hash, _previous_manifest(run.db, run.run_id),
                            [b.name for b in boards])
    repro["summary"] += unstable_names_note(run.run_dir, [b.name for b in params.builds])
    return datasets, inputs_hash, artifacts_now, repro


def _board_lines(run_dir: Path, board_rows: Sequence[dict], latency: Sequence[dict]
                 ) -> list[str]:
    """One progress line per board: its status, cases, failures and NO RUNTIME rows."""
    lines = []
    for b in board_rows:
        cases = [c for c in latency if c["board"] == b["board"]]
        bad = sum(c["status"] != "ok" for c in cases)
        no_runtime = history.no_runtime_rows(run_dir, b["board"])
        lines.append(f"board {b['board']}: {b['status']}, {len(cases)} case(s)"
                     + (f", {bad} failed" if bad else "")
                     + (f", {no_runtime} row(s) NO RUNTIME (see latency.md)" if no_runtime
                        else "")
                     + (f": {clean_text(b['error'])}" if b["error"] else ""))
    return lines


def _verdict(run_id: int, outcome: str, message: str | None, breaches: Sequence[dict],
             unrecorded: str | None, t0: float, log: Callable[[str], None]) -> int:
    """The run's last lines (failure, each breach, not recorded, the outcome) and its exit
    status."""
    if outcome == "failed":
        log(f"NIGHTLY FAILED: {message}")
    for b in breaches:
        log(f"GATE BREACHED: {b['message']}")
    if unrecorded:
        log(f"NOT RECORDED: {unrecorded}")
    log(f"nightly run {run_id}: {outcome.upper()}{' (NOT RECORDED)' if unrecorded else ''}"
        f", total wall time {time.monotonic() - t0:.1f} s")
    if unrecorded:
        return EXIT_UNRECORDED
    return EXIT_FAILED if outcome == "failed" else (EXIT_BREACHED if breaches else 0)


def _unwritable(run: Run, target: Path, exc: OSError | DiskFullError, t0: float,
                log: Callable[[str], None], db_timeout_s: float) -> int:
    """The run's files could not be written: record it as failed, naming the file."""
    assert run.db is not None and run.run_id is not None
    free = shutil.disk_usage(target.parent).free if target.parent.exists() else 0
    reason = exc.strerror if isinstance(exc, OSError) else os.strerror(errno.ENOSPC)
    message = (f"could not write {target}: {reason} ({free // 2**20} MiB free there; "
               "free some space and run the nightly again)")
    try:
        history.finish_run(run.db, run.run_id, "failed", utc_now(), time.monotonic() - t0,
                           message=message, timeout_s=db_timeout_s)
        run.recorded = True
        what = "recorded as failed"
    except history.HistoryError as db_exc:
        what = f"not recorded either: {db_exc}"
    log(f"NIGHTLY FAILED: {message}")
    log(f"nightly run {run.run_id}: FAILED ({what}), total wall time "
        f"{time.monotonic() - t0:.1f} s")
    return EXIT_FAILED


def _prune(run: Run, params: Params, progress: Callable[[str], None]) -> None:
    assert run.db is not None
    try:
        runs = history.run_dirs(run.db)
    except history.HistoryError as exc:
        progress(f"old run directories not pruned: {exc}")
        return
    for path in prune(run.run_dir.parent, params.nightly.keep_runs, run.run_dir, runs):
        progress(f"removed old run directory {path} (keep_runs = {params.nightly.keep_runs})")


def _terminated(run: Run, sig: signal.Signals, params: Params, artifacts: Path, t0: float,
                log: Callable[[str], None], progress: Callable[[str], None]) -> int:
    """After SIGTERM/SIGINT: stop doit, and make the files and the database say that THIS run
    failed and why (record.json first, so a database that cannot be written now gets it from
    the next nightly), unless the database already has its final row."""
    stop_child(run.child)
    run.child = None
    message = f"terminated by {sig.name} during {run.stage}"
    if not run.locked:  # the reports belong to whichever nightly holds the locks
        log(f"nightly {message}, before it held the locks: nothing was run")
        return 128 + sig.value
    if run.recorded:
        log(f"nightly {message}; run {run.run_id} was already recorded")
        return 128 + sig.value
    if run.run_dir.is_dir():
        remove_partials(run.run_dir)
    ended, wall = utc_now(), time.monotonic() - t0
    what = "not recorded (it had not started)"
    empty = history.as_figures([], [], [])
    try:
        if run.run_id is not None:
            record = history.run_record(run.run_id, "failed", ended, wall, message=message)
            history.keep_pending(run.run_dir, record)
            write_json(run.run_dir / MANIFEST_JSON, {
                **run.manifest, "run_id": run.run_id, "status": "failed", "message": message,
                "started_utc": run.started_utc, "ended_utc": ended, "wall_s": wall,
                "tasks": task_times(run.events)})
        nightly_report.write_reports(_row(run, "failed", ended, wall, message), empty,
                                     _assess(run.db, run.run_id, empty, params, True),
                                     params.nightly, Layout(artifacts).reports_dir())
    except OSError as exc:
        log(f"error: could not write {exc.filename or 'the reports'}: {exc.strerror}")
    except DiskFullError as exc:
        log(f"error: {exc}")
    if run.run_id is not None and run.db is not None:
        try:
            history.finish_run(run.db, run.run_id, "failed", ended, wall, message=message,
                               timeout_s=TERMINATED_DB_TIMEOUT_S)
            what = "recorded as failed"
            _prune(run, params, progress)
        except history.HistoryError as exc:
            what = (f"kept as failed in {run.run_dir / history.PENDING} for the next nightly "
                    f"({exc})")
    log(f"nightly {message}; run {run.run_id} {what} after {time.monotonic() - t0:.1f} s")
    return 128 + sig.value


def _previous_manifest(db: history.HistoryDB, run_id: int) -> dict[str, Any] | None:
    try:
        earlier = history.completed_runs(db, 1, run_id - 1)
    except history.HistoryError:
        return None  # the record step says what is wrong with the database
    if not earlier:
        return None
    try:
        manifest = json.loads((Path(earlier[-1]["run_dir"]) / MANIFEST_JSON).read_text())
    except (OSError, ValueError):
        return None  # pruned (keep_runs) or never written
    return manifest if isinstance(manifest, dict) else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 ok, 1 gate breached, 2 run failed, 3 not recorded (the "
               "database was busy or broken; the next nightly records it), 75 another "
               "nightly is running, 143/130 terminated by SIGTERM/SIGINT. See "
               "docs/nightly.md.")
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="project root holding dodo.py (default: .)")
    parser.add_argument("--db", type=Path, help="history database "
                        "(default: <artifacts>/history.sqlite)")
    parser.add_argument("--db-timeout", type=float, default=history.WRITE_TIMEOUT_S,
                        metavar="SECONDS", help="how long to wait for a history database "
                        f"another connection holds (default {history.WRITE_TIMEOUT_S:.0f})")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE;...",
                        help=f"a one-off params override (default: ${OVERRIDE_ENV}), passed "
                        "on to the build")
    args = parser.parse_args(argv)
    if not 0 <= args.db_timeout <= 3600:
        parser.error("--db-timeout must be between 0 and 3600 seconds")
    project = args.project.resolve()
    env = dict(os.environ)
    if args.set is not None:
        env[OVERRIDE_ENV] = args.set

    def from_env(name: str, default: str) -> Path:
        path = Path(env.get(name) or default)
        return path if path.is_absolute() else project / path

    artifacts = from_env("PIPELINE_ARTIFACTS", "artifacts")
    db = args.db if args.db is None or args.db.is_absolute() else Path.cwd() / args.db
    sys.exit(nightly(project, artifacts, from_env("PIPELINE_PARAMS", "params.toml"),
                     from_env("PIPELINE_BOARDS", "board/boards.toml"),
                     db or Layout(artifacts).history_db(), env,
                     log=lambda line: print(line, flush=True), db_timeout_s=args.db_timeout))


if __name__ == "__main__":
    main()
