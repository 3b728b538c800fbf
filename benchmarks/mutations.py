"""Realistic breaks of the nightly, its lock, provenance, history and report, for
benchmarks/mutate.py (`Case` is provided by it). Each names the tests of its own module; the
nightly's are its fast ones (unit tests first, then the stand-in runs; not the slow real-build
sequence), so a survival here is an upper bound.

Keep a case when its snippet changes: update the snippet, never drop a killed case.
"""

H = ("tests/test_history.py",)
R = ("tests/test_nightly_report.py",)
L = ("tests/test_nightly_lock.py",)
P = ("tests/test_nightly_provenance.py",)
T = ("tests/test_nightly_retention.py",)
N_UNIT = tuple(f"tests/test_nightly.py::{t}" for t in (
    "test_expected_reports_follow_every_stage_and_variant",
    "test_stop_child_interrupts_doits_whole_process_group_first_then_kills_it",
    "test_a_run_killed_after_its_reports_is_failed_in_manifest_and_reports_too"))


def n(*tests: str) -> tuple[str, ...]:
    """The nightly's unit tests, then the named stand-in runs (each needs the smoke build)."""
    return N_UNIT + tuple(f"tests/test_nightly.py::test_{t}" for t in tests)


READER = "a_reader_holding_the_database_at_the_record_step_loses_nothing"
SIGTERM_READER = "sigterm_while_a_reader_holds_the_database_exits_143_at_once_and_says_failed"
SIGTERM_DOIT = "sigterm_during_doit_writes_failed_reports_removes_partials_and_prunes"
SIGKILL = "after_a_sigkill_doit_dies_at_once_and_never_writes_into_the_run_directory"
TWO_TREES = "two_artifact_trees_sharing_one_database_never_run_together"
N = n()

CASES = [
    # --- pipeline/history.py
    Case("pipeline/history.py", '"ORDER BY id DESC LIMIT ?",\n', '"ORDER BY id ASC LIMIT ?",\n',
         H, "completed_runs picks the oldest runs"),
    Case("pipeline/history.py", "AND id <= ? ", "AND id < ? ", H,
         "completed_runs excludes up_to"),
    Case("pipeline/history.py", 'if _valid_record(pending, row["id"]):',
         "if isinstance(pending, dict):", H, "any record.json is trusted"),
    Case("pipeline/history.py",
         'if not isinstance(record, dict) or record.get("run_id") != run_id:',
         "if not isinstance(record, dict):", H, "a record of another run is trusted"),
    Case("pipeline/history.py",
         'if ("locked" in text or "busy" in text) and time.monotonic() < deadline:',
         "if False:", H, "no retry while the database is held"),
    Case("pipeline/history.py", "timeout=0.1, isolation_level=None",
         "timeout=30, isolation_level=None", H,
         "each attempt waits 30 s inside SQLite (signals wait too)"),
    Case("pipeline/history.py", '    if "malformed" in text:\n',
         '    if "malformed" in text and False:\n', H, "a damaged file gets the generic message"),
    Case("pipeline/history.py", "        db = connect_reader(args.db)\n",
         "        db = connect(args.db)\n", H, "the history CLI opens the database for writing"),
    Case("pipeline/history.py", "WHERE status = 'running'\"\n", "WHERE status != 'ok'\"\n", H,
         "settle touches finished runs"),
    Case("pipeline/history.py", "    return {k: (v if k not in NUMERIC",
         "    return dict(row)\n    return {k: (v if k not in NUMERIC", H,
         "a malformed value reaches the report"),
    Case("pipeline/history.py", "not any(r[key] == wanted for r in rows):",
         'not any(r[key] in (wanted, "") for r in rows):', H,
         "--build nope matches a failed run's row"),
    Case("pipeline/history.py", "    if not 1 <= value <= MAX_LAST:",
         "    if not 0 <= value <= MAX_LAST:", H, "--last 0 accepted"),
    Case("pipeline/history.py", 'ok = doc.get("status") == "ok"',
         'ok = doc.get("status") != "failed"', H, "a running board counts as ok"),
    Case("pipeline/history.py",
         "    if missing:\n        what = ", "    if False:\n        what = ",
         H, "a foreign database is accepted"),
    Case("pipeline/history.py",
         '                if db.in_transaction:\n                    db.execute("ROLLBACK")',
         "                pass", H, "a failed write is not rolled back"),
    # --- pipeline/nightly_report.py
    Case("pipeline/nightly_report.py",
         "    previous = earlier[-1] if earlier else None\n    figs =",
         "    previous = earlier[0] if earlier else None\n    figs =", R,
         "assess compares with the oldest run"),
    Case("pipeline/nightly_report.py", 'r["accuracy"] < floor', 'r["accuracy"] <= floor', R,
         "accuracy floor at the threshold"),
    Case("pipeline/nightly_report.py", '-r["drift_pt"] > params.max_int8_drift_pt',
         '-r["drift_pt"] >= params.max_int8_drift_pt', R, "drift at the threshold"),
    Case("pipeline/nightly_report.py", "change > params.max_latency_regression_pct:",
         "change >= params.max_latency_regression_pct:", R, "latency at the threshold"),
    Case("pipeline/nightly_report.py", "statistics.median(present)", "statistics.mean(present)",
         R, "mean instead of median"),
    Case("pipeline/nightly_report.py",
         'dropped = sorted(set((previous or {}).get("boards", {})) - set(current["boards"]))',
         "dropped = []", R, "a dropped board vanishes from the table"),
    Case("pipeline/nightly_report.py",
         '        if r["status"] == "dropped":\n            continue\n',
         "", R, "a dropped board's rows are failed cases"),
    Case("pipeline/nightly_report.py", "FAILED: {escape_md(b['error'])}\")",
         "FAILED: {b['error']}\")", R, "board error unescaped in nightly.md"),
    Case("pipeline/nightly_report.py", '    if run["status"] == "failed":\n', "    if False:\n", R,
         "a failed run shows the tables"),
    Case("pipeline/nightly_report.py",
         '"int8": "min_accuracy_int8",\n            "float": "min_accuracy_float32"}',
         '"int8": "min_accuracy_float32",\n            "float": "min_accuracy_int8"}', R,
         "floors swapped"),
    Case("pipeline/nightly_report.py", '        if b["status"] == "failed":\n            breach(',
         '        if b["status"] != "ok":\n            breach(', R, "a dropped board is a breach"),
    Case("pipeline/nightly_report.py", "    if failed:\n        comparison =",
         "    if False:\n        comparison =", R, "a failed run is gated"),
    # --- pipeline/nightly_lock.py
    Case("pipeline/nightly_lock.py",
         "fcntl.LOCK_EX | fcntl.LOCK_NB", "fcntl.LOCK_SH | fcntl.LOCK_NB",
         L, "a shared lock: two holders"),
    Case("pipeline/nightly_lock.py", "os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW",
         "os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW", L,
         "a refused nightly wipes the holder's details"),
    Case("pipeline/nightly_lock.py", "os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC",
         "os.O_CREAT | os.O_CLOEXEC", L, "a symlink at the lock path is followed"),
    Case("pipeline/nightly_lock.py", "    try:\n        os.ftruncate(fd, 0)\n    except OSError:\n"
         "        pass\n", "", L, "a released lock still names its holder"),
    Case("pipeline/nightly_lock.py", "    os.ftruncate(fd, 0)\n    os.pwrite", "    os.pwrite", L,
         "old content left behind the new details"),
    Case("pipeline/nightly_lock.py", '    if not isinstance(holder, dict) or "pid" not in holder:',
         "    if not isinstance(holder, dict):", L, "details without a PID shown as PID None"),
    Case("pipeline/nightly_lock.py", "    except IsADirectoryError:\n",
         "    except NotADirectoryError:\n", L, "a directory at the lock path is a vague error"),
    # --- pipeline/nightly_provenance.py
    Case("pipeline/nightly_provenance.py", "ok = not unexpected and not missing",
         "ok = not unexpected", P, "missing files still reproducible"),
    Case("pipeline/nightly_provenance.py",
         "(dropped if any(board_files(rel, b) for b in gone_boards) else missing)", "missing", P,
         "a dropped board's files are missing"),
    Case("pipeline/nightly_provenance.py",
         'rel.startswith(f"{layout.bench_dir(board).as_posix()}/")',
         'rel.startswith(f"{layout.bench_dir(board).as_posix()}")', P,
         "board k10's files belong to k1"),
    Case("pipeline/nightly_provenance.py", '"models/*/history.json", ', "", P,
         "training seconds counted as a difference"),
    Case("pipeline/nightly_provenance.py", ' \\\n                or ".partial" in path.name:', ":", P,
         "temporary files hashed"),
    Case("pipeline/nightly_provenance.py", "            same += 1\n", "            pass\n", P,
         "identical files not counted"),
    Case("pipeline/nightly_provenance.py", 'project / "board" / "runner.py",', "", P,
         "the runner is not code"),
    Case("pipeline/nightly_provenance.py", "json.dumps(obj, sort_keys=True",
         "json.dumps(obj, sort_keys=False", P, "hash depends on key order"),
    # --- pipeline/nightly_retention.py
    Case("pipeline/nightly_retention.py", "    kept = set(completed[-keep:])",
         "    kept = set(completed[:keep])", T, "retention keeps the oldest runs"),
    Case("pipeline/nightly_retention.py",
         '    completed = [r["id"] for r in runs if r["status"] in history.COMPLETED]',
         '    completed = [r["id"] for r in runs]', T, "failed runs count toward keep_runs"),
    Case("pipeline/nightly_retention.py",
         "                or path.is_symlink() or not path.is_dir()\n",
         "                or not path.is_dir()\n", T, "a symlink is pruned"),
    Case("pipeline/nightly_retention.py",
         "    kept |= set(failed[-keep:])", "    kept |= set(failed)",
         T, "failed run directories kept for ever"),
    Case("pipeline/nightly_retention.py", "    while candidate.exists() or candidate.is_symlink():",
         "    while candidate.exists():", T, "a dangling link's name is reused"),
    Case("pipeline/nightly_retention.py", 'rglob(".*.partial*")', 'rglob("*.partial*")', T,
         "a user's file named *.partial* is removed"),
    # --- pipeline/nightly.py
    Case("pipeline/nightly.py", "*layout.analysis_outputs(b), *layout.layers_outputs(b),",
         "*layout.analysis_outputs(b),", N, "a missing layers report goes unnoticed"),
    Case("pipeline/nightly.py", "    if unrecorded:\n        return EXIT_UNRECORDED\n", "",
         n(READER), "an unrecorded run exits 0"),
    Case("pipeline/nightly.py", "(pending, lambda: history.keep_pending(run.run_dir, record))",
         "(pending, lambda: None)", n(READER), "figures not kept in record.json"),
    Case("pipeline/nightly.py", "{time.monotonic() - t0:.1f} s\")\n    return 128 + sig.value",
         "{time.monotonic() - t0:.1f} s\")\n    return EXIT_FAILED", n(SIGTERM_DOIT),
         "SIGTERM exit status"),
    Case("pipeline/nightly.py",
         "    if run.run_dir.is_dir():\n        remove_partials(run.run_dir)\n",
         "", n(SIGTERM_DOIT), "SIGTERM leaves .partial files"),
    Case("pipeline/nightly.py", "        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG",
         "        pass", n(SIGKILL), "doit outlives a killed nightly"),
    Case("pipeline/nightly.py",
         "    if child is None or child.poll() is not None:\n        return\n",
         "    return\n", n(SIGTERM_DOIT), "SIGTERM leaves doit running"),
    Case("pipeline/nightly.py", "                               timeout_s=TERMINATED_DB_TIMEOUT_S)",
         "                               timeout_s=history.WRITE_TIMEOUT_S)", n(SIGTERM_READER),
         "SIGTERM waits the whole database timeout"),
    Case("pipeline/nightly.py", "    lock_paths = sorted({Layout(artifacts).nightly_lock(),\n"
         '                         db_path.with_name(db_path.name + ".lock")})',
         "    lock_paths = [Layout(artifacts).nightly_lock()]", n(TWO_TREES),
         "the lock does not cover the database"),
    Case("pipeline/nightly.py", '                if "marked failed" in what:',
         "                if False:", n(SIGKILL), "a killed run's temporary files stay"),
    Case("pipeline/nightly.py",
         '                write_json(manifest, {**doc, "status": "failed", '
         '"message": row["message"]})',
         "                pass", N, "a killed run's manifest still says ok"),
    Case("pipeline/nightly.py",
         '            what = "recorded as failed"\n            _prune(run, params, progress)\n',
         '            what = "recorded as failed"\n', n(SIGTERM_DOIT),
         "SIGTERM'd runs never prune"),
]
