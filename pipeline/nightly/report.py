"""Nightly report and gates: this run against the previous one and the median of the last N.

Pure functions over the history database's figures (see pipeline/nightly/history.py): `compare`
builds the comparison, `breaches` applies the `[nightly]` gates, `render_markdown` and
`render_chart` write reports/nightly.md and nightly.png; `write_reports` does all three plus
nightly.json. `python -m pipeline.nightly.report` rebuilds them from the database.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import write_json, write_text
from pipeline.core.layout import NIGHTLY_JSON, NIGHTLY_MD, NIGHTLY_PNG, Layout
from pipeline.core.params import NightlyParams, load_params, section_dict
from pipeline.core.text import EMULATED, clean_text, escape_md, fmt_value
from pipeline.core.variants import accuracy_floor, drift_gated_variants, rank
from pipeline.core.verdict import describe, gate_breached
from pipeline.nightly.changes import find_changes
from pipeline.nightly.changes import render as render_changes

# Nights the change-point search looks back over (the gate's median uses history_runs).
CHANGE_NIGHTS = 100
Figures = dict[str, Any]  # one run's {"accuracy": {...}, "latency": {...}, "boards": {...}}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _delta(now: float | None, then: float | None, scale: float = 1.0) -> float | None:
    return None if now is None or then is None else (now - then) * scale


def _pct(now: float | None, then: float | None) -> float | None:
    return None if now is None or not then else (now / then - 1) * 100


def min_accuracy(variant: str, params: NightlyParams) -> float | None:
    """The accuracy floor of a variant (variants.py says which); Keras is not shipped, so it
    has none."""
    key = floor_key(variant)
    return None if key is None else getattr(params, key)


def floor_key(variant: str) -> str | None:
    """The `[nightly]` key of a variant's accuracy floor."""
    return {None: None, "int8": "min_accuracy_int8",
            "float": "min_accuracy_float32"}[accuracy_floor(variant)]


def _variant_order(item: tuple[tuple, Any]) -> tuple:
    """Sort by build, then keras and the variants in registry order; then board and threads."""
    key = item[0]
    return (key[0], rank(key[1]), key[1], *key[2:])


def compare(current: Figures, previous: Figures | None, history: Sequence[Figures],
            params: NightlyParams) -> dict[str, Any]:
    """Rows comparing `current` with `previous` and with the median of `history` (the runs
    before this one, oldest first). Changes beyond the thresholds carry a `mark`."""
    accuracy = []
    for key, now in sorted(current["accuracy"].items(), key=_variant_order):
        prev = (previous or {}).get("accuracy", {}).get(key, {})
        past = [h["accuracy"].get(key, {}) for h in history]
        row = {"build": key[0], "variant": key[1]}
        for figure in ("accuracy", "drift_pt", "bytes"):
            row[figure] = now.get(figure)
            row[f"{figure}_prev"] = prev.get(figure)
            row[f"{figure}_median"] = _median([p.get(figure) for p in past])
        row["accuracy_change_pt"] = _delta(row["accuracy"], row["accuracy_prev"], 100)
        row["accuracy_vs_median_pt"] = _delta(row["accuracy"], row["accuracy_median"], 100)
        marks = []
        for label, change in (("prev", row["accuracy_change_pt"]),
                              ("median", row["accuracy_vs_median_pt"])):
            if change is not None and abs(change) > params.mark_accuracy_change_pt:
                marks.append(f"accuracy {change:+.2f} pt vs {label}")
        if row["bytes_prev"] is not None and row["bytes"] != row["bytes_prev"]:
            marks.append(f"size {row['bytes'] - row['bytes_prev']:+,} B vs prev")
        row["mark"] = "; ".join(marks)
        accuracy.append(row)
    latency = []
    for key, now in sorted(current["latency"].items(), key=_variant_order):
        prev = (previous or {}).get("latency", {}).get(key, {})
        row = {"build": key[0], "variant": key[1], "board": key[2], "threads": key[3],
               "emulated": emulated(current, key[2]), "status": now["status"],
               "error": now.get("error"), "p50_us": now.get("p50_us"),
               "p50_prev": prev.get("p50_us"),
               "p50_median": _median([h["latency"].get(key, {}).get("p50_us")
                                      for h in history]),
               "runs_in_median": sum(1 for h in history
                                     if h["latency"].get(key, {}).get("p50_us") is not None)}
        row["change_vs_prev_pct"] = _pct(row["p50_us"], row["p50_prev"])
        row["change_vs_median_pct"] = _pct(row["p50_us"], row["p50_median"])
        # The side-by-side verdict against the reference (verdict.py); the p50 columns
        # above are a trend across nights, measured in different sessions: no gate.
        row["verdict"] = verdict_of(now)
        row["mark"] = ""
        if row["verdict"] and gate_breached(row["verdict"], params.max_latency_regression_pct):
            row["mark"] = "slower than its reference" + (
                " (emulated: not gated)" if row["emulated"] else "")
        latency.append(row)
    # A board of the previous run that this run's inventory no longer has: its rows stay in
    # the table, marked, rather than vanishing; it is no failure and no gate.
    dropped = sorted(set((previous or {}).get("boards", {})) - set(current["boards"]))
    for key, prev in sorted((previous or {}).get("latency", {}).items(), key=_variant_order):
        if key[2] in dropped:
            latency.append({"build": key[0], "variant": key[1], "board": key[2],
                            "threads": key[3], "emulated": emulated(previous, key[2]),
                            "status": "dropped", "error": None,
                            "p50_us": None, "p50_prev": prev.get("p50_us"), "p50_median": None,
                            "runs_in_median": 0, "change_vs_prev_pct": None,
                            "change_vs_median_pct": None,
                            "mark": "board dropped from the inventory"})
    boards = [dict(b) for _, b in sorted(current["boards"].items())]
    boards += [{"board": b, "status": "dropped", "error": None} for b in dropped]
    return {"accuracy": accuracy, "latency": latency, "boards": boards}


NO_COMPARISON: dict[str, list] = {"accuracy": [], "latency": [], "boards": []}


def verdict_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """A history latency row's verdict columns as verdict.py's dict, or None (timed alone)."""
    if row.get("word") is None or row.get("ratio") is None:
        return None
    return {"ratio": row["ratio"], "low": row.get("ratio_low"), "high": row.get("ratio_high"),
            "p": row.get("p_value"), "word": row["word"],
            "reference_sha256": row.get("reference_sha256")}


def emulated(figures: Figures | None, board: str) -> bool:
    """Whether `board` is an emulator in these figures (history's boards.emulated; a row of
    an older database has no such column: a real board)."""
    return bool(((figures or {}).get("boards", {}).get(board) or {}).get("emulated"))


def board_label(board: str, is_emulated: bool) -> str:
    return f"{board} ({EMULATED})" if is_emulated else board


def breaches(comparison: dict[str, Any], params: NightlyParams) -> list[dict[str, Any]]:
    """Every gate the run breaches: accuracy floors, int8 drift, a latency regression against
    the reference timed side by side (verdict.gate_breached), failed boards and failed cases.
    An emulated board's latency is the emulator's, so it has no regression gate; its board
    and case gates (which include its predictions equalling the host's) count fully."""
    found = []

    def breach(build: str, variant: str, board: str, figure: str, value: Any, limit: str,
               text: str) -> None:
        found.append({"build": build, "variant": variant, "board": board, "figure": figure,
                      "value": value, "limit": limit, "message": text})

    for r in comparison["accuracy"]:
        floor = min_accuracy(r["variant"], params)
        if floor is not None and r["accuracy"] is not None and r["accuracy"] < floor:
            key = floor_key(r["variant"])
            breach(r["build"], r["variant"], "", "accuracy", r["accuracy"], f">= {floor}",
                   f"{r['build']} {r['variant']}: accuracy {100 * r['accuracy']:.2f} % is below "
                   f"the minimum {100 * floor:.2f} % (nightly.{key})")
        if r["variant"] in drift_gated_variants() and r["drift_pt"] is not None and \
                -r["drift_pt"] > params.max_int8_drift_pt:
            breach(r["build"], r["variant"], "", "drift_pt", r["drift_pt"],
                   f">= -{params.max_int8_drift_pt}",
                   f"{r['build']} {r['variant']}: {-r['drift_pt']:.2f} points below Keras, "
                   f"more than nightly.max_int8_drift_pt = {params.max_int8_drift_pt}")
    for b in comparison["boards"]:
        if b["status"] == "failed":
            breach("", "", b["board"], "board", "failed", "status ok",
                   f"board {b['board']}: FAILED: {clean_text(b['error'])}")
    for r in comparison["latency"]:
        where = f"{r['build']} {r['variant']} on {r['board']} x{r['threads']}"
        if r["status"] == "dropped":
            continue
        if r["status"] != "ok":
            breach(r["build"], r["variant"], r["board"], "case", "failed", "status ok",
                   f"{where}: case FAILED: {clean_text(r['error'])}")
            continue
        if r.get("emulated"):
            continue
        v = r.get("verdict")
        if gate_breached(v, params.max_latency_regression_pct):
            breach(r["build"], r["variant"], r["board"], "latency_ratio", v["ratio"],
                   f"interval below 1 + {params.max_latency_regression_pct} %",
                   f"{where}: {v['ratio']:.3f}x its reference "
                   f"{str(v.get('reference_sha256'))[:12]} timed side by side (99 % interval "
                   f"{v['low']:.3f}-{v['high']:.3f}, p={v['p']:.2g}): slower, and a regression "
                   f"of nightly.max_latency_regression_pct = "
                   f"{params.max_latency_regression_pct} % is within the interval")
    return found


def _title(run: dict[str, Any]) -> str:
    return (f"# Nightly run {run['id']} — {run['status']}" if run.get("id") is not None
            else f"# Nightly (no run recorded) — {run['status']}")


def render_markdown(run: dict[str, Any], previous: dict[str, Any] | None, history_ids: list[int],
                    comparison: dict[str, Any], found: list[dict[str, Any]],
                    reproducibility: dict[str, Any] | None, note: str | None = None,
                    changes: Sequence[dict[str, Any]] | None = None) -> str:
    lines = [_title(run), ""]
    if run["status"] == "failed":
        # A failed run has no figures to compare: say so first, and where the last good
        # run's report comes from, so nobody reads an older run's tables as this one's.
        last = (f" The last completed run is run {previous['id']} (started "
                f"{previous['started_utc']}): `python -m pipeline.nightly.report --run "
                f"{previous['id']}` rebuilds its report." if previous else "")
        lines += [f"Started {run['started_utc']}. **This run FAILED**: "
                  f"{escape_md(run.get('message') or 'no reason recorded')}. No figures of this "
                  f"run are compared or gated.{last}", ""]
        if note:
            lines += [f"**{escape_md(note)}**", ""]
        return "\n".join(lines) + "\n"
    verdict = "**all gates pass**" if not found else f"**{len(found)} gate(s) BREACHED**"
    if previous:
        against = (f"Compared with the previous completed run (run {previous['id']} of "
                   f"{previous['started_utc']}) and with the median of the {len(history_ids)} "
                   f"completed run(s) before this one ({', '.join(map(str, history_ids))}).")
    else:
        against = "No earlier completed run to compare with."
    lines += [f"Started {run['started_utc']}, {verdict}. {against}", ""]
    if note:
        lines += [f"**{escape_md(note)}**", ""]
    if found:
        lines += ["## Breaches", "", *(f"- {escape_md(b['message'])}" for b in found), ""]
    if reproducibility:
        lines += ["## Reproducibility", "", f"- {escape_md(reproducibility['summary'])}", ""]
    lines += _accuracy_table(comparison) + _latency_table(comparison)
    lines += _board_notes(comparison, previous)
    if changes is not None:
        lines += ["", *render_changes(changes)]
    lines += ["", "Trends over the last runs: nightly.png. All runs: `python -m pipeline.history`."]
    return "\n".join(lines) + "\n"


def _accuracy_table(comparison: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    return ["## Accuracy, int8 drift, size", "", tabulate(
        [[r["build"], r["variant"], fmt_value(r["accuracy"], ".2f", 100),
          fmt_value(r["accuracy_prev"], ".2f", 100), fmt_value(r["accuracy_median"], ".2f", 100),
          fmt_value(r["drift_pt"], "+.2f"), fmt_value(r["drift_pt_prev"], "+.2f"),
          fmt_value(r["bytes"], ","), fmt_value(r["bytes_prev"], ","), r["mark"]]
         for r in comparison["accuracy"]],
        headers=["build", "variant", "acc %", "prev", "median", "drift pt", "prev", "bytes",
                 "prev", "mark"], tablefmt="github", disable_numparse=True), ""]


def _latency_table(comparison: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    return ["## p50 latency per board (µs)", "", tabulate(
        [[r["build"], r["variant"], escape_md(board_label(r["board"], r.get("emulated"))),
          r["threads"],
          fmt_value(r["p50_us"], ".1f"),
          fmt_value(r["p50_prev"], ".1f"), fmt_value(r["change_vs_prev_pct"], "+.1f"),
          fmt_value(r["p50_median"], ".1f"), fmt_value(r["change_vs_median_pct"], "+.1f"),
          describe(r.get("verdict")) or ("alone" if r["status"] == "ok" else ""),
          r["mark"] or ("" if r["status"] == "ok" else f"FAILED {escape_md(r['error'])}")]
         for r in comparison["latency"]],
        headers=["build", "variant", "board", "thr", "p50", "prev", "Δ% prev", "median",
                 "Δ% median", "vs reference", "mark"], tablefmt="github",
        disable_numparse=True), "",
        "vs reference: tonight's model timed side by side with the last accepted night's on "
        "the same board, interleaved in rounds: ratio of medians [99 % interval], Mann-Whitney "
        "p, and faster / same / slower, or environment when the bytes are the same (the ratio "
        "then measures the board and its software). The gate reads this column; the p50 "
        "columns are a trend across nights (other sessions, other load), not a gate.", ""]


def _board_notes(comparison: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """One line per emulated, failed or dropped board."""
    notes: list[str] = []
    for b in comparison["boards"]:
        name = escape_md(board_label(b["board"], bool(b.get("emulated"))))
        if b.get("emulated") and b["status"] != "dropped":
            notes.append(f"- board **{name}**: its latency is the emulator's, never a board's: "
                         "its latency verdict is shown, never gated; its board, case and "
                         "correctness gates count")
        if b["status"] == "failed":
            notes.append(f"- board **{name}** FAILED: {escape_md(b['error'])}")
        elif b["status"] == "dropped":
            notes.append(f"- board **{name}** dropped from the inventory since "
                         f"run {previous['id'] if previous else '?'} (its last figures are "
                         "shown as prev)")
    return notes


def render_chart(runs: Sequence[dict[str, Any]], figures: dict[int, Figures], path: Path,
                 params: NightlyParams | None = None) -> None:
    """Trend chart over `runs` (oldest first): small multiples per build and board, with the
    gate lines of `params` (pipeline/nightly/charts.py draws it)."""
    from pipeline.nightly.charts import gates_of, write_nightly_chart

    write_nightly_chart(runs, figures, path, gates_of(params) if params else None)


def assess(db: Any, run_id: int | None, current: Figures, params: NightlyParams,
           failed: bool = False) -> dict[str, Any]:
    """Compare run `run_id` (its figures: `current`) with the completed runs before it and
    apply the gates. Reads only earlier runs, so it works before this run's row is final.
    A failed run is neither compared nor gated."""
    from pipeline.nightly import history

    earlier = history.completed_runs(db, params.history_runs,
                                     None if run_id is None else run_id - 1)
    previous = earlier[-1] if earlier else None
    figs = history.figures(db, [r["id"] for r in earlier])
    if failed:
        comparison = {k: list(v) for k, v in NO_COMPARISON.items()}
    else:
        comparison = compare(current, figs[previous["id"]] if previous else None,
                             [figs[r["id"]] for r in earlier], params)
    # Change points need a longer view than the gate's median: up to CHANGE_NIGHTS nights.
    trend = [] if failed else history.completed_runs(
        db, CHANGE_NIGHTS, None if run_id is None else run_id - 1)
    return {"earlier": earlier, "figures": figs, "comparison": comparison,
            "breaches": breaches(comparison, params), "trend_runs": trend,
            "trend_figures": history.figures(db, [r["id"] for r in trend])}


def write_reports(run: dict[str, Any], current: Figures, assessment: dict[str, Any],
                  params: NightlyParams, reports_dir: Path,
                  reproducibility: dict[str, Any] | None = None, note: str | None = None) -> None:
    """Write nightly.json, nightly.md and nightly.png for `run` (its runs-table row).

    `note` says what the report cannot show otherwise (e.g. the run is not yet in the
    database). A failed run's chart has the earlier runs and this one without points."""
    earlier = assessment["earlier"]
    previous = earlier[-1] if earlier else None
    history_ids = [r["id"] for r in earlier]
    reports_dir = Path(reports_dir)
    changes = None
    if run.get("status") != "failed" and "trend_runs" in assessment:
        changes = find_changes([*assessment["trend_runs"], run],
                               {**assessment["trend_figures"], run.get("id"): current})
    write_json(reports_dir / NIGHTLY_JSON, {
        "run": run, "previous_run": previous["id"] if previous else None,
        "median_of_runs": history_ids, "gates": section_dict(params),
        "breaches": assessment["breaches"], "reproducibility": reproducibility, "note": note,
        **assessment["comparison"], "change_points": changes})
    write_text(reports_dir / NIGHTLY_MD, render_markdown(
        run, previous, history_ids, assessment["comparison"], assessment["breaches"],
        reproducibility, note, changes))
    shown = [*earlier, run] if run.get("id") is not None else list(earlier)
    render_chart(shown, {**assessment["figures"], run.get("id"): current},
                 reports_dir / NIGHTLY_PNG, params)


def main(argv: Sequence[str] | None = None) -> None:
    from pipeline.nightly import history

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Layout(Path("artifacts")).history_db())
    parser.add_argument("--run", type=int, help="run id (default: the last completed run)")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    parser.add_argument("--out", type=Path, default=Layout(Path("artifacts")).reports_dir())
    args = parser.parse_args(argv)
    try:
        db = history.connect_reader(args.db)  # never creates or changes the database
        last = history.completed_runs(db, 1)
        run_id = args.run or (last[0]["id"] if last else None)
        if run_id is None:
            raise SystemExit(f"error: no completed run in {args.db}")
        run = history.run_row(db, run_id)
        if run is None:
            raise SystemExit(f"error: no run {run_id} in {args.db} "
                             "(python -m pipeline.history lists the runs)")
        params = load_params(args.params, os.environ.get("PIPELINE_SET", "")).nightly
        current = history.figures(db, [run_id])[run_id]
        assessment = assess(db, run_id, current, params, failed=run["status"] == "failed")
    except history.HistoryError as exc:
        raise SystemExit(f"error: {exc}") from None
    write_reports(run, current, assessment, params, args.out)
    for b in assessment["breaches"]:
        print(f"BREACH: {b['message']}")


if __name__ == "__main__":
    main()
