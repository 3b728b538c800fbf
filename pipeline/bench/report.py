"""Latency report: merge every board's results into latency.json, latency.md and latency.png.

Rows are build x variant x board x threads. A row whose model no longer matches the file on
disk is marked STALE, one measured longer ago than `bench.max_age_hours` is marked OLD, and
a board whose last run failed (or never finished) shows that instead of old numbers. Each
board's compute floor comes from the peak rate it measured itself (see pipeline/bench/floor.py).

Text that comes from a board (CPU model, runtime version, errors) is untrusted: it is
stripped of control characters everywhere and escaped in markdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from tabulate import tabulate

from pipeline import artifact_root
from pipeline.core.text import (EMULATED, board_label, clean_text, escape_md,
                                fmt_value, is_old, utc_now)
from pipeline.core.files import sha256_file, write_json, write_text
from pipeline.bench.floor import floor_us, peak_rates, slower_with_more_threads
from pipeline.core.formats import FORMATS
from pipeline.core.layout import LATENCY_FORMATS, Layout
from pipeline.core.verdict import describe
from pipeline.core.variants import (VARIANTS, rank, reference_float_variant,
                               reference_int8_variant)

SPACEMIT = "SpaceMITExecutionProvider"
TOP_OPS = 15  # nodes listed per case in a per-op report (the JSON has them all)
CONSOLE_HEADERS = ["build", "variant", "board", "thr", "runtime", "p50 µs", "p90 µs",
                   "vs reference", "int8/f32", "ORT/TFLite", "agree %", "state"]


def short_provider(name: str) -> str:
    return str(name).removesuffix("ExecutionProvider") or str(name)


def runtime_label(result: dict[str, Any]) -> str:
    """"name version" of the runtime a case ran under, with its session's providers
    (ONNX Runtime): `onnxruntime 1.21.0 SpaceMIT+CPU`."""
    runtime = result.get("runtime") or {}
    label = f"{runtime.get('name', '?')} {runtime.get('version', '?')}"
    if result.get("providers"):
        label += " " + "+".join(short_provider(p) for p in result["providers"])
    return clean_text(label)


def ort_int8_variants() -> list[str]:
    """The integer ONNX variants, compared with the reference int8 .tflite (ORT/TFLite)."""
    reference = VARIANTS[reference_int8_variant()].format
    return [v.name for v in VARIANTS.values() if v.format != reference and v.integer]


def latency_rows(documents: Sequence[dict[str, Any]], current_sha: dict[str, str],
                 max_age_hours: float | None = None) -> list[dict]:
    """Flatten board documents into report rows, with int8/float32 and ORT/TFLite ratios and
    floors; a model the board has no runtime for is a row with that state."""
    rows = []
    for doc in documents:
        if doc.get("status") not in ("ok", "partial"):
            continue
        rates = peak_rates(doc.get("peak", []))
        old = is_old(doc.get("measured_utc"), max_age_hours)
        for r in doc["results"]:
            key = f"{r['build']}/{r['variant']}"
            row = {"build": r["build"], "variant": r["variant"], "board": doc["board"],
                   "threads": r["threads"], "runtime": runtime_label(r),
                   "bytes": r.get("bytes"),
                   "sha256": r.get("sha256"), "measured_utc": doc.get("measured_utc"),
                   "fresh": current_sha.get(key) == r.get("sha256"), "old": old,
                   "emulated": bool(doc.get("emulated"))}
            row.update({k: r.get(k) for k in (
                "init_ms", "first_us", "mean_us", "std_us", "p10_us", "p50_us", "p90_us",
                "p99_us", "model_rss_mb", "peak_rss_mb", "accuracy", "agreement", "samples",
                "disagreements", "macs", "cpus", "providers", "nodes_per_provider",
                "verdict", "reference_sha256", "pair_skipped")})
            floor = floor_us(r.get("macs") or 0, r["variant"], r["threads"], rates)
            if floor:
                row["floor_us"] = floor
                row["p50_over_floor"] = r["p50_us"] / floor
            rows.append(row)
        for m in doc.get("missing", []):
            rows.append({"build": m.get("build", ""), "variant": m.get("variant", ""),
                         "board": doc["board"], "threads": m.get("threads", ""),
                         "runtime": "", "missing": clean_text(str(m.get("error"))),
                         "fresh": True, "old": old, "measured_utc": doc.get("measured_utc"),
                         "emulated": bool(doc.get("emulated"))})
        for error in doc.get("errors", []):
            rows.append({"build": "", "variant": "", "board": doc["board"], "threads": "",
                         "runtime": "", "error": error, "fresh": True, "old": old,
                         "measured_utc": doc.get("measured_utc"),
                         "emulated": bool(doc.get("emulated"))})
    by_case = {(r["build"], r["variant"], r["board"], r["threads"]): r for r in rows}
    # The field keeps its name ("int8_over_float32"): it is the reference variants' ratio.
    int8, float32 = reference_int8_variant(), reference_float_variant()
    ort_int8 = set(ort_int8_variants())
    for r in rows:
        if "p50_us" not in r:
            continue
        if r["variant"] == int8:
            base = by_case.get((r["build"], float32, r["board"], r["threads"]))
            if base and base.get("p50_us"):
                r["int8_over_float32"] = r["p50_us"] / base["p50_us"]
        if r["variant"] in ort_int8:
            base = by_case.get((r["build"], int8, r["board"], r["threads"]))
            if base and base.get("p50_us"):
                r["ort_over_tflite"] = r["p50_us"] / base["p50_us"]
    return rows


def missing_state(text: str) -> str:
    """A NO RUNTIME row's state without its install hint, which is said once per board."""
    return text.split(" - ", 1)[0]


def row_state(r: dict) -> str:
    if "missing" in r:
        return missing_state(r["missing"])
    if "error" in r:
        return f"ERROR {r['error']}"
    if not r["fresh"]:
        return "STALE (model changed since)"
    if r.get("agreement") is not None and r["agreement"] < 1:
        return f"DISAGREES with host on {len(r['disagreements'])} sample(s)"
    if r.get("old"):
        return f"OLD (measured {r.get('measured_utc') or 'at an unknown time'})"
    return "ok"


def vs_reference(r: dict) -> str:
    """The side-by-side verdict (ratio [interval] p word), with the reference's SHA-256
    prefix; "alone" when the case had no reference to be timed beside."""
    if r.get("verdict"):
        return f"{describe(r['verdict'])} vs {str(r.get('reference_sha256'))[:8]}"
    return "alone" if "p50_us" in r else ""


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
                fmt_value(r.get("init_ms"), ".2f"), fmt_value(r.get("first_us"), ".1f"),
                fmt_value(r.get("mean_us"), ".1f"), fmt_value(r.get("p50_us"), ".1f"),
                fmt_value(r.get("p90_us"), ".1f"), fmt_value(r.get("p99_us"), ".1f"),
                fmt_value(r.get("model_rss_mb"), ".2f"), fmt_value(r.get("peak_rss_mb"), ".1f"),
                fmt_value(r.get("bytes"), ","), fmt_value(pct(r.get("accuracy")), ".2f"),
                fmt_value(pct(agree), ".2f"), fmt_value(r.get("int8_over_float32"), ".2f"),
                fmt_value(r.get("ort_over_tflite"), ".2f"),
                fmt_value(r.get("macs"), ","), fmt_value(r.get("floor_us"), ".2f"),
                fmt_value(r.get("p50_over_floor"), ".1f"), vs_reference(r),
                ",".join(str(c) for c in r.get("cpus") or []), state])
        else:
            body.append([r["build"], r["variant"], board_label(r), r["threads"], r["runtime"],
                         fmt_value(r.get("p50_us"), ".1f"), fmt_value(r.get("p90_us"), ".1f"),
                         vs_reference(r), fmt_value(r.get("int8_over_float32"), ".2f"),
                         fmt_value(r.get("ort_over_tflite"), ".2f"), fmt_value(pct(agree), ".1f"),
                         state[:60]])
    headers = (["build", "variant", "board", "thr", "runtime", "init ms", "first µs",
                "mean µs", "p50 µs", "p90 µs", "p99 µs", "model MB", "peak RSS MB", "bytes",
                "acc %", "agree %", "int8/f32", "ORT/TFLite", "MACs", "floor µs", "p50/floor",
                "vs reference", "ran on CPUs", "state"] if full else CONSOLE_HEADERS)
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
            f"{escape_md(runtimes_text(doc.get('runtimes') or {}))}; "
            f"{pinning}; pushed {len(doc.get('pushed', []))} file(s)")
    if doc.get("status") == "partial":
        parts = []
        if doc.get("errors"):
            parts.append(f"{len(doc['errors'])} case(s) failed (rows marked ERROR)")
        if doc.get("missing"):
            hints = dict.fromkeys(str(m.get("error")) for m in doc["missing"])
            parts.append(f"{len(doc['missing'])} row(s) not timed for lack of a runtime "
                         "(rows marked NO RUNTIME): " + " ".join(escape_md(h) for h in hints))
        line += "; PARTIAL - " + ", ".join(parts)
    if doc.get("emulated"):
        line += (f"; {EMULATED} (qemu-user): its latency is the emulator's, not the board's; "
                 "its predictions count fully")
    for note in doc.get("reference_notes") or []:
        line += f"\n  - {escape_md(clean_text(note))}"
    rates = peak_rates(doc.get("peak", []))
    if rates:
        measured = ", ".join(f"{v} x{t}: {rate / 1e9:.1f}"
                             for (v, t), rate in sorted(rates.items()))
        line += f"\n  - measured peak (GMAC/s, synthetic GEMM): {measured}"
        slower = slower_with_more_threads(rates)
        if slower:
            line += "; SLOWER WITH MORE THREADS: " + ", ".join(
                f"{v} x{t} is {ratio:.2f}x the rate of x{fewer}"
                for v, t, fewer, ratio in slower)
    return line


def runtimes_text(runtimes: dict[str, Any]) -> str:
    """`TFLite: ai_edge_litert 1.4; ONNX: onnxruntime 1.21.0 (providers ...)` or NONE."""
    parts = []
    for fmt, label in ((f.key, f.display) for f in FORMATS.values()):
        info = runtimes.get(fmt)
        if not isinstance(info, dict):
            continue
        if "missing" in info:
            parts.append(f"{label}: none")
            continue
        text = f"{label}: {info.get('name')} {info.get('version')}"
        if info.get("providers_available"):
            text += " (providers: " + ", ".join(
                short_provider(p) for p in info["providers_available"]) + ")"
        if info.get("spacemit_ort") and SPACEMIT not in (info.get("providers_available") or []):
            text += " - spacemit_ort imported but registered no SpaceMIT provider"
        parts.append(text)
    return clean_text("; ".join(parts) or "no runtime reported")


def ratio_table(rows: Sequence[dict]) -> str:
    """Per build x board x threads: the reference int8 .tflite's p50 and each integer ONNX
    variant's p50 over it (ORT/TFLite; > 1: ONNX Runtime is slower on that board)."""
    onnx_int8 = ort_int8_variants()
    int8 = reference_int8_variant()
    cases = sorted({(r["build"], r["board"], r["threads"]) for r in rows if "p50_us" in r},
                   key=str)
    by_case = {(r["build"], r["variant"], r["board"], r["threads"]): r
               for r in rows if "p50_us" in r}
    body = []
    for build, board, threads in cases:
        base = by_case.get((build, int8, board, threads))
        line = [build, board, threads, fmt_value(base and base["p50_us"], ".1f")]
        for v in onnx_int8:
            r = by_case.get((build, v, board, threads))
            line += [fmt_value(r and r["p50_us"], ".1f"),
                     fmt_value(r and r.get("ort_over_tflite"), ".2f")]
        if any(line[4:]):  # only where an ONNX int8 model was timed
            label = board_label(base or next(r for r in rows if r.get("board") == board))
            body.append([escape_md(c) for c in [line[0], label, *line[2:]]])
    headers = ["build", "board", "thr", f"{int8} (TFLite) p50 µs"]
    for v in onnx_int8:
        headers += [f"{v} (ORT) p50 µs", f"{v}/TFLite"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def render_markdown(rows: Sequence[dict], documents: Sequence[dict],
                    models: dict[str, str], made_utc: str,
                    op_reports: Sequence[tuple[str, str, str]] = ()) -> str:
    made = (f"Made {made_utc} from these models (SHA-256 prefix): "
            + ", ".join(f"`{key}` {sha[:12]}" for key, sha in sorted(models.items())) + "."
            if models else f"Made {made_utc}; no model file exists yet (the build stopped "
            "before its models were converted: see each board's line below).")
    lines = ["# On-device latency", "", made, "",
             "Per build x variant x board x threads: interpreter load + allocate (init), first "
             "invoke, then timed invokes after warm-up. int8/f32 is the int8 p50 over the "
             "float32 p50 on the same board and thread count. model MB is what loading the "
             "model added to the process; peak RSS MB includes Python and the runtime. "
             "floor µs is the model's MACs at the board's measured peak rate for its variant. "
             "acc/agree: the board's top-1 on labelled test images, and agreement with the "
             "host's predictions. vs reference: the model timed side by side with the one "
             "last timed on that board (SHA-256 prefix), interleaved in rounds: ratio of "
             "medians, its 99 % interval, the Mann-Whitney p over the round medians and one "
             "word (faster, same, slower; environment when both are the same bytes: the ratio "
             "then measures the board, not a model).", ""]
    lines += [board_line(doc) for doc in documents] or ["No board has results yet."]
    # A table with no row says nothing: a sentence says why instead.
    lines += ["", render_table(rows, "github") if rows else
              "No row: no board returned any result (each board's line above says why).", ""]
    onnx_int8 = set(ort_int8_variants())
    if any(r["variant"] in onnx_int8 and "p50_us" in r for r in rows):
        lines += ["## ONNX Runtime against TFLite, int8", "",
                  "The same build's integer models on the same board and thread count: "
                  f"{reference_int8_variant()} under its TFLite runtime, the ONNX int8 "
                  "variants under ONNX Runtime (the provider is in the runtime column above). "
                  "ORT/TFLite > 1 means ONNX Runtime is slower there.", "", ratio_table(rows),
                  ""]
    if op_reports:
        lines += ["## Per-op profiles (ONNX Runtime)", "",
                  *(f"- {escape_md(build)} on {escape_md(board)}: [{escape_md(link)}]({link})"
                    for build, board, link in op_reports), ""]
    return "\n".join(lines)


def op_profiles(documents: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    """Per (build, board): the per-op profile of every ONNX case that has one."""
    out: dict[tuple[str, str], dict] = {}
    for doc in documents:
        if doc.get("status") not in ("ok", "partial"):
            continue
        for r in doc.get("results", []):
            profile = r.get("profile")
            if not isinstance(profile, dict) or not profile.get("nodes"):
                continue
            entry = out.setdefault((r["build"], doc["board"]), {
                "build": r["build"], "board": doc["board"],
                "measured_utc": doc.get("measured_utc"),
                "cpu_model": clean_text((doc.get("machine") or {}).get("cpu_model", "")),
                "cases": []})
            entry["cases"].append({
                "variant": r["variant"], "threads": r["threads"], "runtime": runtime_label(r),
                "p50_us": r.get("p50_us"), "profiled_runs": profile.get("runs"),
                "node_sum_us": profile.get("node_sum_us"),
                "model_run_us": profile.get("model_run_us"),
                "nodes_per_provider": profile.get("nodes_per_provider"),
                "by_op": ops_by_type(profile["nodes"]),
                "nodes": [{k: (clean_text(v) if isinstance(v, str) else v)
                           for k, v in n.items()} for n in profile["nodes"]]})
    for entry in out.values():
        entry["cases"].sort(key=lambda c: (rank(c["variant"]), c["threads"]))
    return out


def ops_by_type(nodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median µs per run and share, summed per (op type, provider), largest first."""
    totals: dict[tuple[str, str], list[float]] = {}
    for n in nodes:
        acc = totals.setdefault((str(n["op"]), str(n["provider"])), [0.0, 0.0, 0])
        acc[0] += float(n["median_us"])
        acc[1] += float(n["share"])
        acc[2] += 1
    return sorted(({"op": op, "provider": prov, "nodes": int(c), "median_us": us, "share": sh}
                   for (op, prov), (us, sh, c) in totals.items()),
                  key=lambda o: -o["median_us"])


def render_op_markdown(entry: dict[str, Any]) -> str:
    lines = [f"# Per-op profile: {escape_md(entry['build'])} on {escape_md(entry['board'])}",
             "", f"Measured {entry['measured_utc']} on {escape_md(entry['cpu_model'])} by ONNX "
             "Runtime's own profiler (`SessionOptions.enable_profiling`), in a second session "
             "after the timed one, so profiling never slows the latency figures. Per node: "
             "median kernel time per run (profiled), its share of all nodes' time, that share "
             "of the timed p50 (*µs at p50*), and the execution provider that ran it. *node "
             "sum* is the median per-run sum of the profiled node times, *model_run* the "
             "median whole `run()` inside ONNX Runtime, p50 the timed session's median invoke "
             "(which also pays the Python call and input binding). The profiler adds its own "
             "cost to every node it times, so profiled µs are upper bounds (node sum above p50 "
             "is that cost); read the shares.", ""]
    for case in entry["cases"]:
        providers = ", ".join(f"{escape_md(short_provider(p))} {n}" for p, n in
                              (case.get("nodes_per_provider") or {}).items())
        p50 = case.get("p50_us") or 0.0
        lines += [f"## {escape_md(case['variant'])}, {case['threads']} thread(s)", "",
                  f"{escape_md(case['runtime'])}; nodes per provider: {providers}; "
                  f"{case['profiled_runs']} profiled runs; node sum "
                  f"{fmt_value(case['node_sum_us'], '.1f')} µs, model\\_run "
                  f"{fmt_value(case['model_run_us'], '.1f')} µs, timed p50 {p50:.1f} µs.", ""]
        body, cumulative = [], 0.0
        for i, n in enumerate(case["nodes"][:TOP_OPS], 1):
            cumulative += n["share"]
            body.append([i, escape_md(n["node"]), escape_md(n["op"]),
                         escape_md(short_provider(n["provider"])), fmt_value(n["median_us"], ".1f"),
                         fmt_value(n["share"] * p50, ".1f"), fmt_value(100 * n["share"], ".1f"),
                         fmt_value(100 * cumulative, ".1f")])
        lines += [tabulate(body, headers=["#", "node", "op", "provider", "profiled µs",
                                          "µs at p50", "share %", "cumulative %"],
                           tablefmt="github", disable_numparse=True), ""]
        if len(case["nodes"]) > TOP_OPS:
            lines += [f"{len(case['nodes']) - TOP_OPS} more node(s) in the JSON.", ""]
        by_op = [[escape_md(o["op"]), escape_md(short_provider(o["provider"])), o["nodes"],
                  fmt_value(o["median_us"], ".1f"), fmt_value(o["share"] * p50, ".1f"),
                  fmt_value(100 * o["share"], ".1f")] for o in case["by_op"]]
        lines += ["By op type:", "", tabulate(by_op, headers=["op", "provider", "nodes",
                                                             "profiled µs", "µs at p50",
                                                             "share %"],
                                             tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


def write_op_reports(layout: Layout, documents: Sequence[dict[str, Any]]
                     ) -> list[tuple[str, str, str]]:
    """Write reports/<build>/ops_<board>.{md,json}; (build, board, link from latency.md)."""
    links = []
    for (build, board), entry in sorted(op_profiles(documents).items()):
        write_json(layout.op_profile(build, board, "json"), entry)
        md = layout.op_profile(build, board, "md")
        write_text(md, render_op_markdown(entry))
        links.append((build, board, md.relative_to(layout.reports_dir()).as_posix()))
    return links


def render_chart(rows: Sequence[dict], path: Path,
                 documents: Sequence[dict[str, Any]] = (), made_utc: str = "") -> None:
    """latency.png: real and emulated boards on separate axes, NO RUNTIME rows as marked gaps
    (pipeline/bench/latency_chart.py draws it)."""
    from pipeline.bench.latency_chart import write_latency_chart

    write_latency_chart(rows, path, documents, made_utc)


@contextlib.contextmanager
def _report_lock(layout: Layout) -> Iterator[None]:
    """Serialise report rebuilds: with `doit -n 3 bench` each board's task rebuilds the
    report, and the last one must have read every board's latest result."""
    layout.reports_dir().mkdir(parents=True, exist_ok=True)
    with open(layout.latency_lock(), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_latency_report(layout: Layout, boards: Sequence[Any], models: dict[str, Path],
                         max_age_hours: float | None = None,
                         table: bool = True, failures: bool = True) -> list[dict]:
    """Rebuild latency.{json,md,png} from reports/latency/<board>.json for the given boards,
    and each build x board's per-op profile. The console gets the table (if `table`) and one
    line per board that did not succeed (if `failures`)."""
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
                   "error": d.get("error") or "; ".join(
                       [*d.get("errors", []), *(m.get("error", "") for m in d.get("missing", [])
                                                )][:5]) or "run never finished"}
                  for d in documents if d.get("status") != "ok"]
        json_path, md_path, png_path = (layout.latency_report(ext) for ext in LATENCY_FORMATS)
        write_json(json_path, {
            "made_utc": made, "models": current_sha, "max_age_hours": max_age_hours,
            "boards": [{"board": d["board"], "status": d.get("status"),
                        "emulated": bool(d.get("emulated")),
                        "measured_utc": d.get("measured_utc"),
                        "started_utc": d.get("started_utc")} for d in documents],
            "rows": rows, "failed_boards": failed})
        op_links = write_op_reports(layout, documents)
        write_text(md_path, render_markdown(rows, documents, current_sha, made, op_links))
        render_chart(rows, png_path, documents, made)
    if table and rows:  # an empty table's header says nothing
        print(render_table(rows, "simple", full=False))
    for f in failed if failures else []:
        print(clean_text(f"board {f['board']}: {str(f['status']).upper()}: {f['error']}"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Rebuild the latency report from reports/latency/<board>.json, without benchmarking."""
    import argparse
    import os

    from pipeline.core.boards import load_boards
    from pipeline.core.params import ParamsError, load_params
    from pipeline.core.variants import variant_of

    parser = argparse.ArgumentParser(
        description="Rebuild latency.{json,md,png} from the per-board results in "
                    "<artifacts>/reports/latency/*.json (no board is contacted).")
    parser.add_argument("--artifacts", type=Path,
                        default=artifact_root(os.environ),
                        help="the artifact tree (default: $PIPELINE_ARTIFACTS or artifacts)")
    parser.add_argument("--boards", type=Path,
                        default=Path(os.environ.get("PIPELINE_BOARDS", "board/boards.toml")),
                        help="board inventory; its boards are reported in its order")
    parser.add_argument("--params", type=Path,
                        default=Path(os.environ.get("PIPELINE_PARAMS", "params.toml")),
                        help="params file whose bench.max_age_hours marks rows OLD, as the "
                             "bench task does (default: $PIPELINE_PARAMS or params.toml)")
    args = parser.parse_args(argv)
    try:
        boards = load_boards(args.boards)
    except ParamsError as exc:
        raise SystemExit(f"error: bad board inventory: {exc}") from None
    try:
        params = load_params(args.params, os.environ.get("PIPELINE_SET", ""))
        max_age_hours = params.bench.max_age_hours
    except ParamsError as exc:
        raise SystemExit(f"error: bad params: {exc}") from None
    # Current model hashes mark rows whose model changed since the board ran as STALE.
    layout = Layout(args.artifacts)
    models = {"/".join(variant_of(p)): p for p in layout.model_files()}
    write_latency_report(layout, boards, models, max_age_hours)


if __name__ == "__main__":
    main()
