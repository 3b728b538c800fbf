"""Bench stage: stage a plan, push it to a board, run board/runner.py there, collect.

Boards come from an inventory (board/boards.toml, see pipeline/core/boards.py) and are
reached through a transport (pipeline/bench/transport.py: this machine, or OpenSSH); this
module never knows which.

The promise of this module: a board's result file is either a complete, validated run or a
recorded failure. It says "running" from the moment a run starts, so even a killed task
never leaves the previous numbers looking fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import RUNNER
from pipeline.bench import report
from pipeline.bench.floor import count_macs
from pipeline.bench.plan import pick_samples, stage_plan
from pipeline.bench.reference import (attach_verdicts, keep_timed, references_for,
                                      samples_reference, split_samples)
from pipeline.bench.transport import BoardError, Progress, Transport, connect
from pipeline.bench.validate import check_document
from pipeline.core.boards import Board, load_boards
from pipeline.core.formats import NO_RUNTIME_MARK
from pipeline.core.files import outputs_together, write_bytes, write_json
from pipeline.core.layout import Layout
from pipeline.core.text import clean_text, utc_now

# A row is "slower" or "faster" than its reference when Mann-Whitney U gives p below this
# and the ratio of medians is beyond the minimum effect (the A/A offset of two identical
# interpreters in one process, measured at 1.6 %, see issue 19).
VERDICT_ALPHA, VERDICT_MIN_EFFECT = 0.01, 0.02

NO_RUNTIME, NO_NUMPY, BAD_PLAN = 3, 4, 5  # board/runner.py's exit statuses


def explain_runner_exit(transport: Transport, status: int, stderr: str) -> str:
    name = transport.board.label
    text = "\n".join(line for line in clean_text(stderr).splitlines() if line.strip()).strip()
    message = text.splitlines()[-1].removeprefix("error: ") if text else "(no message)"
    if status == NO_RUNTIME or status == NO_NUMPY or status == BAD_PLAN:
        return f"{name}: {message}"
    if status > 128 and status - 128 in signal.valid_signals():
        sig = signal.Signals(status - 128)
        hint = (" - the runtime uses CPU instructions this core does not have; install a "
                "runtime built for this board's ISA" if sig == signal.SIGILL else "")
        return f"{name}: the runner was killed by {sig.name}{hint}. Last output: {message}"
    special = transport.explain(status)
    if special:
        return f"{name}: {special}"
    return f"{name}: the runner exited with status {status}: {text[-2000:] or '(no message)'}"


def plan_files(plan_path: Path) -> list[Path]:
    """The runner, plan.json and every file the plan names: what the board needs."""
    plan = json.loads(plan_path.read_text())
    stage = plan_path.parent
    return [RUNNER, plan_path, *(stage / m[key] for m in plan["models"]
                                 for key in ("file", "samples")),
            *(stage / p["file"] for p in plan["peak"])]


def run_on_board(board: Board, plan_path: Path, on_progress: Progress | None = None,
                 transport: Transport | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run the plan on `board` (through `transport`, by default the one `connect` picks);
    return the runner's document and the files pushed."""
    plan = json.loads(plan_path.read_text())
    timeout = board.timeout_s or plan["deadline_s"] + 30
    with contextlib.ExitStack() as stack:  # a transport handed in stays open (its owner's)
        if transport is None:
            transport = stack.enter_context(connect(board))
        pushed = transport.push(plan_files(plan_path))
        status, out, err = transport.run(
            [transport.python, transport.path(RUNNER), "--plan", transport.path(plan_path),
             "--stop-on-eof"], timeout, on_progress)
        if status != 0:
            raise BoardError(explain_runner_exit(transport, status, err))
    try:
        return json.loads(out.decode("utf-8")), pushed
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoardError(f"{board.label}: the runner's output is not a JSON document ({exc}): "
                         f"{clean_text(out[:300].decode('utf-8', 'replace'))!r}") from None


def bench_board(board: Board, models: dict[str, Path],
                samples: dict[str, tuple[np.ndarray, np.ndarray]], work_dir: Path,
                peak: dict[str, Path] | None = None,
                on_progress: Progress | None = None,
                references: dict[str, Path] | None = None,
                reference_notes: Sequence[str] = ()) -> dict:
    """Benchmark every model on one board; the document for reports/latency/<board>.json.

    Its status is "ok" when every planned case came back valid, else "partial" with the good
    cases and `errors` naming the bad ones. Raises BoardError when nothing usable came back.
    """
    if not models:  # every build blocked (see the task's "not timing" line): time nothing
        raise BoardError(f"{board.label}: no model to time: "
                         "no build has its dataset, so no model was built; give the "
                         "pipeline a copy of the data (PIPELINE_MIRROR=<dir or URL>, "
                         "docs/offline.md) and run doit again")
    started = time.time()
    # An emulated board's peak is qemu's, not a machine's, so it gets no floor (and its float
    # GEMM would take minutes under emulation).
    plan_path = stage_plan(models, samples, board, Path(work_dir) / board.name,
                           None if board.emulated else peak, references=references)
    plan = json.loads(plan_path.read_text())
    document, pushed = run_on_board(board, plan_path, on_progress)
    try:
        results, peak_results, problems, missing = check_document(document, plan)
    except BoardError as exc:
        raise BoardError(f"{board.label}: {exc}") from None
    if not results:
        raise BoardError(f"{board.label}: no valid result: "
                         + "; ".join([*problems, *(m["error"] for m in missing)][:5]))
    by_file = {m["file"]: m for m in plan["models"]}
    for result in [*results, *missing]:
        entry = by_file[result["model"]]
        result["build"], result["variant"] = entry["key"].split("/")
        result["sha256"] = entry["sha256"]
    for result in results:
        path = models[f"{result['build']}/{result['variant']}"]
        result["bytes"] = path.stat().st_size
        result["macs"] = count_macs(path)
    attach_verdicts(results, plan, VERDICT_ALPHA, VERDICT_MIN_EFFECT)
    notes = [*reference_notes, *sorted({r["pair_skipped"] for r in results
                                        if r.get("pair_skipped")})]
    return {"board": board.name, "status": "partial" if problems or missing else "ok",
            "errors": problems, "missing": missing, "where": board.where,
            "emulated": board.emulated, "measured_utc": utc_now(), "started": started,
            "seconds": time.time() - started, "pushed": pushed,
            "machine": document["machine"], "runtimes": document["runtimes"],
            "cpus": document.get("cpus"), "results": results, "peak": peak_results,
            "reference_notes": notes}


def missing_summary(document: dict) -> str:
    """One line per missing runtime: which rows were not timed, and why (with the hint)."""
    by_error: dict[str, list[str]] = {}
    for m in document.get("missing", []):
        by_error.setdefault(m["error"], []).append(f"{m['build']}/{m['variant']} x{m['threads']}")
    return "\n".join(f"board {document['board']!r}: {len(rows)} row(s) not timed "
                     f"({', '.join(rows)}): {error}" for error, rows in by_error.items())


def progress_printer(board: Board, stream=None) -> Progress:
    """One console line per finished case, as the runner reports it (to stdout by default)."""
    def show(line: str) -> None:
        out = stream or sys.stdout
        try:
            event = json.loads(line)
            error = str(event.get("error") or "")
            if error.startswith(NO_RUNTIME_MARK):  # the hint comes once, at the end
                error = report.missing_state(error)
            else:
                error = f"ERROR {error}" if error else ""
            what = (f"{event['model']} x{event['threads']}: "
                    + (error or f"p50 {event['p50_us']:.1f} us"))
            out.write(f"bench:{board.name} [{event['case']}/{event['of']}] "
                      f"{clean_text(what)}\n")
        except (ValueError, KeyError, TypeError):
            out.write(f"bench:{board.name} {clean_text(line)[:200]}\n")
        out.flush()
    return show


def describe_failure(board: Board, exc: BaseException) -> str:
    if isinstance(exc, BoardError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return f"{board.label}: interrupted (Ctrl-C)"
    return f"{board.label}: {type(exc).__name__}: {exc}"


def run(board: Board, models: dict[str, Path], datasets: dict[str, Path],
        correctness_samples: int, layout: Layout, inventory: Sequence[Board],
        peak: dict[str, Path] | None = None, max_age_hours: float | None = None) -> dict:
    """The doit action: bench one board, record the result (or the failure), rebuild the report.

    `datasets` maps each build to its dataset .npz. The board's result file says "running"
    before anything else happens and is replaced by the result or the failure on every way
    out, so old figures are never shown as fresh.
    """
    result_path = layout.board_result(board.name)
    references, reference_notes = references_for(layout, board.name, models)
    running = {"board": board.name, "status": "running", "where": board.where,
               "emulated": board.emulated, "started_utc": utc_now()}
    try:
        write_json(result_path, running)
    except BaseException:
        result_path.unlink(missing_ok=True)  # never leave the old numbers in place
        raise

    def rebuild_report(table: bool = True) -> None:
        # No board failures: this board's is this task's error, which doit prints, and
        # another board's is that task's, in this doit run or the one that timed it (in
        # whatever order doit ran them); latency.md and `python -m pipeline.report` show all.
        report.write_latency_report(layout, inventory, models, max_age_hours,
                                    table=table, failures=False)

    # At once, so that a run killed from here on leaves latency.* showing this board as
    # INCOMPLETE rather than its previous figures as fresh.
    try:
        rebuild_report(table=False)  # the console gets the table once, at the end
    except Exception as report_exc:  # an unreadable other board must not stop this one
        print(f"latency report not rebuilt: {report_exc}", file=sys.stderr)
    try:
        samples = labelled_samples(datasets, correctness_samples)
        document = bench_board(board, models, samples, layout.bench_root(), peak,
                               progress_printer(board), references, reference_notes)
        write_result(layout, board.name, document)
        keep_timed(layout, board.name, models, document["results"])
    except BaseException as exc:
        message = describe_failure(board, exc)
        write_json(result_path, {**running, "status": "failed", "error": message,
                                 "measured_utc": utc_now()})
        try:
            rebuild_report()
        except Exception as report_exc:  # the board's own failure is the news
            print(f"latency report not rebuilt: {report_exc}", file=sys.stderr)
        if isinstance(exc, Exception) and not isinstance(exc, BoardError):
            raise BoardError(message) from exc
        raise
    rebuild_report()
    if document["missing"]:  # what this board cannot run is a fact about it, not a failure
        print(clean_text(missing_summary(document)))
    raise_on_bad_cases(board, document)
    return document


def write_result(layout: Layout, board: str, document: dict) -> None:
    """The board's result and, beside it, its pairs' round medians (compressed, named in the
    result with their SHA-256; reference.split_samples): both files or neither."""
    samples_path = layout.board_samples(board)
    data = split_samples(document["results"], VERDICT_ALPHA, VERDICT_MIN_EFFECT)
    document["samples_file"] = samples_reference(samples_path.name, data)
    with outputs_together():
        write_bytes(samples_path, data)
        write_json(layout.board_result(board), document)


def labelled_samples(datasets: dict[str, Path], count: int
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each build's correctness samples; builds sharing a dataset share its draw (and each
    .npz is loaded once)."""
    from pipeline.stages.preprocess import load_arrays

    picked = {}
    for npz in set(datasets.values()):
        arrays = load_arrays(npz)
        picked[npz] = pick_samples(arrays["x_test"], arrays["y_test"], count)
    return {build: picked[npz] for build, npz in datasets.items()}


def raise_on_bad_cases(board: Board, document: dict) -> None:
    """The task fails, after the report is written, for a failed case or a prediction that
    differs from the host's."""
    if document["errors"]:
        raise BoardError(f"{board.label}: "
                         f"{len(document['errors'])} case(s) failed (the good ones are in the "
                         "report): " + "; ".join(document["errors"][:5]))
    disagree = [f"{r['build']}/{r['variant']} x{r['threads']} on {len(r['disagreements'])} "
                "sample(s)" for r in document["results"] if r["agreement"] < 1]
    if disagree:
        raise BoardError(f"{board.label}: predictions differ from the "
                         "host's for " + "; ".join(disagree) + " (report written)")


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    from pipeline.stages.convert import variant_of
    from pipeline.stages.preprocess import load_arrays

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("board", help="board name from the inventory")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("models", type=Path, nargs="+", help="<build>_<variant> model files")
    parser.add_argument("--boards", type=Path, default=Path("board/boards.toml"))
    from pipeline.core.params import BenchParams

    # The schema's default (pipeline/core/params.py), as the bench task's: never a second copy.
    parser.add_argument("--samples", type=int, default=BenchParams().correctness_samples,
                        help="default: bench.correctness_samples's, %(default)s")
    args = parser.parse_args(argv)
    board = next((b for b in load_boards(args.boards) if b.name == args.board), None)
    if board is None:
        sys.exit(f"error: no board {args.board!r} in {args.boards}")
    models = {"/".join(variant_of(p)): p for p in args.models}
    arrays = load_arrays(args.data)
    labelled = pick_samples(arrays["x_test"], arrays["y_test"], args.samples)
    samples = {key.split("/")[0]: labelled for key in models}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            document = bench_board(board, models, samples, Path(tmp),
                                   on_progress=progress_printer(board, sys.stderr))
        except BoardError as exc:
            sys.exit(f"error: {exc}")
        print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
