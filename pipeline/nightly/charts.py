"""The nightly trend chart (reports/nightly.png): small multiples an engineer can read.

One column per build: its test accuracy per variant, then its int8 drift; below, one row per
board: that build's p50 latency per variant and thread count. Every series in a panel has
its own colour and marker (by variant, the same in every panel) and line style (by thread
count), so no two share a look; Keras is a wide pale band under float32, so the two stay
visible when they coincide (they usually do). The x axis is the runs' start dates.

`nightly_figure` builds the matplotlib figure (tests inspect it); `write_nightly_chart` saves
it through pipeline.core.files. Matplotlib is imported inside the functions.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import atomic_path
from pipeline.core.text import EMULATED
from pipeline.core.variants import KERAS, drift_gated_variants, rank

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
# Label the ticks with each run's date and number while there is room for them.
MAX_RUN_TICKS = 12


def style(variant: str, thread_index: int = 0) -> dict[str, Any]:
    """Line style of one series: colour and marker by variant, line style by thread count."""
    r = min(rank(variant), len(COLOURS) - 1)
    out = {"color": COLOURS[r], "marker": MARKERS[r] or None,
           "linestyle": LINE_STYLES[thread_index % len(LINE_STYLES)], "markersize": 6,
           "linewidth": 1.6}
    if variant == KERAS:  # a wide pale band: float32 drawn on top of it stays visible
        # (big pale dots too, so a single run still shows it)
        out.update(linewidth=7, markersize=13, alpha=0.35, solid_capstyle="round", zorder=1)
    else:
        out.update(markerfacecolor="white" if r % 2 == 0 else COLOURS[r], zorder=2)
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


def nightly_figure(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]]) -> Any:
    """The trend chart over `runs` (oldest first; runs-table rows) as a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build server
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from pipeline.core.plot import plain_log_labels

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
    drifted = set(drift_gated_variants())
    for col, build in enumerate(builds):
        ax_acc, ax_drift = axes[0][col], axes[1][col]
        variants = sorted({k[1] for i in ids for k in figures[i]["accuracy"] if k[0] == build},
                          key=lambda v: (rank(v), v))
        for variant in variants:
            rows = [figures[i]["accuracy"].get((build, variant), {}) for i in ids]
            ax_acc.plot(xs, [_nan(r.get("accuracy"), 100) for r in rows],
                        label=f"{variant} (wide band)" if variant == KERAS else variant,
                        **style(variant))
            if variant in drifted:
                ax_drift.plot(xs, [_nan(r.get("drift_pt")) for r in rows], label=variant,
                              **style(variant))
        ax_acc.set_title(f"{build}: test accuracy")
        ax_acc.set_ylabel("%")
        ax_drift.axhline(0, color="#bbbbbb", linewidth=0.8, zorder=0)
        ax_drift.set_title(f"{build}: int8 drift vs Keras")
        ax_drift.set_ylabel("points")
        for row, board in enumerate(boards, start=2):
            ax = axes[row][col]
            keys = sorted({k for i in ids for k in figures[i]["latency"]
                           if k[0] == build and k[2] == board},
                          key=lambda k: (rank(k[1]), k[1], k[3]))
            threads = sorted({k[3] for k in keys})
            for key in keys:
                ax.plot(xs, [_nan(figures[i]["latency"].get(key, {}).get("p50_us")) for i in ids],
                        label=f"{key[1]} ×{key[3]}", **style(key[1], threads.index(key[3])))
            # The label the reports use (pipeline/bench/report.py): emulated in any run shown.
            emulated = any((figures[i]["boards"].get(board) or {}).get("emulated") for i in ids)
            ax.set_title(f"{build} on {board}{f' ({EMULATED})' if emulated else ''}: "
                         "p50 latency")
            ax.set_ylabel("µs (log)")
            if ax.lines:
                ax.set_yscale("log")  # variants differ several-fold; log keeps all readable
                plain_log_labels(ax.yaxis)
    for row in axes:
        # One legend per row, beside its last panel: inside a panel it hides the lines it
        # names. The row's panels share their series' looks (by variant and thread count).
        handles = {}
        for ax in row:
            ax.grid(alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                        color="#888888")
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        if handles:
            row[-1].legend(handles.values(), handles.keys(), fontsize=8, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    bottom = axes[-1]
    for ax in bottom:
        if dates:
            if len(dates) <= MAX_RUN_TICKS:
                ax.set_xticks(dates, [f"{d:%Y-%m-%d}\n{d:%H:%M} #{i}"
                                      for d, i in zip(dates, ids)], fontsize=7)
            else:
                locator = mdates.AutoDateLocator()
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.set_xlabel("run start (UTC) and run number")
        else:
            ax.set_xticks(ids)
            ax.set_xlabel("run")
    left_out = len(all_builds) - len(builds)
    title = ("Nightly trends" if not ids else f"Nightly run {ids[0]}" if len(ids) == 1
             else f"Nightly trends over runs {ids[0]}–{ids[-1]}")
    if left_out > 0:
        title += f" (first {len(builds)} of {len(all_builds)} builds; all in nightly.md)"
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def write_nightly_chart(runs: Sequence[dict[str, Any]], figures: dict[int, dict[str, Any]],
                        path: Path) -> None:
    """Draw `nightly_figure` to `path` (PNG), written under a temporary name."""
    import matplotlib.pyplot as plt

    fig = nightly_figure(runs, figures)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
