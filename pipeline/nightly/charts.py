"""The nightly trend chart (reports/nightly.png): small multiples an engineer can read.

One column per build: its test accuracy per variant, then its int8 drift; below, one row per
board: that build's p50 latency per variant and thread count. Every series in a panel has
its own colour and marker (by variant, the same in every panel) and line style (by thread
count), so no two share a look; Keras is a wide pale band under float32, so the two stay
visible when they coincide (they usually do). The accuracy and drift panels span at least a
point and draw the gate lines; the x axis is the runs' start dates, a few of them labelled.

`nightly_figure` builds the matplotlib figure (tests inspect it); `write_nightly_chart` saves
it through pipeline.core.files. Matplotlib is imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import atomic_path
from pipeline.core.text import EMULATED
from pipeline.core.variants import (KERAS, VARIANTS, accuracy_floor, drift_gated_variants,
                                     rank)

# At most this many build columns: beyond it the panels become unreadable; nightly.md has
# every build, and the chart's title says how many are left out.
MAX_BUILD_COLUMNS = 6
# Per variant, by display rank (Keras first, then the registry's order): colour and marker.
# Colour-blind-safe (Okabe-Ito) colours; the markers tell the series apart without colour.
COLOURS = ("#999999", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
           "#F0E442", "#000000")
MARKERS = ("o", "o", "s", "^", "D", "v", "P", "X", "*")
# Per thread count, in ascending order within a panel.
LINE_STYLES = ("-", "--", ":", "-.")
# At most this many runs get a date label on the run axis: about as many as fit under a
# 5.2-inch panel at 7 pt (every run keeps its point).
MAX_RUN_TICKS = 6
# An accuracy or drift panel spans at least this many points (±0.5 around the data)...
MIN_SPAN_PT = 1.0
# ...and reaches a gate line this close to the data; a farther one is named at the edge.
GATE_REACH_PT = 3.0
GATE_COLOUR = "#C00000"


def style(variant: str, thread_index: int = 0, nested: bool = False) -> dict[str, Any]:
    """Line style of one series: colour and marker by variant, line style by thread count.

    `nested` (the accuracy and drift panels, where variants usually have the same figures:
    float32 and its ONNX export, int8 and its ONNX forms): each later variant's marker and
    line are a size larger and drawn behind the earlier ones, so coinciding series nest (a
    ring around a ring) instead of the last one drawn hiding the others."""
    r = min(rank(variant), len(COLOURS) - 1)
    grow = r - 1 if nested else 0
    out = {"color": COLOURS[r], "marker": MARKERS[r] or None,
           "linestyle": LINE_STYLES[thread_index % len(LINE_STYLES)],
           "markersize": 5 + 0.9 * grow, "linewidth": 1.4 + 0.25 * grow}
    if variant == KERAS:  # a wide pale band: float32 drawn on top of it stays visible
        # (big pale dots too, so a single run still shows it)
        out.update(linewidth=7, markersize=13, alpha=0.35, solid_capstyle="round", zorder=1)
    else:
        out.update(markerfacecolor="white" if r % 2 == 0 else COLOURS[r],
                   zorder=2 + 0.01 * (len(COLOURS) - r))
    return out


def run_dates(runs: Sequence[dict[str, Any]]) -> list[datetime] | None:
    """Each run's start (UTC), or None when any run lacks one or has one that is not a time
    (then the x axis is run ids: a malformed old row must not cost tonight's chart)."""
    dates = []
    for run in runs:
        stamp = run.get("started_utc")
        try:
            dates.append(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")))
        except ValueError:
            return None
    return dates


def _nan(value: float | None, scale: float = 1.0) -> float:
    return float("nan") if value is None else value * scale


@dataclass(frozen=True)
class Gates:
    """The gate lines the accuracy and drift panels draw: the accuracy floor per floor kind
    ("float", "int8"; see pipeline/core/variants.py) in percent, and the int8 drift limit in
    points (a breach is a drift below minus it)."""
    min_accuracy_pct: dict[str, float]
    max_drift_pt: float


def gates_of(params: Any) -> Gates:
    """The chart's gates from the `[nightly]` params (pipeline.core.params.NightlyParams)."""
    return Gates({"float": 100 * params.min_accuracy_float32,
                  "int8": 100 * params.min_accuracy_int8}, params.max_int8_drift_pt)


def value_limits(values: Sequence[float], gates: Sequence[float] = ()) -> tuple[float, float]:
    """y limits of an accuracy or drift panel: the data with a margin, at least MIN_SPAN_PT
    wide (an unchanged model is a flat line, not a cliff over a 0.01-point axis), and
    stretched to each gate line within GATE_REACH_PT of the data."""
    finite = [v for v in values if not math.isnan(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    for gate in gates:
        if lo - GATE_REACH_PT <= gate <= hi + GATE_REACH_PT:
            lo, hi = min(lo, gate), max(hi, gate)
    middle, half = (lo + hi) / 2, max((hi - lo) / 2, MIN_SPAN_PT / 2)
    half *= 1.15  # room for the markers at the extremes
    return middle - half, middle + half


def draw_gate(ax: Any, y: float, label: str) -> None:
    """A gate as a dashed red line labelled at its right end; a gate outside the panel's
    limits is named at the edge it lies beyond, so it is never silently off-screen."""
    lo, hi = ax.get_ylim()
    ax.axhline(y, color=GATE_COLOUR, linestyle=(0, (5, 3)), linewidth=1.1, zorder=3, gid="gate")
    inside = lo <= y <= hi
    where = y if inside else (lo if y < lo else hi)
    text = label if inside else f"{label} ({'below' if y < lo else 'above'})"
    ax.annotate(text, (1.0, where), xycoords=("axes fraction", "data"), xytext=(-3, 3 if
                inside or y > hi else -10), textcoords="offset points", ha="right",
                fontsize=7, color=GATE_COLOUR, gid="gate-label")
    ax.set_ylim(lo, hi)


def accuracy_panels(ax_acc: Any, ax_drift: Any, build: str, ids: Sequence[int], xs: Sequence,
                    figures: dict[int, dict[str, Any]], gates: Gates | None) -> None:
    """A build's accuracy per variant and int8 drift, with their gate lines."""
    variants = sorted({k[1] for i in ids for k in figures[i]["accuracy"] if k[0] == build},
                      key=lambda v: (rank(v), v))
    drifted = set(drift_gated_variants())
    accuracy, drift = [], []
    for variant in variants:
        rows = [figures[i]["accuracy"].get((build, variant), {}) for i in ids]
        ys = [_nan(r.get("accuracy"), 100) for r in rows]
        accuracy += ys
        ax_acc.plot(xs, ys, label=f"{variant} (wide band)" if variant == KERAS else variant,
                    **style(variant, nested=True))
        if variant in drifted:
            ys = [_nan(r.get("drift_pt")) for r in rows]
            drift += ys
            ax_drift.plot(xs, ys, label=variant, **style(variant, nested=True))
    floors = {kind: pct for kind, pct in (gates.min_accuracy_pct if gates else {}).items()
              if any(accuracy_floor(v) == kind for v in variants if v in VARIANTS)}
    ax_acc.set_ylim(*value_limits(accuracy, list(floors.values())))
    for pct in sorted(set(floors.values())):  # equal floors: one line, one label
        kinds = " and ".join(sorted(kind for kind, p in floors.items() if p == pct))
        draw_gate(ax_acc, pct, f"{kinds} floor {pct:g} %")
    ax_drift.axhline(0, color="#bbbbbb", linewidth=0.8, zorder=0)
    ax_drift.set_ylim(*value_limits([0.0, *drift], [-gates.max_drift_pt] if gates else []))
    if gates:
        draw_gate(ax_drift, -gates.max_drift_pt, f"drift limit −{gates.max_drift_pt:g} pt")
    ax_acc.set_title(f"{build}: test accuracy")
    ax_acc.set_ylabel("%")
    ax_drift.set_title(f"{build}: int8 drift vs Keras")
    ax_drift.set_ylabel("points")


def latency_panel(ax: Any, build: str, board: str, ids: Sequence[int], xs: Sequence,
                  figures: dict[int, dict[str, Any]]) -> None:
    """A build's p50 on one board per variant and thread count, on a log axis. Each board has
    its own panel, so an emulated board's milliseconds never squash a real board's µs."""
    from pipeline.core.plot import plain_log_labels

    keys = sorted({k for i in ids for k in figures[i]["latency"]
                   if k[0] == build and k[2] == board},
                  key=lambda k: (rank(k[1]), k[1], k[3]))
    threads = sorted({k[3] for k in keys})
    for key in keys:
        ax.plot(xs, [_nan(figures[i]["latency"].get(key, {}).get("p50_us")) for i in ids],
                label=f"{key[1]} ×{key[3]}", **style(key[1], threads.index(key[3])))
    # The label the reports use (pipeline/bench/report.py): emulated in any run shown.
    emulated = any((figures[i]["boards"].get(board) or {}).get("emulated") for i in ids)
    ax.set_title(f"{build} on {board}{f' ({EMULATED})' if emulated else ''}: p50 latency")
    ax.set_ylabel("µs (log)")
    if ax.lines:
        ax.set_yscale("log")  # variants differ several-fold; log keeps all readable
        plain_log_labels(ax.yaxis)


def legends(axes: Any) -> None:
    """One legend per row, beside its last panel: inside a panel it hides the lines it
    names. The row's panels share their series' looks (by variant and thread count)."""
    for row in axes:
        handles = {}
        for ax in row:
            ax.grid(alpha=0.3)
            if not [line for line in ax.lines if line.get_gid() != "gate"]:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                        color="#888888")
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        if handles:
            row[-1].legend(handles.values(), handles.keys(), fontsize=8, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def run_ticks(ids: Sequence[int], dates: Sequence[datetime] | None) -> tuple[list, list[str]]:
    """Tick positions and labels for the run axis: at most MAX_RUN_TICKS runs labelled, the
    latest always, each with its date and number, and no two closer than 1/MAX_RUN_TICKS of
    the axis (nights are not evenly spaced: a re-run an hour later would put its label on
    top of the night's), so many nights never crowd the axis."""
    if dates:
        where = [(d - dates[0]).total_seconds() for d in dates]
    else:
        where = [float(i) for i in range(len(ids))]
    gap = (where[-1] - where[0]) / MAX_RUN_TICKS if ids else 0.0
    chosen: list[int] = []
    for i in range(len(ids) - 1, -1, -1):  # from the latest back
        if not chosen or where[chosen[-1]] - where[i] >= gap:
            chosen.append(i)
    chosen = chosen[::-1][-MAX_RUN_TICKS:]
    xs = [dates[i] if dates else ids[i] for i in chosen]
    labels = [f"{dates[i]:%Y-%m-%d}\n{dates[i]:%H:%M} #{ids[i]}" if dates else str(ids[i])
              for i in chosen]
    return xs, labels


def nightly_figure(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]],
                   gates: Gates | None = None) -> Any:
    """The trend chart over `runs` (oldest first; runs-table rows) as a matplotlib Figure,
    with the gate lines of `gates` on the accuracy and drift panels."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build server
    import matplotlib.pyplot as plt

    ids = [r["id"] for r in runs]
    dates = run_dates(runs)
    xs = dates if dates else ids
    all_builds = sorted({k[0] for i in ids for k in figures[i]["accuracy"]}
                        | {k[0] for i in ids for k in figures[i]["latency"]})
    builds = all_builds[:MAX_BUILD_COLUMNS] or ["(no build)"]
    boards = sorted({k[2] for i in ids for k in figures[i]["latency"]})
    n_rows = 2 + len(boards)
    fig, axes = plt.subplots(n_rows, len(builds), figsize=(5.2 * len(builds) + 2.2,
                                                            2.9 * n_rows + 0.8),
                             squeeze=False, sharex=True)
    for col, build in enumerate(builds):
        accuracy_panels(axes[0][col], axes[1][col], build, ids, xs, figures, gates)
        for row, board in enumerate(boards, start=2):
            latency_panel(axes[row][col], build, board, ids, xs, figures)
    legends(axes)
    ticks, labels = run_ticks(ids, dates)
    for ax in axes[-1]:
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_xlabel("run start (UTC) and run number" if dates else "run")
    left_out = len(all_builds) - len(builds)
    title = ("Nightly trends" if not ids else f"Nightly run {ids[0]}" if len(ids) == 1
             else f"Nightly trends over runs {ids[0]}–{ids[-1]}")
    if left_out > 0:
        title += f" (first {len(builds)} of {len(all_builds)} builds; all in nightly.md)"
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def write_nightly_chart(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]],
                        path: Path, gates: Gates | None = None) -> None:
    """Draw `nightly_figure` to `path` (PNG), written under a temporary name."""
    import matplotlib.pyplot as plt

    fig = nightly_figure(runs, figures, gates)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:  # a write that fails (a full disk) must not leave the figure open in pyplot
        plt.close(fig)
