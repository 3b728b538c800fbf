"""History database of nightly runs (SQLite), and `python -m pipeline.history` to read it.

Schema (artifacts/history.sqlite unless --db says otherwise; times are UTC ISO 8601):

    runs      id, started_utc, ended_utc, status ('running' | 'ok' | 'failed' | 'breached'),
              commit_sha, dirty (0/1, NULL outside git), params_hash, inputs_hash,
              wall_s, run_dir, message
    accuracy  run_id, build, variant ('keras', 'float32', 'int8', ...),
              accuracy, agreement, drift_pt, bytes, train_s   -- per run x build x variant
    boards    run_id, board, status ('ok' | 'failed'), error, emulated (0/1: the board is
              an emulator, pipeline/virtual_k1/manage.py; its latency is gated by nothing)
                                                              -- per run x board
    latency   run_id, build, variant, board, threads,
              p50_us, p90_us, init_ms, status ('ok' | 'failed'), error,
              ratio, ratio_low, ratio_high, p_value, word, sha256, reference_sha256
              (the side-by-side verdict against the reference, pipeline/core/verdict.py;
              NULL when the case was timed alone)
                                                              -- per run x build x variant
                                                                 x board x threads

A run's row is inserted as 'running' when it starts; its figures and its final status are
written together in one transaction when it ends, so a reader never sees half a run. The
nightly keeps them in <run dir>/record.json first: when the database cannot be written then
(held by another connection past the timeout, read-only, disk full), the next nightly
records the run from that file. A run killed before it wrote the file stays 'running' until
the next nightly (which holds the database's lock, so nothing else can be running) marks it
'failed'.

This command, like `python -m pipeline.nightly.report`, opens the database read-only: it
never creates or changes anything in it. --last takes 1..1,000,000 runs; --build and
--board must name something the runs recorded.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline import PipelineError
from pipeline.core.files import write_json
from pipeline.core.layout import Layout
from pipeline.core.uptodate import bench_succeeded

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_utc TEXT NOT NULL,
    ended_utc TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'breached')),
    commit_sha TEXT,
    dirty INTEGER,
    params_hash TEXT,
    inputs_hash TEXT,
    wall_s REAL,
    run_dir TEXT,
    message TEXT
);
CREATE TABLE IF NOT EXISTS accuracy (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    build TEXT NOT NULL,
    variant TEXT NOT NULL,
    accuracy REAL,
    agreement REAL,
    drift_pt REAL,
    bytes INTEGER,
    train_s REAL,
    PRIMARY KEY (run_id, build, variant)
);
CREATE TABLE IF NOT EXISTS boards (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    board TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    emulated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, board)
);
CREATE TABLE IF NOT EXISTS latency (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    build TEXT NOT NULL,
    variant TEXT NOT NULL,
    board TEXT NOT NULL,
    threads INTEGER NOT NULL,
    p50_us REAL,
    p90_us REAL,
    init_ms REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    ratio REAL,
    ratio_low REAL,
    ratio_high REAL,
    p_value REAL,
    word TEXT,
    sha256 TEXT,
    reference_sha256 TEXT,
    PRIMARY KEY (run_id, build, variant, board, threads)
);
"""
TABLES = {"runs": {"id", "started_utc", "ended_utc", "status", "commit_sha", "dirty",
                   "params_hash", "inputs_hash", "wall_s", "run_dir", "message"},
          "accuracy": {"run_id", "build", "variant", "accuracy", "agreement", "drift_pt",
                       "bytes", "train_s"},
          "boards": {"run_id", "board", "status", "error", "emulated"},
          "latency": {"run_id", "build", "variant", "board", "threads", "p50_us", "p90_us",
                      "init_ms", "status", "error"}}
# Columns holding figures: a value of another type there (a hand-edited row) is no figure.
NUMERIC = {"accuracy", "agreement", "drift_pt", "bytes", "train_s", "p50_us", "p90_us",
           "init_ms", "wall_s", "ratio", "ratio_low", "ratio_high", "p_value"}
# Columns added after the first schema: an older database lacks them until the nightly's
# connect() adds them (a read-only reader sees their rows without them: callers use .get),
# and an older pending record.json lacks them (inserted with the default).
ADDED_COLUMNS = {("boards", "emulated"): "INTEGER NOT NULL DEFAULT 0",
                 # the side-by-side verdict (pipeline/core/verdict.py) and the bytes judged
                 ("latency", "ratio"): "REAL", ("latency", "ratio_low"): "REAL",
                 ("latency", "ratio_high"): "REAL", ("latency", "p_value"): "REAL",
                 ("latency", "word"): "TEXT", ("latency", "sha256"): "TEXT",
                 ("latency", "reference_sha256"): "TEXT"}
VERDICT_COLUMNS = {"ratio": "ratio", "ratio_low": "low", "ratio_high": "high", "p_value": "p",
                   "word": "word"}
FINAL_STATUSES = ("ok", "failed", "breached")
COMPLETED = ("ok", "breached")  # runs whose figures are whole and count for trends
# How long the nightly waits for a database that another connection holds (a sqlite3 shell
# left open, a notebook cursor) before keeping the figures in the run directory instead.
WRITE_TIMEOUT_S = 60.0
PENDING = "record.json"  # <run dir>/record.json: the figures, until the database has them
MAX_LAST = 1_000_000
T = TypeVar("T")


class HistoryError(PipelineError):
    """The history database cannot be used; the message names the file and what to do."""


class HistoryDB(sqlite3.Connection):
    """A connection that knows its file, so every error can name it."""
    path: Path


def explain(exc: sqlite3.Error, path: Path, waited_s: float | None = None) -> str:
    """One line naming `path`, what is wrong with it and what to do."""
    text = str(exc).lower()
    if "not a database" in text:
        return (f"{path} is not an SQLite database (another file, or overwritten): move it "
                f"aside (mv {path} {path}.bad) and the next nightly starts a new history")
    if "malformed" in text:
        return (f"{path} is damaged (truncated or corrupt): restore it from a backup, or move "
                f"it aside (mv {path} {path}.bad) and the next nightly starts a new history")
    if "locked" in text or "busy" in text:
        waited = f" (waited {waited_s:.0f} s)" if waited_s is not None else ""
        return (f"{path} is locked by another connection{waited}: close the sqlite3 shell, "
                "notebook or program holding it open, then retry")
    if "readonly" in text or "read-only" in text:
        return (f"{path} is read-only for this user: make it writable (chmod u+w {path} and "
                "its directory) or give another --db")
    if "full" in text:
        return f"the disk holding {path} is full: free some space, then retry"
    if "unable to open" in text:
        return (f"cannot open {path}: check that it and its directory exist and are readable "
                "by this user")
    return f"{path}: {exc}; check the file, or give another --db"


def _check_schema(db: HistoryDB, allow_empty: bool) -> bool:
    """True if the schema is ours; False if the database has no tables at all (and that is
    allowed); HistoryError for anything else."""
    tables = {name: {c[1] for c in db.execute(f"PRAGMA table_info({name})")}
              for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        if allow_empty:
            return False
        raise HistoryError(f"{db.path} holds no nightly history (an empty database): run "
                           "python -m pipeline.nightly, or give the right --db")
    missing = {t: cols - tables.get(t, set()) - {c for (at, c) in ADDED_COLUMNS if at == t}
               for t, cols in TABLES.items()}
    missing = {t: cols for t, cols in missing.items() if cols}
    if missing:
        what = ", ".join(f"{t} ({', '.join(sorted(c))})" if t in tables else t
                         for t, c in sorted(missing.items()))
        raise HistoryError(f"{db.path} is not a nightly history database (it lacks {what}; "
                           f"tables found: {', '.join(sorted(tables))}): give the right --db; "
                           "the nightly never adds its tables to another database")
    return True


def _migrations(db: HistoryDB) -> list[str]:
    """The ALTER TABLE statements that bring an older database to this schema."""
    have = {(table, c[1]) for table, _ in ADDED_COLUMNS
            for c in db.execute(f"PRAGMA table_info({table})")}
    return [f"ALTER TABLE {table} ADD COLUMN {column} {decl}"
            for (table, column), decl in ADDED_COLUMNS.items() if (table, column) not in have]


def _open(path: Path, uri: str) -> HistoryDB:
    db = sqlite3.connect(uri, uri=True, timeout=0.1, isolation_level=None, factory=HistoryDB)
    db.path = Path(path)
    db.row_factory = sqlite3.Row
    return db


def connect_reader(path: Path) -> HistoryDB:
    """Open the database read-only (`mode=ro`: a reader never writes, not even a schema)."""
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"no history database at {path} (run python -m pipeline.nightly "
                           "from the project root, or give --db)")
    db = _open(path, f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro")
    try:
        _check_schema(db, allow_empty=False)
    except sqlite3.Error as exc:
        db.close()
        raise HistoryError(explain(exc, path)) from None
    except HistoryError:
        db.close()
        raise
    return db


def connect(path: Path, timeout_s: float = WRITE_TIMEOUT_S) -> HistoryDB:
    """Open the database for the nightly, creating the file and the schema if there is none.

    Refuses a database with other tables (it never adds ours to one); a read-only or damaged
    file fails at its first write, through write(), with a line saying what to do.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(f"cannot create the directory of {path}: {exc.strerror}") from None
    db = _open(path, f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rwc")
    try:
        db.execute("PRAGMA foreign_keys = ON")
        if not _check_schema(db, allow_empty=True):
            # Statement by statement: executescript() would commit the transaction first.
            write(db, lambda: [db.execute(statement) for statement in SCHEMA.split(";")
                               if statement.strip()], timeout_s)
        elif migrations := _migrations(db):
            write(db, lambda: [db.execute(statement) for statement in migrations], timeout_s)
    except sqlite3.Error as exc:
        db.close()
        raise HistoryError(explain(exc, path)) from None
    except HistoryError:
        db.close()
        raise
    return db


def write(db: HistoryDB, action: Callable[[], T], timeout_s: float) -> T:
    """Run `action` in one IMMEDIATE transaction, all or nothing; while another connection
    holds the database, retry for at most `timeout_s` seconds, then raise HistoryError.

    Each attempt waits only 0.1 s inside SQLite, so a signal (SIGTERM) is handled within
    that, never after the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = action()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" in text or "busy" in text) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise HistoryError(explain(exc, db.path, time.monotonic() - started)) from None
        except sqlite3.IntegrityError:
            raise  # a bug in what is written, not the database's state
        except sqlite3.Error as exc:
            raise HistoryError(explain(exc, db.path)) from None


# --- reading a run directory's reports ----------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return None


def read_accuracy(run_dir: Path, builds: Sequence[str]) -> list[dict[str, Any]]:
    """One row per build x variant from reports/<build>/accuracy.json (absent reports: none)."""
    rows = []
    for build in builds:
        report = _load_json(Layout(run_dir).accuracy_json(build))
        history = _load_json(Layout(run_dir).history_json(build))
        history = history if isinstance(history, dict) else {}
        variants = report.get("variants") if isinstance(report, dict) else None
        for v in variants if isinstance(variants, list) else []:
            if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                continue  # nothing to key it by
            rows.append(_figure({
                "build": build, "variant": v["name"], "accuracy": v.get("accuracy"),
                "agreement": v.get("agreement"), "drift_pt": v.get("drift_pt"),
                "bytes": v.get("bytes"), "train_s": history.get("train_seconds")}))
    return rows


def no_runtime_rows(run_dir: Path, board: str) -> int:
    """How many of a board's rows it has no runtime for (NO RUNTIME), for the progress line;
    not a column: the rows themselves are in latency.json."""
    doc = _load_json(Layout(run_dir).board_result(board))
    missing = doc.get("missing") if isinstance(doc, dict) else None
    partial = isinstance(missing, list) and doc.get("status") == "partial"
    return len(missing) if partial and bench_succeeded(doc) else 0


def verdict_columns(result: dict[str, Any], failed: bool) -> dict[str, Any]:
    """The side-by-side verdict of a board's result row as history columns (all None when the
    case had none, failed, or its verdict is not made of numbers and a known word)."""
    verdict = result.get("verdict")
    out: dict[str, Any] = {c: None for c in VERDICT_COLUMNS}
    shas = {k: result.get(k) if isinstance(result.get(k), str) else None
            for k in ("sha256", "reference_sha256")}
    if failed or not isinstance(verdict, dict):
        return {**out, **shas}
    values = {c: verdict.get(k) for c, k in VERDICT_COLUMNS.items()}
    numbers = all(isinstance(values[c], (int, float)) and not isinstance(values[c], bool)
                  for c in ("ratio", "ratio_low", "ratio_high", "p_value"))
    if not numbers or values["word"] not in ("faster", "same", "slower", "environment"):
        return {**out, **shas}
    return {**values, **shas}


def read_latency(run_dir: Path, boards: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(board rows, case rows) from reports/latency/<board>.json, read defensively.

    A board with no document, or a status other than "ok", is a failed board (its partial
    results, if any, are still recorded) — except a "partial" board whose only gaps are
    NO RUNTIME rows (the virtual K1, a K1 without TFLite): the board did all it can, so it is
    ok. A case with an "error", without a p50 or whose predictions differ from the host's
    (agreement below 1) is failed. `emulated` (0/1) comes from the
    document (the inventory's flag, pipeline/bench/session.py).
    """
    board_rows, cases = [], []
    for board in boards:
        doc = _load_json(Layout(run_dir).board_result(board))
        if not isinstance(doc, dict):
            board_rows.append({"board": board, "status": "failed",
                               "error": "no latency report (bench did not finish)"})
            continue
        ok = bench_succeeded(doc)
        errors = doc.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else None
        board_rows.append({"board": board, "status": "ok" if ok else "failed",
                           "error": None if ok else str(doc.get("error") or first or
                                                        f"status {doc.get('status')!r}"),
                           "emulated": 1 if doc.get("emulated") is True else 0})
        results = doc.get("results")
        for r in results if isinstance(results, list) else []:
            if not isinstance(r, dict) or not r.get("build") or not r.get("variant"):
                continue  # a case the host could not attribute to a model: nothing to key it by
            r = _figure(r)
            failed = "error" in r or r.get("p50_us") is None
            # Correctness: a board's predictions unlike the host's fail the case, as they
            # fail the bench (pipeline/bench/session.py) -- on an emulated board too, whose latency
            # is gated by nothing.
            agreement = r.get("agreement")
            if not failed and agreement is not None and agreement < 1:
                shown = r.get("disagreements")
                r["error"] = (f"predictions differ from the host's (agreement {agreement:.4f}; "
                              f"samples {shown if isinstance(shown, list) else '?'})")
                failed = True
            threads = r.get("threads")
            cases.append({"build": str(r["build"]), "variant": str(r["variant"]), "board": board,
                          "threads": threads if isinstance(threads, int) else 0,
                          "p50_us": None if failed else r.get("p50_us"),
                          "p90_us": None if failed else r.get("p90_us"),
                          "init_ms": r.get("init_ms"), "status": "failed" if failed else "ok",
                          "error": str(r.get("error") or "no p50") if failed else None,
                          **verdict_columns(r, failed)})
    return board_rows, cases


# --- writing --------------------------------------------------------------------------------


def start_run(db: HistoryDB, started_utc: str, commit_sha: str | None, dirty: bool | None,
              params_hash: str, run_dir: str, timeout_s: float = WRITE_TIMEOUT_S) -> int:
    """Insert the run as 'running' (committed at once: the row says a nightly is under way)."""
    return write(db, lambda: int(db.execute(
        "INSERT INTO runs (started_utc, status, commit_sha, dirty, params_hash, run_dir)"
        " VALUES (?, 'running', ?, ?, ?, ?)",
        (started_utc, commit_sha, None if dirty is None else int(dirty), params_hash,
         run_dir)).lastrowid), timeout_s)


def _insert_run(db: HistoryDB, record: dict[str, Any]) -> None:
    run_id = record["run_id"]
    db.executemany(
        "INSERT INTO accuracy (run_id, build, variant, accuracy, agreement, drift_pt, bytes,"
        " train_s) VALUES (:run_id, :build, :variant, :accuracy, :agreement, :drift_pt,"
        " :bytes, :train_s)", [{"run_id": run_id, **r} for r in record["accuracy"]])
    db.executemany(
        "INSERT INTO boards (run_id, board, status, error, emulated) VALUES (:run_id, :board,"
        " :status, :error, :emulated)",
        [{"run_id": run_id, "emulated": 0, **r} for r in record["boards"]])
    verdict = {c: None for c in (*VERDICT_COLUMNS, "sha256", "reference_sha256")}
    db.executemany(
        "INSERT INTO latency (run_id, build, variant, board, threads, p50_us, p90_us,"
        " init_ms, status, error, ratio, ratio_low, ratio_high, p_value, word, sha256,"
        " reference_sha256) VALUES (:run_id, :build, :variant, :board, :threads,"
        " :p50_us, :p90_us, :init_ms, :status, :error, :ratio, :ratio_low, :ratio_high,"
        " :p_value, :word, :sha256, :reference_sha256)",
        # an older pending record.json has no verdict columns: NULL
        [{"run_id": run_id, **verdict, **r} for r in record["latency"]])
    db.execute("UPDATE runs SET status = ?, ended_utc = ?, wall_s = ?, message = ?,"
               " inputs_hash = ? WHERE id = ?",
               (record["status"], record["ended_utc"], record["wall_s"], record["message"],
                record["inputs_hash"], run_id))


def run_record(run_id: int, status: str, ended_utc: str, wall_s: float,
               accuracy: Iterable[dict] = (), boards: Iterable[dict] = (),
               latency: Iterable[dict] = (), message: str | None = None,
               inputs_hash: str | None = None) -> dict[str, Any]:
    """A run's final figures, as finish_run writes them and <run dir>/record.json keeps them."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"status {status!r} is not one of {FINAL_STATUSES}")
    return {"run_id": run_id, "status": status, "ended_utc": ended_utc, "wall_s": wall_s,
            "accuracy": [dict(r) for r in accuracy], "boards": [dict(r) for r in boards],
            "latency": [dict(r) for r in latency], "message": message,
            "inputs_hash": inputs_hash}


def finish_run(db: HistoryDB, run_id: int, status: str, ended_utc: str, wall_s: float,
               accuracy: Iterable[dict] = (), boards: Iterable[dict] = (),
               latency: Iterable[dict] = (), message: str | None = None,
               inputs_hash: str | None = None, timeout_s: float = WRITE_TIMEOUT_S) -> None:
    """Write a run's figures and its final status in one transaction (all or nothing)."""
    record = run_record(run_id, status, ended_utc, wall_s, accuracy, boards, latency, message,
                        inputs_hash)
    write(db, lambda: _insert_run(db, record), timeout_s)


def keep_pending(run_dir: Path, record: dict[str, Any]) -> Path:
    """Keep a run's record in its run directory (before the database has it)."""
    path = Path(run_dir) / PENDING
    write_json(path, record)
    return path


def _valid_record(record: Any, run_id: int) -> bool:
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        return False
    if record.get("status") not in FINAL_STATUSES:
        return False
    keys = {"accuracy": TABLES["accuracy"], "boards": TABLES["boards"],
            "latency": TABLES["latency"]}
    return all(isinstance(record.get(t), list) and all(
        isinstance(r, dict) and set(r) - {c for (at, c) in ADDED_COLUMNS if at == t}
        == cols - {"run_id"} - {c for (at, c) in ADDED_COLUMNS if at == t} for r in record[t])
        for t, cols in keys.items())


def settle_unfinished_runs(db: HistoryDB, ended_utc: str,
                           timeout_s: float = WRITE_TIMEOUT_S) -> list[tuple[int, str]]:
    """Close every 'running' row; call only while holding the nightly lock of this database
    (so none of them is running). A run whose record.json is in its run directory (the
    database was busy or broken when it ended) is recorded from it; any other was killed
    before it could record its end and is marked failed. Returns (run id, what was done)."""
    done = []

    def settle() -> None:
        done.clear()
        for row in db.execute("SELECT id, run_dir FROM runs WHERE status = 'running'"
                              " ORDER BY id").fetchall():
            pending = _load_json(Path(row["run_dir"] or "") / PENDING) if row["run_dir"] \
                else None
            if _valid_record(pending, row["id"]):
                db.execute("SAVEPOINT pending")
                try:
                    _insert_run(db, pending)
                except (sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
                    # A record that cannot be inserted must not block every later nightly.
                    db.execute("ROLLBACK TO pending")
                    db.execute("UPDATE runs SET status = 'failed', ended_utc = ?, message = ? "
                               "WHERE id = ?", (ended_utc, f"its {PENDING} could not be "
                                                f"recorded: {exc}", row["id"]))
                    done.append((row["id"], f"{Path(row['run_dir']) / PENDING} could not be "
                                            f"recorded ({exc}): marked failed"))
                    continue
                finally:
                    db.execute("RELEASE pending")
                done.append((row["id"], f"recorded from {Path(row['run_dir']) / PENDING} "
                                        f"({pending['status']})"))
            else:
                db.execute("UPDATE runs SET status = 'failed', ended_utc = ?, message = "
                           "'abandoned: the nightly was killed before it could record its "
                           "end' WHERE id = ?", (ended_utc, row["id"]))
                done.append((row["id"], "killed before recording its end: marked failed"))
    write(db, settle, timeout_s)
    return list(done)


# --- querying --------------------------------------------------------------------------------


def _read(db: HistoryDB, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in db.execute(sql, args)]
    except sqlite3.Error as exc:
        raise HistoryError(explain(exc, db.path)) from None


def run_row(db: HistoryDB, run_id: int) -> dict[str, Any] | None:
    rows = _read(db, "SELECT * FROM runs WHERE id = ?", (run_id,))
    return rows[0] if rows else None


def run_dirs(db: HistoryDB) -> list[dict[str, Any]]:
    """Every run's id, status and run directory, oldest first (for retention)."""
    return _read(db, "SELECT id, status, run_dir FROM runs ORDER BY id")


def completed_runs(db: HistoryDB, last: int, up_to: int | None = None) -> list[dict]:
    """The last `last` completed runs (ok or breached), oldest first, ids <= `up_to`."""
    rows = _read(db, "SELECT * FROM runs WHERE status IN ('ok', 'breached') AND id <= ? "
                     "ORDER BY id DESC LIMIT ?",
                 (up_to if up_to is not None else 2 ** 62, last))
    return list(reversed(rows))


def _figure(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every figure a number or None (bool is not a figure either)."""
    return {k: (v if k not in NUMERIC or v is None or (isinstance(v, (int, float))
                                                       and not isinstance(v, bool)) else None)
            for k, v in row.items()}


def as_figures(accuracy: Iterable[dict], boards: Iterable[dict],
               latency: Iterable[dict]) -> dict[str, Any]:
    """One run's rows keyed for comparison: {"accuracy": {(build, variant): row},
    "latency": {(build, variant, board, threads): row}, "boards": {board: row}}."""
    return {"accuracy": {(r["build"], r["variant"]): dict(r) for r in accuracy},
            "latency": {(r["build"], r["variant"], r["board"], r["threads"]): dict(r)
                        for r in latency},
            "boards": {r["board"]: dict(r) for r in boards}}


def figures(db: HistoryDB, run_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """as_figures() of each run in `run_ids`, read from the database; a value that is not a
    number in a figure's column (a hand-edited row) reads as None, never breaks a report."""
    def rows(table: str, run_id: int) -> list[dict]:
        return [_figure(r) for r in _read(db, f"SELECT * FROM {table} WHERE run_id = ?",
                                          (run_id,))]
    return {i: as_figures(rows("accuracy", i), rows("boards", i), rows("latency", i))
            for i in run_ids}


def table_rows(db: HistoryDB, last: int, build: str | None = None,
               board: str | None = None) -> list[dict[str, Any]]:
    """The last `last` runs (any status) joined with their figures, one row per case.

    With a filter, rows of other builds (boards) go; a run's rows that name no build (board)
    — a failed board, a run without figures — stay, as context."""
    runs = _read(db, "SELECT * FROM runs ORDER BY id DESC LIMIT ?", (last,))
    rows = []
    for run in reversed(runs):
        acc = {(r["build"], r["variant"]): _figure(r) for r in _read(
            db, "SELECT * FROM accuracy WHERE run_id = ?", (run["id"],))}
        lat = [_figure(r) for r in _read(
            db, "SELECT * FROM latency WHERE run_id = ? ORDER BY build, variant, board, threads",
            (run["id"],))]
        failed_boards = _read(db, "SELECT * FROM boards WHERE run_id = ? AND status = 'failed'",
                              (run["id"],))
        # SELECT *: a database from before `boards.emulated` is read as it is (never migrated)
        emulated = {r["board"] for r in _read(db, "SELECT * FROM boards WHERE run_id = ?",
                                                (run["id"],)) if r.get("emulated")}
        base = {"run": run["id"], "started": run["started_utc"], "status": run["status"],
                "commit": (run["commit_sha"] or "")[:10] + ("+dirty" if run["dirty"] else "")}
        cases = [dict(base, build=b, variant=v, board="", threads=None, **{
            k: a[k] for k in ("accuracy", "drift_pt", "bytes")}) for (b, v), a in acc.items()
            if (b, v) not in {(r["build"], r["variant"]) for r in lat}]
        for r in lat:
            a = acc.get((r["build"], r["variant"]), {})
            cases.append(dict(base, build=r["build"], variant=r["variant"], board=r["board"],
                              threads=r["threads"], accuracy=a.get("accuracy"),
                              drift_pt=a.get("drift_pt"), bytes=a.get("bytes"),
                              p50_us=r["p50_us"], init_ms=r["init_ms"],
                              emulated=r["board"] in emulated,
                              case=r["status"] if r["status"] == "ok" else f"FAILED {r['error']}"))
        cases += [dict(base, build="", variant="", board=f["board"], threads=None,
                       case=f"BOARD FAILED {f['error']}") for f in failed_boards]
        if not acc and not lat and not failed_boards:
            cases.append(dict(base, build="", variant="", board="", threads=None,
                              case=run["message"] or ""))
        rows += [c for c in cases if (build is None or c["build"] in (build, ""))
                 and (board is None or c["board"] in (board, ""))]
    return rows


def recorded_names(db: HistoryDB) -> tuple[list[str], list[str]]:
    """(builds, boards) that any run recorded, sorted: what a filter can name."""
    builds = [r["build"] for r in _read(db, "SELECT DISTINCT build FROM accuracy UNION "
                                            "SELECT DISTINCT build FROM latency ORDER BY 1")]
    boards = [r["board"] for r in _read(db, "SELECT DISTINCT board FROM boards UNION "
                                            "SELECT DISTINCT board FROM latency ORDER BY 1")]
    return builds, boards


def render(rows: Sequence[dict[str, Any]]) -> str:
    from tabulate import tabulate

    from pipeline.core.text import board_label, fmt_value

    body = [[r["run"], r["started"], r["status"], r["commit"], r["build"], r["variant"],
             board_label(r), fmt_value(r.get("threads"), "d"),
             fmt_value(r.get("accuracy"), ".2f", 100),
             fmt_value(r.get("drift_pt"), "+.2f"), fmt_value(r.get("bytes"), ","),
             fmt_value(r.get("p50_us"), ".1f"), fmt_value(r.get("init_ms"), ".2f"),
             r.get("case", "")]
            for r in rows]
    return tabulate(body, headers=["run", "started (UTC)", "status", "commit", "build", "variant",
                                   "board", "thr", "acc %", "drift pt", "bytes", "p50 µs",
                                   "init ms", "case"], disable_numparse=True)


def _run_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LAST:
        raise argparse.ArgumentTypeError(f"{text} is outside 1..{MAX_LAST:,}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    # The whole docstring is the help: the schema is what a reader of the database needs.
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Layout(Path("artifacts")).history_db())
    parser.add_argument("--last", type=_run_count, default=5,
                        help=f"runs to show, 1..{MAX_LAST:,} (default 5)")
    parser.add_argument("--build", help="only this build")
    parser.add_argument("--board", help="only this board")
    args = parser.parse_args(argv)
    try:
        db = connect_reader(args.db)
        try:
            rows = table_rows(db, args.last, args.build, args.board)
            builds, boards = recorded_names(db)
        finally:
            db.close()
    except HistoryError as exc:
        sys.exit(f"error: {exc}")
    # A typo must not look like an empty history: a filter has to match a real row.
    for flag, wanted, key, known in (("--build", args.build, "build", builds),
                                     ("--board", args.board, "board", boards)):
        if wanted is not None and not any(r[key] == wanted for r in rows):
            sys.exit(f"error: {flag} {wanted}: no such {key} in the last {args.last} run(s) of "
                     f"{args.db} ({key}s recorded: {', '.join(known) or 'none'})")
    print(render(rows))


if __name__ == "__main__":
    main()
