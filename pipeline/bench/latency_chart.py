"""The latency chart (reports/latency.png), drawn from the latency report's rows.

A panel per build and kind of board: real boards on one linear axis from 0, emulated boards
(the virtual K1: qemu's speed, not a board's) on their own, so a real board's microseconds
never sit squashed on 0 under the emulator's milliseconds. In a panel, per variant (TFLite
ones, then ONNX Runtime ones; blue and orange) a point at the p50 with p10-p90 whiskers per
board and thread count (one marker shape each), the value written beside it with the
int8/float32 or ORT/TFLite ratio. A row the board has no runtime for (NO RUNTIME) is a
marked gap: a hollow grey marker at 0 and the words, never a missing point.

Horizontal, so long variant names and value labels never collide; points, not bars, so no
bar length is read against an arbitrary log floor. `latency_figure` builds the Figure (tests
read it); `write_latency_chart` saves it. Matplotlib is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import atomic_path
from pipeline.core.formats import FORMATS
from pipeline.core.text import EMULATED, clean_text
from pipeline.core.variants import VARIANTS, rank

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# One colour per runtime family (core/formats.py), so ORT beside TFLite reads at a glance.
COLOURS = {f.key: f.colour for f in FORMATS.values()}
GAP_COLOUR = "#888888"
# Room right of the longest whisker for its value label, as a share of the axis.
LABEL_ROOM = 1.45
# A panel's axis reaches the longest p90 whisker, but at most this many times the slowest p50:
# one noisy p90 on a busy host must not squash every point of the panel onto 0. A whisker cut
# there says where it ends.
WHISKER_REACH = 3.0


def runtime_family(variant: str) -> str:
    """The runtime family a variant's rows are timed under, for chart labels."""
    known = VARIANTS.get(variant)
    return FORMATS[known.format if known else "tflite"].runtime


def chart_panels(rows: Sequence[dict]) -> list[tuple[str, bool, list[dict]]]:
    """(build, emulated, its rows) per panel, real boards first: the timed rows and the
    NO RUNTIME rows (a board error has no build: latency.md shows it)."""
    drawn = [r for r in rows if r.get("build") and (r.get("p50_us") or "missing" in r)]
    panels = []
    for build in sorted({r["build"] for r in drawn}):
        for emulated in (False, True):
            mine = [r for r in drawn if r["build"] == build and bool(r.get("emulated")) == emulated]
            if mine:
                panels.append((build, emulated, mine))
    return panels


def value_text(r: dict) -> str:
    text = f"{r['p50_us']:.1f} µs"
    if r.get("ort_over_tflite"):
        text += f"  ({r['ort_over_tflite']:.2f}x TFLite int8)"
    elif r.get("int8_over_float32"):
        text += f"  ({r['int8_over_float32']:.2f}x float32)"
    return text


def draw_row(ax: Any, r: dict, y: float, marker: str, top: float) -> None:
    """One board x threads of one variant: a point with whiskers, or a marked gap. `top` is
    where the panel's axis cuts whiskers: a longer one is labelled with its p90."""
    case = f"{r['variant']} {r['board']} x{r['threads']}"
    if "missing" not in r:
        p90 = r.get("p90_us") or r["p50_us"]
        fmt = VARIANTS[r["variant"]].format if r["variant"] in VARIANTS else "tflite"
        bars = ax.errorbar(r["p50_us"], y, capsize=3, markersize=6, fmt=marker,
                           xerr=[[r["p50_us"] - (r.get("p10_us") or r["p50_us"])],
                                 [p90 - r["p50_us"]]], color=COLOURS.get(fmt, "#55a868"))
        bars[0].set_gid(case)
        cut = p90 > top
        # A cut whisker's label sits above its end, inside the axis.
        ax.annotate(value_text(r) + (f"  (p90 {p90:.1f} µs, off the axis ▸)" if cut else ""),
                    (min(p90, top * LABEL_ROOM), y), textcoords="offset points",
                    xytext=(-4, 4) if cut else (6, -3), ha="right" if cut else "left",
                    fontsize=7.5, gid="cut-whisker" if cut else None)
        return
    ax.plot([0], [y], marker=marker, markerfacecolor="none", color=GAP_COLOUR, markersize=6,
            linestyle="none", clip_on=False, gid=f"gap {case}")
    ax.annotate(f"{clean_text(r['missing']).split(' - ', 1)[0]} ({r['board']} x{r['threads']})",
                (0, y), textcoords="offset points", xytext=(8, -3), fontsize=7.5,
                color=GAP_COLOUR, gid="gap-label")


def draw_panel(ax: Any, build: str, emulated: bool, mine: Sequence[dict],
               series: Sequence[tuple[str, Any]]) -> None:
    """A build's rows on one kind of board, on a linear axis from 0 sized by its own rows.
    `series` is every panel's (board, threads): its index picks the marker, as in the legend."""
    variants = sorted({r["variant"] for r in mine}, key=lambda v: (rank(v), v))
    timed = [r for r in mine if "missing" not in r]
    top = min(max((r.get("p90_us") or r["p50_us"] for r in timed), default=1.0),
              WHISKER_REACH * max((r["p50_us"] for r in timed), default=1.0))
    here = [s for s in series if any((r["board"], r["threads"]) == s for r in mine)]
    step = 0.8 / max(len(here), 1)
    for y, variant in enumerate(variants):
        for k, group in enumerate(here):
            r = next((r for r in mine if (r["board"], r["threads"]) == group
                      and r["variant"] == variant), None)
            if r is not None:
                draw_row(ax, r, y + (k - (len(here) - 1) / 2) * step,
                         MARKERS[series.index(group) % len(MARKERS)], top)
    ax.set_yticks(range(len(variants)),
                  [f"{v}\n({runtime_family(v)})" for v in variants], fontsize=8)
    ax.set_ylim(len(variants) - 0.5, -0.5)  # registry order, top to bottom
    ax.set_xlim(0, top * LABEL_ROOM)
    ax.set_xlabel("latency per invoke, µs (p50, whiskers p10-p90; lower is better)", fontsize=8)
    ax.set_title(f"{build} on emulated boards ({EMULATED}: the emulator's speed, not a board's)"
                 if emulated else build, fontsize=10, loc="left")
    ax.set_gid(f"{build} {'emulated' if emulated else 'real'}")
    ax.grid(axis="x", alpha=0.3)


def legend_and_title(fig: Any, rows: Sequence[dict], series: Sequence[tuple[str, Any]],
                     documents: Sequence[dict[str, Any]], made_utc: str) -> int:
    """One legend for all panels (grey markers: the colour says the runtime) and the title
    naming each board's CPU and date; the number of title lines."""
    from matplotlib.lines import Line2D

    emulated = {r["board"] for r in rows if r.get("emulated")}
    entries = {f"{clean_text(b)}{f' ({EMULATED})' if b in emulated else ''}, {t} thread(s)":
               Line2D([], [], marker=MARKERS[k % len(MARKERS)], color="#555555",
                      linestyle="none") for k, (b, t) in enumerate(series)}
    boards = [f"{clean_text(d['board'])}{f' ({EMULATED})' if d.get('emulated') else ''}: "
              f"{clean_text((d.get('machine') or {}).get('cpu_model', '?'))}, "
              f"measured {d.get('measured_utc')}" for d in documents
              if d.get("status") in ("ok", "partial")]
    fig.suptitle("On-device latency" + (f", report of {made_utc}" if made_utc else "") + "\n"
                 + "\n".join(boards), fontsize=9, x=0.01, ha="left")
    if entries:
        fig.legend(entries.values(), entries.keys(), fontsize=7.5, loc="upper right",
                   ncol=min(len(entries), 4), frameon=False, title_fontsize=7.5,
                   title="board, threads (blue: TFLite, orange: ONNX Runtime; grey hollow: "
                         "no runtime)")
    return 1 + len(boards)


def latency_figure(rows: Sequence[dict], documents: Sequence[dict[str, Any]] = (),
                   made_utc: str = "") -> Any:
    """The chart of the latency report's `rows` as a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build server
    import matplotlib.pyplot as plt

    panels = chart_panels(rows)
    series = sorted({(r["board"], r["threads"]) for _, _, mine in panels for r in mine}, key=str)
    heights = [max(2, len({r["variant"] for r in mine})) for _, _, mine in panels] or [2]
    fig, axes = plt.subplots(len(heights), 1, squeeze=False, gridspec_kw={
        "height_ratios": heights}, figsize=(10, 1.6 + sum(
            0.34 * (h + 0.8) * max(1, len(series) * 0.6) for h in heights)))
    for ax, (build, emulated, mine) in zip(axes[:, 0], panels):
        draw_panel(ax, build, emulated, mine, series)
    if not panels:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no timed results", ha="center", va="center")
    top_lines = legend_and_title(fig, [r for _, _, mine in panels for r in mine], series,
                                 documents, made_utc)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.16 * top_lines) / height))
    return fig


def write_latency_chart(rows: Sequence[dict], path: Path,
                        documents: Sequence[dict[str, Any]] = (), made_utc: str = "") -> None:
    """Draw `latency_figure` to `path` (PNG), written under a temporary name."""
    import matplotlib.pyplot as plt

    fig = latency_figure(rows, documents, made_utc)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:  # a write that fails (a full disk) must not leave the figure open in pyplot
        plt.close(fig)
