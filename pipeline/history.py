"""History database of nightly runs (SQLite), and `python -m pipeline.history` to read it.

Schema (artifacts/history.sqlite unless --db says otherwise; times are UTC ISO 8601):

    runs      id, started_utc, ended_utc, status ('running' | 'ok' | 'failed' | 'breached'),
              commit_sha, dirty (0/1, NULL outside git), params_hash, inputs_hash,
              wall_s, run_dir, message
    accuracy  run_id, build, variant ('keras', 'float32', 'int8', ...),
              accuracy, agreement, drift_pt, bytes, train_s   -- per run x build x variant
    boards    run_id, board, status ('ok' | 'failed'), error -- per run x board
    latency   run_id, build, variant, board, threads,
              p50_us, p90_us, init_ms, status ('ok' | 'failed'), error
                                                              -- per run x build x variant
                                                                 x board x threads

A run's row is inserted as 'running' when it starts; its figures and its final status are
written together in one transaction when it ends, so a reader never sees half a run. A run
killed without a chance to record its end stays 'running' until the next nightly (which
holds the lock, so nothing else can be running) marks it 'failed'.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from pipeline.layout import Layout

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
    PRIMARY KEY (run_id, build, variant, board, threads)
);
"""
FINAL_STATUSES = ("ok", "failed", "breached")
COMPLETED = ("ok", "breached")  # runs whose figures are whole and count for trends


def connect(path: Path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys = ON")
    db.executescript(SCHEMA)
    return db


# --- reading a run directory's reports ----------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_accuracy(run_dir: Path, builds: Sequence[str]) -> list[dict[str, Any]]:
    """One row per build x variant from reports/<build>/accuracy.json (absent reports: none)."""
    rows = []
    for build in builds:
        report = _load_json(Layout(run_dir).accuracy_json(build))
        history = _load_json(Layout(run_dir).history_json(build)) or {}
        for v in (report or {}).get("variants", []):
            rows.append({"build": build, "variant": v.get("name"), "accuracy": v.get("accuracy"),
                         "agreement": v.get("agreement"), "drift_pt": v.get("drift_pt"),
                         "bytes": v.get("bytes"), "train_s": history.get("train_seconds")})
    return rows


def read_latency(run_dir: Path, boards: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(board rows, case rows) from reports/latency/<board>.json, read defensively.

    A board with no document, or a status other than "ok", is a failed board (its partial
    results, if any, are still recorded). A case with an "error" or without a p50 is failed.
    """
    board_rows, cases = [], []
    for board in boards:
        doc = _load_json(Layout(run_dir).board_result(board))
        if not isinstance(doc, dict):
            board_rows.append({"board": board, "status": "failed",
                               "error": "no latency report (bench did not finish)"})
            continue
        ok = doc.get("status") == "ok"
        board_rows.append({"board": board, "status": "ok" if ok else "failed",
                           "error": None if ok else str(doc.get("error") or
                                                        f"status {doc.get('status')!r}")})
        for r in doc.get("results") or []:
            if not r.get("build") or not r.get("variant"):
                continue  # a case the host could not attribute to a model: nothing to key it by
            failed = "error" in r or r.get("p50_us") is None
            cases.append({"build": r["build"], "variant": r["variant"], "board": board,
                          "threads": int(r.get("threads") or 0),
                          "p50_us": None if failed else r.get("p50_us"),
                          "p90_us": None if failed else r.get("p90_us"),
                          "init_ms": r.get("init_ms"), "status": "failed" if failed else "ok",
                          "error": str(r.get("error") or "no p50") if failed else None})
    return board_rows, cases


# --- writing --------------------------------------------------------------------------------


def start_run(db: sqlite3.Connection, started_utc: str, commit_sha: str | None,
              dirty: bool | None, params_hash: str, run_dir: str) -> int:
    """Insert the run as 'running' (committed at once: the row says a nightly is under way)."""
    with db:
        cursor = db.execute(
            "INSERT INTO runs (started_utc, status, commit_sha, dirty, params_hash, run_dir)"
            " VALUES (?, 'running', ?, ?, ?, ?)",
            (started_utc, commit_sha, None if dirty is None else int(dirty), params_hash,
             run_dir))
    return int(cursor.lastrowid)


def finish_run(db: sqlite3.Connection, run_id: int, status: str, ended_utc: str, wall_s: float,
               accuracy: Iterable[dict] = (), boards: Iterable[dict] = (),
               latency: Iterable[dict] = (), message: str | None = None,
               inputs_hash: str | None = None) -> None:
    """Write a run's figures and its final status in one transaction (all or nothing)."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"status {status!r} is not one of {FINAL_STATUSES}")
    with db:
        db.executemany(
            "INSERT INTO accuracy (run_id, build, variant, accuracy, agreement, drift_pt, bytes,"
            " train_s) VALUES (:run_id, :build, :variant, :accuracy, :agreement, :drift_pt,"
            " :bytes, :train_s)", [{"run_id": run_id, **r} for r in accuracy])
        db.executemany(
            "INSERT INTO boards (run_id, board, status, error) VALUES (:run_id, :board, :status,"
            " :error)", [{"run_id": run_id, **r} for r in boards])
        db.executemany(
            "INSERT INTO latency (run_id, build, variant, board, threads, p50_us, p90_us,"
            " init_ms, status, error) VALUES (:run_id, :build, :variant, :board, :threads,"
            " :p50_us, :p90_us, :init_ms, :status, :error)",
            [{"run_id": run_id, **r} for r in latency])
        db.execute("UPDATE runs SET status = ?, ended_utc = ?, wall_s = ?, message = ?,"
                   " inputs_hash = ? WHERE id = ?",
                   (status, ended_utc, wall_s, message, inputs_hash, run_id))


def fail_abandoned_runs(db: sqlite3.Connection, ended_utc: str) -> list[int]:
    """Mark 'running' rows failed; call only while holding the nightly lock."""
    with db:
        ids = [row["id"] for row in db.execute("SELECT id FROM runs WHERE status = 'running'")]
        db.execute("UPDATE runs SET status = 'failed', ended_utc = ?, message = 'abandoned: "
                   "the nightly was killed before it could record its end' "
                   "WHERE status = 'running'", (ended_utc,))
    return ids


# --- querying --------------------------------------------------------------------------------


def completed_runs(db: sqlite3.Connection, last: int, up_to: int | None = None) -> list[dict]:
    """The last `last` completed runs (ok or breached), oldest first, ids <= `up_to`."""
    rows = db.execute(
        "SELECT * FROM runs WHERE status IN ('ok', 'breached') AND id <= ? "
        "ORDER BY id DESC LIMIT ?", (up_to if up_to is not None else 2 ** 62, last)).fetchall()
    return [dict(r) for r in reversed(rows)]


def as_figures(accuracy: Iterable[dict], boards: Iterable[dict],
               latency: Iterable[dict]) -> dict[str, Any]:
    """One run's rows keyed for comparison: {"accuracy": {(build, variant): row},
    "latency": {(build, variant, board, threads): row}, "boards": {board: row}}."""
    return {"accuracy": {(r["build"], r["variant"]): dict(r) for r in accuracy},
            "latency": {(r["build"], r["variant"], r["board"], r["threads"]): dict(r)
                        for r in latency},
            "boards": {r["board"]: dict(r) for r in boards}}


def figures(db: sqlite3.Connection, run_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """as_figures() of each run in `run_ids`, read from the database."""
    def rows(table: str, run_id: int) -> list[dict]:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} WHERE run_id = ?",
                                            (run_id,))]
    return {i: as_figures(rows("accuracy", i), rows("boards", i), rows("latency", i))
            for i in run_ids}


def table_rows(db: sqlite3.Connection, last: int, build: str | None = None,
               board: str | None = None) -> list[dict[str, Any]]:
    """The last `last` runs (any status) joined with their figures, one row per case."""
    runs = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (last,))]
    rows = []
    for run in reversed(runs):
        acc = {(r["build"], r["variant"]): dict(r) for r in db.execute(
            "SELECT * FROM accuracy WHERE run_id = ?", (run["id"],))}
        lat = [dict(r) for r in db.execute(
            "SELECT * FROM latency WHERE run_id = ? ORDER BY build, variant, board, threads",
            (run["id"],))]
        failed_boards = [dict(r) for r in db.execute(
            "SELECT * FROM boards WHERE run_id = ? AND status = 'failed'", (run["id"],))]
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
                              case=r["status"] if r["status"] == "ok" else f"FAILED {r['error']}"))
        cases += [dict(base, build="", variant="", board=f["board"], threads=None,
                       case=f"BOARD FAILED {f['error']}") for f in failed_boards]
        if not acc and not lat and not failed_boards:
            cases.append(dict(base, build="", variant="", board="", threads=None))
        rows += [c for c in cases if (build is None or c["build"] in (build, ""))
                 and (board is None or c["board"] in (board, ""))]
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    from tabulate import tabulate

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    body = [[r["run"], r["started"], r["status"], r["commit"], r["build"], r["variant"],
             r["board"], fmt(r.get("threads"), "d"),
             fmt(None if r.get("accuracy") is None else 100 * r["accuracy"], ".2f"),
             fmt(r.get("drift_pt"), "+.2f"), fmt(r.get("bytes"), ","),
             fmt(r.get("p50_us"), ".1f"), fmt(r.get("init_ms"), ".2f"), r.get("case", "")]
            for r in rows]
    return tabulate(body, headers=["run", "started (UTC)", "status", "commit", "build", "variant",
                                   "board", "thr", "acc %", "drift pt", "bytes", "p50 µs",
                                   "init ms", "case"], disable_numparse=True)


def main(argv: Sequence[str] | None = None) -> None:
    # The whole docstring is the help: the schema is what a reader of the database needs.
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Layout(Path("artifacts")).history_db())
    parser.add_argument("--last", type=int, default=5, help="runs to show (default 5)")
    parser.add_argument("--build", help="only this build")
    parser.add_argument("--board", help="only this board")
    args = parser.parse_args(argv)
    if not args.db.exists():
        sys.exit(f"error: no history database at {args.db} (run python -m pipeline.nightly)")
    db = connect(args.db)
    rows = table_rows(db, args.last, args.build, args.board)
    print(render(rows))
    if not rows and (args.build or args.board):  # a typo must not look like an empty history
        sys.exit(f"no rows for build {args.build or 'any'} and board {args.board or 'any'} in "
                 f"the last {args.last} run(s)")


if __name__ == "__main__":
    main()
