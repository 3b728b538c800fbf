"""Nightly regeneration: rebuild everything from scratch in its own run directory, record it.

    python -m pipeline.nightly            # from the project root, like `doit`

One run: take the lock (artifacts/nightly.lock), make artifacts/nightly/<UTC stamp>/, seed
its dataset cache with hard links to artifacts/data/<dataset>/raw (the download task then
re-verifies every archive by checksum and fetches only what is missing or bad), run the real
doit graph there (`doit --continue`, then `doit --continue bench` for every board in the
inventory) with PIPELINE_ARTIFACTS pointing at the run directory, then record
the figures in the history database, write manifest.json, reports/nightly.{md,json,png},
apply the [nightly] gates and prune old run directories.

Why a module and not a `doit nightly` task: the nightly must ignore doit's up-to-date checks
and must not touch artifacts/.doit.db. A doit task would run inside the normal build's doit
process and database; a separate process pointing doit at the run directory gets a database
of its own for free, runs the graph exactly as `doit` does, and can own the lock, SIGTERM
handling and the exit status.

Exit status: 0 all gates pass; 1 a gate is breached (a failed board is one); 2 the run
failed (a stage did not produce its report, or bad params); 75 another nightly holds the
lock; 143 terminated by SIGTERM (130 by SIGINT). Environment as for doit: PIPELINE_PARAMS,
PIPELINE_ARTIFACTS, PIPELINE_BOARDS, PIPELINE_MIRROR, PIPELINE_OFFLINE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline import PipelineError, history, nightly_report
from pipeline.boards import Board, load_boards
from pipeline.datasets import DATASETS
from pipeline.files import sha256_file, write_json
from pipeline.layout import NIGHTLY_MD, Layout
from pipeline.params import Params, ParamsError, load_params

# doit's default tasks (the whole build, as dodo.py declares it), then `bench` for every board
# in the inventory; both against the run directory's own database.
DOIT_RUNS = (("--continue",), ("--continue", "bench"))
PACKAGES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",),
            "ai-edge-litert": ("ai-edge-litert",), "numpy": ("numpy",), "doit": ("doit",)}
# Files whose bytes measure something (seconds, latencies), name the run directory or follow
# the board inventory (not an input of the models): they are hashed like everything else,
# but a difference there says nothing about reproducibility.
EXPECTED_TO_DIFFER = ("models/*/history.json", "reports/*", "reports/*/*", "reports/*/*/*",
                      "bench/*/plan.json")
NOT_ARTIFACTS = (".doit.db", "doit.log", "manifest.json")
EXIT_BREACHED, EXIT_FAILED, EXIT_LOCKED = 1, 2, 75  # 128 + signal number when terminated


class NightlyLocked(PipelineError):
    pass


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler, with the signal number
    (BaseException: no `except Exception` on the way may swallow it)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the lock ---------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if unknown.

    Stored in the lock with the PID, so that a PID reused by another process after a crash
    or a reboot is not mistaken for a running nightly.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22, counted after "(comm)"


def lock_holder_alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    ticks = process_start_ticks(pid)
    return ticks is None or holder.get("start_ticks") in (None, ticks)


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content; {} if unreadable (stale), None if the file is gone."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def acquire_lock(path: Path, info: dict[str, Any], log: Callable[[str], None]) -> None:
    """Take the lock, or raise NightlyLocked naming the running nightly; a stale lock (its
    process is gone) is taken over.

    The lock is created whole: its content goes to a private file that is then hard-linked
    to the lock's name, which fails if the lock exists (an exclusive create, like O_EXCL,
    but no other nightly can ever read a half-written lock and think it stale).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = path.with_name(f".{path.name}.{os.getpid()}")
    mine.write_text(json.dumps(info))
    try:
        for _ in range(5):
            try:
                os.link(mine, path)
                return
            except FileExistsError:
                pass
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile: try again
            if lock_holder_alive(holder):
                raise NightlyLocked(
                    f"another nightly is running: PID {holder['pid']}, started "
                    f"{holder.get('started_utc', '?')} (run directory "
                    f"{holder.get('run_dir', '?')}); lock file {path}")
            # Move the stale lock aside (atomic: of two nightlies taking it over, one moves
            # it); if what was moved is a live lock that replaced the stale one meanwhile,
            # put it back and let the next round refuse.
            aside = path.with_name(f".{path.name}.stale.{os.getpid()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside) or {}
            if lock_holder_alive(moved):
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
            else:
                log(f"stale lock {path} from PID {holder.get('pid', '?')} (started "
                    f"{holder.get('started_utc', '?')}) whose process is gone: taking it over")
            aside.unlink(missing_ok=True)
        raise NightlyLocked(f"could not take the lock {path}: it keeps changing hands")
    finally:
        mine.unlink(missing_ok=True)


def release_lock(path: Path) -> None:
    """Remove the lock if it is still this process's (a takeover may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass  # gone or unreadable: not ours to remove


# --- provenance ---------------------------------------------------------------------------


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_hash(project: Path) -> str:
    """SHA-256 over the code that makes the artifacts: pipeline/*.py, board/runner.py, dodo.py."""
    files = sorted([*(project / "pipeline").glob("*.py"), project / "board" / "runner.py",
                    project / "dodo.py"])
    return canonical_hash({str(f.relative_to(project)): sha256_file(f) for f in files})


def git_state(project: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty); dirty = tracked files modified (untracked files do not count:
    artifacts/ lives in the tree). (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(project), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name, distributions in PACKAGES.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = f"{metadata.version(dist)} ({dist})"
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def machine() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines()
                  if line.startswith(("model name", "uarch", "Model"))), platform.processor())
    return {"cpu_model": model or "unknown", "cores": os.cpu_count(),
            "arch": platform.machine(), "system": platform.platform(),
            "hostname": platform.node()}


def dataset_hashes(run_dir: Path, datasets: Sequence[str],
                   specs: Mapping[str, Any] = DATASETS) -> dict[str, dict[str, str | None]]:
    """SHA-256 of each archive's decompressed payload (None where the file is missing);
    `specs`: the registry, with the params file's declared datasets."""
    from pipeline.download import DownloadError, payload_sha256

    out: dict[str, dict[str, str | None]] = {}
    for name in datasets:
        out[name] = {}
        for remote in specs[name].files:
            try:
                out[name][remote.name] = payload_sha256(Layout(run_dir).raw_dir(name) /
                                                        remote.name)
            except DownloadError:
                out[name][remote.name] = None
    return out


def user_model_hashes(params: Any) -> dict[str, str]:
    """SHA-256 of each build's own model file (their .py, module or saved model): an input
    like the code, so editing it is a change of inputs, not an unreproducible artifact."""
    out = {}
    for build in params.builds:
        source = params.model_source(build.name)
        if source.file is not None and Path(source.file).is_file():
            out[build.name] = sha256_file(source.file)
    return out


def unstable_names_note(run_dir: Path, builds: Sequence[str]) -> str:
    """"; <build>: layer names depend on ..." for each build whose train stage found its
    layer names differing between two calls (history.json), else ""."""
    notes = []
    for build in builds:
        try:
            record = json.loads(Layout(run_dir).history_json(build).read_text())
        except (OSError, ValueError):
            continue
        if record.get("layer_names_stable") is False:
            notes.append(f"{build}: its layer names depend on what the process built before, "
                         "so its .h5/.tflite bytes are not reproducible (give every layer an "
                         "explicit name=; README: Bring your own model)")
    return "".join(f"; {note}" for note in notes)


def artifact_hashes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file doit produced in the run directory."""
    out = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if rel in NOT_ARTIFACTS or rel.startswith(".doit.db") or ".partial" in path.name:
            continue
        out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def reproducibility(artifacts: dict[str, dict[str, Any]], inputs_hash: str,
                    previous: dict[str, Any] | None) -> dict[str, Any]:
    """Mark each artifact identical (or not) to the previous run's, when the inputs (params
    that shape artifacts, code, dataset) are unchanged; summarise the verdict."""
    from fnmatch import fnmatch

    if previous is None:
        for a in artifacts.values():
            a["identical_to_previous"] = None
        return {"comparable": False, "previous_run": None,
                "summary": "no previous run manifest to compare with"}
    if previous.get("inputs_hash") != inputs_hash:
        for a in artifacts.values():
            a["identical_to_previous"] = None
        return {"comparable": False, "previous_run": previous.get("run_id"),
                "summary": f"inputs changed since run {previous.get('run_id')} (params, code "
                           "or dataset): artifacts are not expected to be identical"}
    before = previous.get("artifacts", {})
    unexpected, expected, new, same = [], [], [], 0
    for rel, a in artifacts.items():
        if rel not in before:  # e.g. a board added to the inventory since
            a["identical_to_previous"] = None
            new.append(rel)
            continue
        a["identical_to_previous"] = before[rel]["sha256"] == a["sha256"]
        if a["identical_to_previous"]:
            same += 1
        elif any(fnmatch(rel, pattern) for pattern in EXPECTED_TO_DIFFER):
            expected.append(rel)
        else:
            unexpected.append(rel)
    missing = sorted(set(before) - set(artifacts))
    ok = not unexpected and not missing
    summary = (f"{'REPRODUCIBLE' if ok else 'NOT REPRODUCIBLE'}: {same} of "
               f"{len(artifacts) - len(new)} artifacts byte-identical to run "
               f"{previous.get('run_id')} (inputs unchanged)")
    if unexpected or missing:
        summary += f"; differing: {', '.join(unexpected + missing)}"
    if expected:
        summary += (f"; {len(expected)} measurement file(s) differ as expected (timings, "
                    "run-directory paths, board settings)")
    if new:
        summary += f"; {len(new)} file(s) new in this run"
    return {"comparable": True, "previous_run": previous.get("run_id"), "reproducible": ok,
            "identical": same, "differing": unexpected, "missing": missing, "new": new,
            "differing_as_expected": expected, "summary": summary}


# --- running ------------------------------------------------------------------------------


def run_stamp(moment: dt.datetime, parent: Path) -> Path:
    """artifacts/nightly/<UTC stamp>; a suffix if a run of the same second exists."""
    base = moment.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = parent / base, 1
    while candidate.exists():
        candidate, n = parent / f"{base}-{n}", n + 1
    return candidate


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


def prune(nightly_dir: Path, keep: int, current: Path) -> list[Path]:
    """Delete the oldest run directories beyond `keep` (never the current one)."""
    runs = sorted(p for p in nightly_dir.iterdir() if p.is_dir())
    doomed = [p for p in runs[:-keep] if p != current] if len(runs) > keep else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def run_graph(project: Path, run_dir: Path, env: dict[str, str],
              progress: Callable[[str], None],
              started: Callable[[subprocess.Popen], None]) -> int:
    """Run the whole doit graph for `run_dir` (see DOIT_RUNS); log everything to
    run_dir/doit.log and print a line per stage and per task (each board is a task).
    Returns the worst doit exit status."""
    stage, worst = None, 0
    with open(run_dir / "doit.log", "w", encoding="utf-8") as log:
        for args in DOIT_RUNS:
            child = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
            started(child)
            progress(f"doit {' '.join(args)} started (PID {child.pid}), full log: "
                     f"{run_dir / 'doit.log'}")
            assert child.stdout is not None
            for line in child.stdout:
                log.write(line)
                log.flush()
                if line.startswith(".  "):
                    task = line[3:].strip()
                    if task.split(":")[0] != stage:
                        stage = task.split(":")[0]
                        progress(f"stage {stage}")
                    progress(f"  {task}" + (" (board)" if stage == "bench" else ""))
                elif line.startswith(("TaskFailed", "TaskError")):
                    progress(f"  {line.strip()}")
            worst = max(worst, child.wait())
    return worst


def stop_child(child: subprocess.Popen | None) -> None:
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def nightly(project: Path, artifacts: Path, params_path: Path, boards_path: Path,
            db_path: Path, env: dict[str, str], log: Callable[[str], None] = print) -> int:
    """One nightly run; returns the exit status (see the module docstring)."""
    t0 = time.monotonic()

    def progress(message: str) -> None:
        log(f"[nightly {time.monotonic() - t0:7.1f} s] {message}")

    try:
        params: Params = load_params(params_path)
        boards: tuple[Board, ...] = load_boards(boards_path)
    except ParamsError as exc:
        log(f"error: {exc}")
        return EXIT_FAILED
    started = utc_now()
    nightly_dir = Layout(artifacts).nightly_dir()
    run_dir = run_stamp(started, nightly_dir)
    lock = Layout(artifacts).nightly_lock()
    child: list[subprocess.Popen] = []
    stage = ["setup"]

    def on_signal(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    # Installed before the lock is taken, so no signal can leave a lock behind. SIGINT
    # (Ctrl-C) too: an interactive nightly stopped by hand is recorded the same way.
    saved_handlers = {sig: signal.signal(sig, on_signal)
                      for sig in (signal.SIGTERM, signal.SIGINT)}
    db = None
    run_id: int | None = None
    try:
        try:
            acquire_lock(lock, {"pid": os.getpid(),
                                "start_ticks": process_start_ticks(os.getpid()),
                                "started_utc": iso(started), "run_dir": str(run_dir)}, progress)
        except NightlyLocked as exc:
            log(f"error: {exc}")
            return EXIT_LOCKED  # release_lock below leaves the holder's lock alone
        db = history.connect(db_path)
        for abandoned in history.fail_abandoned_runs(db, iso(utc_now())):
            progress(f"run {abandoned} was killed without recording its end: marked failed")
        run_dir.mkdir(parents=True)
        code = code_hash(project)
        build_params = {k: v for k, v in asdict(params).items() if k != "nightly"}
        commit, dirty = git_state(project)
        seeded = seed_datasets(artifacts, run_dir, params.datasets, params.dataset_specs())
        run_id = history.start_run(db, iso(started), commit, dirty,
                                   canonical_hash(asdict(params)), str(run_dir))
        progress(f"run {run_id} in {run_dir} ({seeded} cached archive(s) seeded; "
                 f"boards: {', '.join(b.name for b in boards) or 'none'})")
        child_env = {**env, "PIPELINE_ARTIFACTS": str(run_dir.resolve()),
                     "PIPELINE_PARAMS": str(params_path.resolve()),
                     "PIPELINE_BOARDS": str(boards_path.resolve())}
        stage[0] = "doit"
        status = run_graph(project, run_dir, child_env, progress, child.append)
        stage[0] = "record"
        progress(f"doit finished with exit status {status}; recording")

        builds = [b.name for b in params.builds]
        accuracy = history.read_accuracy(run_dir, builds)
        board_rows, latency = history.read_latency(run_dir, [b.name for b in boards])
        for b in board_rows:
            cases = [c for c in latency if c["board"] == b["board"]]
            bad = sum(c["status"] != "ok" for c in cases)
            progress(f"board {b['board']}: {b['status']}, {len(cases)} case(s)"
                     + (f", {bad} failed" if bad else "") + (f": {b['error']}" if b["error"]
                                                            else ""))
        missing = [b for b in builds if not any(r["build"] == b for r in accuracy)]
        datasets = dataset_hashes(run_dir, params.datasets, params.dataset_specs())
        inputs_hash = canonical_hash({"params": build_params, "code": code,
                                      "datasets": datasets, "models": user_model_hashes(params)})
        artifacts_now = artifact_hashes(run_dir)
        previous = _previous_manifest(db, run_id)
        repro = reproducibility(artifacts_now, inputs_hash, previous)
        repro["summary"] += unstable_names_note(run_dir, builds)
        current = history.as_figures(accuracy, board_rows, latency)
        assessment = nightly_report.assess(db, run_id, current, params.nightly)
        found = assessment["breaches"]
        outcome = "failed" if missing else ("breached" if found else "ok")
        message = (f"no accuracy report for {', '.join(missing)} (see {run_dir}/doit.log)"
                   if missing else None)
        ended = utc_now()
        wall = time.monotonic() - t0
        history.finish_run(db, run_id, outcome, iso(ended), wall, accuracy, board_rows,
                           latency, message, inputs_hash)
        run_row = dict(db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
        nightly_report.write_reports(run_row, current, assessment, params.nightly,
                                     Layout(artifacts).reports_dir(), repro)
        write_json(run_dir / "manifest.json", {
            "run_id": run_id, "status": outcome, "started_utc": iso(started),
            "ended_utc": iso(ended), "wall_s": wall, "doit_exit_status": status,
            "git": {"commit": commit, "dirty": dirty}, "python": sys.version,
            "packages": package_versions(), "machine": machine(), "datasets": datasets,
            "params": asdict(params), "params_hash": canonical_hash(asdict(params)),
            "inputs_hash": inputs_hash, "code_hash": code,
            "boards": [b.settings() for b in boards], "artifacts": artifacts_now,
            "reproducibility": repro})
        for path in prune(nightly_dir, params.nightly.keep_runs, run_dir):
            progress(f"removed old run directory {path} (keep_runs = "
                     f"{params.nightly.keep_runs})")
        progress(f"reports: {Layout(artifacts).reports_dir() / NIGHTLY_MD}, manifest: "
                 f"{run_dir / 'manifest.json'}")
        progress(repro["summary"])
        if missing:
            log(f"NIGHTLY FAILED: {message}")
        for b in found:
            log(f"GATE BREACHED: {b['message']}")
        log(f"nightly run {run_id}: {outcome.upper()}, total wall time "
            f"{time.monotonic() - t0:.1f} s")
        return EXIT_FAILED if missing else (EXIT_BREACHED if found else 0)
    except Terminated as exc:
        for sig in saved_handlers:  # a second signal must not interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(exc.args[0]).name
        stop_child(child[-1] if child else None)
        if db is not None and run_id is not None:
            history.finish_run(db, run_id, "failed", iso(utc_now()), time.monotonic() - t0,
                               message=f"terminated by {name} during {stage[0]}")
        log(f"nightly terminated by {name} during {stage[0]}; run {run_id} recorded as "
            f"failed after {time.monotonic() - t0:.1f} s")
        return 128 + exc.args[0]
    finally:
        stop_child(child[-1] if child else None)
        if db is not None:
            db.close()
        release_lock(lock)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)


def _previous_manifest(db: Any, run_id: int) -> dict[str, Any] | None:
    earlier = history.completed_runs(db, 1, run_id - 1)
    if not earlier:
        return None
    try:
        return json.loads((Path(earlier[0]["run_dir"]) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # pruned (keep_runs) or never written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 ok, 1 gate breached, 2 run failed, 75 another nightly is "
               "running, 143/130 terminated by SIGTERM/SIGINT. See README.md, Nightly "
               "regeneration.")
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="project root holding dodo.py (default: .)")
    parser.add_argument("--db", type=Path, help="history database "
                        "(default: <artifacts>/history.sqlite)")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    env = dict(os.environ)

    def from_env(name: str, default: str) -> Path:
        path = Path(env.get(name) or default)
        return path if path.is_absolute() else project / path

    artifacts = from_env("PIPELINE_ARTIFACTS", "artifacts")
    sys.exit(nightly(project, artifacts, from_env("PIPELINE_PARAMS", "params.toml"),
                     from_env("PIPELINE_BOARDS", "board/boards.toml"),
                     args.db or Layout(artifacts).history_db(), env,
                     log=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
