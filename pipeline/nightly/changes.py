"""Change points over the nights: when did a case's p50 or its A/A ratio step, and what changed.

A series is one build x variant x board x threads over the completed nights, oldest first: its
p50 (a trend across sessions) and its A/A ratio (the side-by-side ratio of a night whose model
had the same bytes as its reference: a measure of the board and its software). Change points
come from ruptures (KernelCPD, linear kernel: a least-squares cost, in C) on log values,
scaled by a robust noise estimate (the median absolute difference between consecutive
nights), with a BIC-like penalty; a segment holds at least MIN_NIGHTS nights. Each change is
named by the first night of the new segment, its size (median after / median before), and what differed between that
night and the one before according to the history and the run manifests (commit, params,
inputs, packages, the board's runtime versions, its machine line).

Why ruptures (measured on this host, 2026-12-06): it installs from a wheel with numpy and scipy
only; MongoDB's signal-processing-algorithms requires numpy < 2 (TensorFlow 2.21 needs >= 2)
and apache-otava pins numpy 2.2.0 exactly and pulls BigQuery, Slack and Postgres clients.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.layout import Layout

# Fewer nights than this in a segment are not a level: one bad night is an outlier, not a
# change (the verdict of that night already speaks for it).
MIN_NIGHTS = 3
# Penalty per change point, in units of log(n) x the noise variance (BIC uses 1-2; higher
# asks for a clearer step: on a 2-core host shared with other jobs the p50 wanders).
PENALTY_PER_LOG_N = 3.0
# Changes smaller than about this (0.5 %, in log units) are never told from noise.
NOISE_FLOOR = 0.005


def change_points(values: Sequence[float], min_nights: int = MIN_NIGHTS,
                  penalty: float = PENALTY_PER_LOG_N) -> list[int]:
    """Indexes where a new level starts (0 < i < len(values)); [] for a flat or short series.
    Values must be positive (times, ratios)."""
    import numpy as np
    import ruptures

    raw = np.log(np.asarray(values, dtype=float))
    if len(raw) < 2 * min_nights or not np.all(np.isfinite(raw)):
        return []
    # A running median of three nights: one bad night is not a level, a step stays a step.
    x = raw.copy()
    x[1:-1] = np.median(np.stack([raw[:-2], raw[1:-1], raw[2:]]), axis=0)
    # Noise of one night from consecutive differences (robust to the step itself), at least
    # NOISE_FLOOR: a series of identical figures has no noise to scale by.
    sigma = max(float(np.median(np.abs(np.diff(raw)))) / (0.6745 * math.sqrt(2)),
                NOISE_FLOOR)
    algo = ruptures.KernelCPD(kernel="linear", min_size=min_nights).fit((x / sigma)[:, None])
    return [int(i) for i in algo.predict(pen=penalty * math.log(len(x)))[:-1]]


def series(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]]
           ) -> dict[tuple[str, tuple], list[tuple[int, float]]]:
    """(("p50" | "A/A ratio"), case key) -> [(run id, value)], oldest first."""
    out: dict[tuple[str, tuple], list[tuple[int, float]]] = {}
    for run in runs:
        for key, row in figures.get(run["id"], {}).get("latency", {}).items():
            if row.get("status") != "ok":
                continue
            if row.get("p50_us"):
                out.setdefault(("p50", key), []).append((run["id"], float(row["p50_us"])))
            if row.get("word") == "environment" and row.get("ratio"):
                out.setdefault(("A/A ratio", key), []).append((run["id"], float(row["ratio"])))
    return out


def _manifest(run: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run.get("run_dir") or "") / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _board_runtimes(run: dict[str, Any], board: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(Layout(Path(run.get("run_dir") or "")).board_result(board).read_text())
    except (OSError, ValueError):
        return None
    return {"runtimes": doc.get("runtimes"), "machine": doc.get("machine")}


def what_changed(before: dict[str, Any], after: dict[str, Any], board: str) -> list[str]:
    """What differs between two nights (database rows with run_dir), as short phrases."""
    found = []
    for field, label in (("commit_sha", "commit"), ("params_hash", "params"),
                         ("inputs_hash", "inputs (params, code, dataset)")):
        if before.get(field) != after.get(field):
            found.append(f"{label} {str(before.get(field))[:10]} → {str(after.get(field))[:10]}")
    old, new = _manifest(before), _manifest(after)
    if old and new:
        if old.get("code_hash") != new.get("code_hash"):
            found.append("code")
        packages = [f"{name} {old['packages'].get(name)} → {version}"
                    for name, version in sorted((new.get("packages") or {}).items())
                    if (old.get("packages") or {}).get(name) != version]
        if packages:
            found.append("packages: " + ", ".join(packages))
        if old.get("machine") != new.get("machine"):
            found.append("host machine")
    else:
        found.append("manifests of those nights pruned (keep_runs)")
    old_board, new_board = _board_runtimes(before, board), _board_runtimes(after, board)
    if old_board and new_board:
        if old_board["runtimes"] != new_board["runtimes"]:
            found.append(f"board {board}'s runtime versions")
        if old_board["machine"] != new_board["machine"]:
            found.append(f"board {board}'s machine line")
    return found or ["nothing recorded (load, temperature or another job on the board?)"]


def find_changes(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Every change point of every series over `runs` (oldest first, with this run last)."""
    import numpy as np

    by_id = {r["id"]: r for r in runs}
    order = [r["id"] for r in runs]
    changes = []
    for (figure, key), points in sorted(series(runs, figures).items(), key=lambda kv: str(kv)):
        values = [v for _, v in points]
        starts = change_points(values)
        bounds = [0, *starts, len(values)]
        for i, start in enumerate(starts):
            before = float(np.median(values[bounds[i]:start]))
            after = float(np.median(values[start:bounds[i + 2]]))
            night, prior = points[start][0], points[start - 1][0]
            changes.append({
                "figure": figure, "build": key[0], "variant": key[1], "board": key[2],
                "threads": key[3], "run_id": night,
                "started_utc": by_id[night].get("started_utc"), "before": before,
                "after": after, "change_pct": (after / before - 1) * 100,
                "nights_before": start - bounds[i], "nights_after": bounds[i + 2] - start,
                "what_changed": what_changed(by_id[prior], by_id[night], key[2])
                if order.index(night) > 0 else []})
    return changes


def render(changes: Sequence[dict[str, Any]]) -> list[str]:
    """nightly.md's section: one line per change point."""
    from pipeline.core.text import escape_md

    lines = ["## Change points", ""]
    if not changes:
        return lines + ["No series changed level over the recorded nights (ruptures KernelCPD, at "
                        f"least {MIN_NIGHTS} nights per level).", ""]
    for c in changes:
        unit = " µs" if c["figure"] == "p50" else ""
        lines.append(
            f"- {escape_md(c['build'])} {escape_md(c['variant'])} on {escape_md(c['board'])} "
            f"x{c['threads']}, {c['figure']}: changed at run {c['run_id']} "
            f"({c['started_utc']}) by {c['change_pct']:+.1f} % ({c['before']:.3g}{unit} over "
            f"{c['nights_before']} nights → {c['after']:.3g}{unit} over {c['nights_after']}); "
            f"that night: {escape_md('; '.join(c['what_changed']))}")
    return lines + [""]
