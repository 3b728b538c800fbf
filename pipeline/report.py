"""Latency report: merge every board's results into latency.json, latency.md and latency.png.

Rows are build x variant x board x threads. A row whose model no longer matches the file on
disk is marked STALE, one measured longer ago than `bench.max_age_hours` is marked OLD, and
a board whose last run failed (or never finished) shows that instead of old numbers. Each
board's compute floor comes from the peak rate it measured itself (see pipeline/floor.py).

Text that comes from a board (CPU model, runtime version, errors) is untrusted: it is
stripped of control characters everywhere and escaped in markdown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from tabulate import tabulate

from pipeline.files import atomic_path, sha256_file, write_json, write_text
from pipeline.floor import floor_us, peak_rates
from pipeline.layout import LATENCY_FORMATS, Layout
from pipeline.variants import rank, reference_float_variant, reference_int8_variant

# ANSI/OSC escape sequences first (so their payload goes too), then any other C0/C1 control.
_ESCAPES = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b.?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]|~])")
CONSOLE_HEADERS = ["build", "variant", "board", "thr", "p50 µs", "p90 µs", "int8/f32",
                   "agree %", "state"]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean_text(text: str) -> str:
    """Untrusted text without terminal escape sequences or control characters (\\n kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def escape_md(text: Any) -> str:
    """Untrusted text as literal markdown/HTML: no links, tags, emphasis or table breaks."""
    cleaned = clean_text(str(text)).replace("\n", " ")
    cleaned = cleaned.replace("&", "&amp;")
    return _MARKDOWN.sub(r"\\\1", cleaned).replace("<", "&lt;").replace(">", "&gt;")


def age_hours(stamp: str | None, now: dt.datetime | None = None) -> float | None:
    if not stamp:
        return None
    try:
        when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return ((now or dt.datetime.now(dt.timezone.utc)) - when).total_seconds() / 3600


def latency_rows(documents: Sequence[dict[str, Any]], current_sha: dict[str, str],
                 max_age_hours: float | None = None) -> list[dict]:
    """Flatten board documents into report rows, with int8/float32 ratios and floors."""
    rows = []
    for doc in documents:
        if doc.get("status") not in ("ok", "partial"):
            continue
        rates = peak_rates(doc.get("peak", []))
        age = age_hours(doc.get("measured_utc"))
        old = max_age_hours is not None and (age is None or age > max_age_hours)
        runtime = clean_text(f"{doc['runtime']['name']} {doc['runtime']['version']}")
        for r in doc["results"]:
            key = f"{r['build']}/{r['variant']}"
            row = {"build": r["build"], "variant": r["variant"], "board": doc["board"],
                   "threads": r["threads"], "runtime": runtime, "bytes": r.get("bytes"),
                   "sha256": r.get("sha256"), "measured_utc": doc.get("measured_utc"),
                   "fresh": current_sha.get(key) == r.get("sha256"), "old": old,
                   "emulated": bool(doc.get("emulated"))}
            row.update({k: r.get(k) for k in (
                "init_ms", "first_us", "mean_us", "std_us", "p10_us", "p50_us", "p90_us",
                "p99_us", "model_rss_mb", "peak_rss_mb", "accuracy", "agreement", "samples",
                "disagreements", "macs", "cpus")})
            floor = floor_us(r.get("macs") or 0, r["variant"], r["threads"], rates)
            if floor:
                row["floor_us"] = floor
                row["p50_over_floor"] = r["p50_us"] / floor
            rows.append(row)
        for error in doc.get("errors", []):
            rows.append({"build": "", "variant": "", "board": doc["board"], "threads": "",
                         "runtime": runtime, "error": error, "fresh": True, "old": old,
                         "measured_utc": doc.get("measured_utc")})
    by_case = {(r["build"], r["variant"], r["board"], r["threads"]): r for r in rows}
    # The field keeps its name ("int8_over_float32"): it is the reference variants' ratio.
    int8, float32 = reference_int8_variant(), reference_float_variant()
    for r in rows:
        if r["variant"] == int8 and "p50_us" in r:
            base = by_case.get((r["build"], float32, r["board"], r["threads"]))
            if base and base.get("p50_us"):
                r["int8_over_float32"] = r["p50_us"] / base["p50_us"]
    return rows


# An emulated board's latency is the emulator's: every place that shows a board's figures
# names it so (board column, board line, chart), and nothing compares it with a real board.
EMULATED = "EMULATED"


def board_label(r: dict) -> str:
    return f"{r['board']} ({EMULATED})" if r.get("emulated") else r["board"]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def row_state(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    if not r["fresh"]:
        return "STALE (model changed since)"
    if r.get("agreement") is not None and r["agreement"] < 1:
        return f"DISAGREES with host on {len(r['disagreements'])} sample(s)"
    if r.get("old"):
        return f"OLD (measured {r.get('measured_utc') or 'at an unknown time'})"
    return "ok"


def render_table(rows: Sequence[dict], fmt: str, full: bool = True) -> str:
    """The full table (latency.md) or the columns a person reads at a glance (console)."""
    body = []
    for r in rows:
        agree = r.get("agreement")
        pct = (lambda v: None if v is None else 100 * v)
        state = row_state(r)
        if full:
            body.append([
                r["build"], r["variant"], board_label(r), r["threads"], r["runtime"],
                _fmt(r.get("init_ms"), ".2f"), _fmt(r.get("first_us"), ".1f"),
                _fmt(r.get("mean_us"), ".1f"), _fmt(r.get("p50_us"), ".1f"),
                _fmt(r.get("p90_us"), ".1f"), _fmt(r.get("p99_us"), ".1f"),
                _fmt(r.get("model_rss_mb"), ".2f"), _fmt(r.get("peak_rss_mb"), ".1f"),
                _fmt(r.get("bytes"), ","), _fmt(pct(r.get("accuracy")), ".2f"),
                _fmt(pct(agree), ".2f"), _fmt(r.get("int8_over_float32"), ".2f"),
                _fmt(r.get("macs"), ","), _fmt(r.get("floor_us"), ".2f"),
                _fmt(r.get("p50_over_floor"), ".1f"),
                ",".join(str(c) for c in r.get("cpus") or []), state])
        else:
            body.append([r["build"], r["variant"], board_label(r), r["threads"],
                         _fmt(r.get("p50_us"), ".1f"), _fmt(r.get("p90_us"), ".1f"),
                         _fmt(r.get("int8_over_float32"), ".2f"), _fmt(pct(agree), ".1f"),
                         state[:60]])
    headers = (["build", "variant", "board", "thr", "runtime", "init ms", "first µs",
                "mean µs", "p50 µs", "p90 µs", "p99 µs", "model MB", "peak RSS MB", "bytes",
                "acc %", "agree %", "int8/f32", "MACs", "floor µs", "p50/floor", "ran on CPUs",
                "state"] if full else CONSOLE_HEADERS)
    if fmt == "github":
        body = [[escape_md(cell) for cell in line] for line in body]
    else:
        body = [[clean_text(str(cell)) for cell in line] for line in body]
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


def board_line(doc: dict[str, Any]) -> str:
    name = escape_md(doc["board"])
    if doc.get("status") == "running":
        return (f"- **{name}**: INCOMPLETE - a run started {doc.get('started_utc')} and never "
                "finished (killed or still running); none of its older numbers are shown")
    if doc.get("status") == "failed":
        return f"- **{name}**: FAILED at {doc.get('measured_utc')} - {escape_md(doc.get('error'))}"
    m = doc["machine"]
    pinning = f"pinned to CPUs {doc['cpus']}" if doc.get("cpus") else "not pinned"
    line = (f"- **{name}**: measured {doc.get('measured_utc')}; {escape_md(m['cpu_model'])}, "
            f"{m['cores']} cores, {escape_md(m['uname'])}; "
            f"{escape_md(doc['runtime']['name'])} {escape_md(doc['runtime']['version'])}; "
            f"{pinning}; pushed {len(doc.get('pushed', []))} file(s)")
    if doc.get("status") == "partial":
        line += f"; PARTIAL - {len(doc['errors'])} case(s) failed (rows marked ERROR)"
    if doc.get("emulated"):
        line += (f"; {EMULATED} (qemu-user): its latency is the emulator's, not the board's; "
                 "its predictions count fully")
    rates = peak_rates(doc.get("peak", []))
    if rates:
        measured = ", ".join(f"{v} x{t}: {rate / 1e9:.1f}"
                             for (v, t), rate in sorted(rates.items()))
        line += f"\n  - measured peak (GMAC/s, synthetic GEMM): {measured}"
    return line


def render_markdown(rows: Sequence[dict], documents: Sequence[dict],
                    models: dict[str, str], made_utc: str) -> str:
    lines = ["# On-device latency", "",
             f"Made {made_utc} from these models (SHA-256 prefix): "
             + ", ".join(f"`{key}` {sha[:12]}" for key, sha in sorted(models.items())) + ".", "",
             "Per build x variant x board x threads: interpreter load + allocate (init), first "
             "invoke, then timed invokes after warm-up. int8/f32 is the int8 p50 over the "
             "float32 p50 on the same board and thread count. model MB is what loading the "
             "model added to the process; peak RSS MB includes Python and the runtime. "
             "floor µs is the model's MACs at the board's measured peak rate for its variant. "
             "acc/agree: the board's top-1 on labelled test images, and agreement with the "
             "host's predictions.", ""]
    lines += [board_line(doc) for doc in documents]
    return "\n".join([*lines, "", render_table(rows, "github"), ""])


def render_chart(rows: Sequence[dict], path: Path) -> None:
    """p50 per variant, p10-p90 whiskers; a panel per build, log axis, int8/f32 written on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("p50_us")]
    builds = sorted({r["build"] for r in rows}) or ["(no results)"]
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (rank(v), v))
    # A variant's colour follows its place in the registry, so it is the same on every chart.
    palette = ["#4c72b0", "#dd8452", "#937860", "#55a868", "#c44e52", "#8172b3", "#da8bc3"]
    colours = {v: palette[(rank(v) - 1) % len(palette)] for v in variants}
    fig, axes = plt.subplots(len(builds), 1, figsize=(9, 2.2 + 1.6 * len(builds)),
                             squeeze=False)
    for ax, build in zip(axes[:, 0], builds):
        mine = [r for r in rows if r["build"] == build]
        groups = sorted({(r["board"], r["threads"]) for r in mine})
        emulated = {r["board"] for r in mine if r.get("emulated")}
        width = 0.8 / max(len(variants), 1)
        for i, variant in enumerate(variants):
            for g, group in enumerate(groups):
                r = next((r for r in mine if (r["board"], r["threads"]) == group
                          and r["variant"] == variant), None)
                if r is None:
                    continue
                x = g + (i - (len(variants) - 1) / 2) * width
                low = r["p50_us"] - (r.get("p10_us") or r["p50_us"])
                high = (r.get("p90_us") or r["p50_us"]) - r["p50_us"]
                ax.bar(x, r["p50_us"], width, color=colours.get(variant, "#8172b3"),
                       label=variant if g == 0 else None, yerr=[[low], [high]], capsize=3)
                if r.get("int8_over_float32"):
                    ax.annotate(f"int8/f32 {r['int8_over_float32']:.2f}", (x, r["p90_us"]),
                                textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=8)
        ax.set_xticks(range(len(groups)),
                      [f"{clean_text(b)}{f' ({EMULATED})' if b in emulated else ''}\n"
                       f"{t} thread(s)" for b, t in groups])
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
        ax.set_ylabel("latency per invoke (µs, log)")
        ax.set_title(f"{build}: p50 with p10-p90 whiskers (lower is better)", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.margins(y=0.25)
        if mine:
            ax.legend(title="variant", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plain_log_labels(axis: Any) -> None:
    """Tick labels on a log axis as plain numbers (20, not 2 x 10^1), and between decades
    only at 2x, 3x and 5x, so the labels never overlap."""
    import matplotlib.ticker

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    axis.set_tick_params(which="minor", labelsize=7)


@contextlib.contextmanager
def _report_lock(layout: Layout) -> Iterator[None]:
    """Serialise report rebuilds: with `doit -n 3 bench` each board's task rebuilds the
    report, and the last one must have read every board's latest result."""
    layout.reports_dir().mkdir(parents=True, exist_ok=True)
    with open(layout.latency_lock(), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_latency_report(layout: Layout, boards: Sequence[Any], models: dict[str, Path],
                         max_age_hours: float | None = None) -> list[dict]:
    """Rebuild latency.{json,md,png} from reports/latency/<board>.json for the given boards."""
    with _report_lock(layout):
        documents = []
        for board in boards:
            path = layout.board_result(board.name)
            if path.exists():
                documents.append(json.loads(path.read_text()))
        current_sha = {key: sha256_file(p) for key, p in models.items() if Path(p).exists()}
        rows = latency_rows(documents, current_sha, max_age_hours)
        made = utc_now()
        failed = [{"board": d["board"], "status": d.get("status"),
                   "error": d.get("error") or "; ".join(d.get("errors", []))
                   or "run never finished"}
                  for d in documents if d.get("status") != "ok"]
        json_path, md_path, png_path = (layout.latency_report(ext) for ext in LATENCY_FORMATS)
        write_json(json_path, {
            "made_utc": made, "models": current_sha, "max_age_hours": max_age_hours,
            "boards": [{"board": d["board"], "status": d.get("status"),
                        "emulated": bool(d.get("emulated")),
                        "measured_utc": d.get("measured_utc"),
                        "started_utc": d.get("started_utc")} for d in documents],
            "rows": rows, "failed_boards": failed})
        write_text(md_path, render_markdown(rows, documents, current_sha, made))
        render_chart(rows, png_path)
    print(render_table(rows, "simple", full=False))
    for f in failed:
        print(clean_text(f"board {f['board']}: {str(f['status']).upper()}: {f['error']}"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Rebuild the latency report from reports/latency/<board>.json, without benchmarking."""
    import argparse

    from pipeline.boards import load_boards
    from pipeline.params import ParamsError
    from pipeline.variants import variant_of

    parser = argparse.ArgumentParser(
        description="Rebuild latency.{json,md,png} from the per-board results in "
                    "<artifacts>/reports/latency/*.json (no board is contacted).")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                        help="the artifact tree (default: artifacts)")
    parser.add_argument("--boards", type=Path, default=Path("board/boards.toml"),
                        help="board inventory; its boards are reported in its order")
    args = parser.parse_args(argv)
    try:
        boards = load_boards(args.boards)
    except ParamsError as exc:
        raise SystemExit(f"error: bad board inventory: {exc}") from None
    # Current model hashes mark rows whose model changed since the board ran as STALE.
    layout = Layout(args.artifacts)
    models = {"/".join(variant_of(p)): p for p in layout.model_files()}
    write_latency_report(layout, boards, models)


if __name__ == "__main__":
    main()
