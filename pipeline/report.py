"""Latency report: merge every board's results into latency.json, latency.md and latency.png.

Rows are build x variant x board x threads. A row whose model no longer matches the file on
disk is marked stale; a board whose last run failed shows its error instead of old numbers.
For this machine a compute floor is added: the model's multiply-accumulates at the core's
measured peak rate (see `compute_floor`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from pipeline.files import atomic_path, sha256_file, write_json, write_text

# Peak multiply-accumulates per cycle of one core, by vector ISA (first match wins). x86
# cores with these extensions issue two vector FMA / dot-product instructions per cycle:
# AVX-512 FMA does 16 float32 MACs each, AVX-512 VNNI's vpdpbusd 64 int8 MACs each.
PEAK_MACS_PER_CYCLE = (
    ("avx512_vnni", {"float32": 32, "int8": 128}),
    ("avx512f", {"float32": 32, "int8": 64}),
    ("avx_vnni", {"float32": 16, "int8": 64}),
    ("avx2", {"float32": 16, "int8": 32}),
    ("asimddp", {"float32": 8, "int8": 32}),   # aarch64 with SDOT, two 128-bit pipes
    ("", {"float32": 8, "int8": 16}),          # anything else: two 128-bit pipes
)


def count_macs(model_path: Path) -> int:
    """Multiply-accumulates of one inference: CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"])
              for t in interpreter.get_tensor_details()}
    macs = 0
    for op in interpreter._get_ops_details():  # the only public-enough view of the graph
        name, inputs, outputs = op["op_name"], op["inputs"], op["outputs"]
        if name == "CONV_2D":        # filter: out_c x kh x kw x in_c
            macs += int(np.prod(shapes[outputs[0]])) * int(np.prod(shapes[inputs[1]][1:]))
        elif name == "DEPTHWISE_CONV_2D":   # filter: 1 x kh x kw x out_c
            _, kh, kw, _ = shapes[inputs[1]]
            macs += int(np.prod(shapes[outputs[0]])) * kh * kw
        elif name == "FULLY_CONNECTED":     # weights: out x in
            batch = int(np.prod(shapes[outputs[0]])) // shapes[inputs[1]][0]
            macs += batch * int(np.prod(shapes[inputs[1]]))
    return macs


def compute_floor(cpuinfo: str | None = None, max_khz: str | None = None) -> dict[str, Any]:
    """The peak MAC rate of one core of this machine, from its vector ISA and clock.

    floor = MACs / (peak MACs per cycle x clock x threads): the latency if every cycle of
    every thread did useful multiply-accumulates at full vector width. The clock is cpufreq's
    maximum where the kernel exposes it, else /proc/cpuinfo's "cpu MHz"; a VM often shows
    only the base clock, so a core that boosts can come in under 1.0x of the floor.
    """
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo")
    if max_khz is None:
        max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    flags = set(next((line.partition(":")[2].split() for line in cpuinfo.splitlines()
                      if line.startswith(("flags", "Features"))), []))
    isa, peak = next((isa, peak) for isa, peak in PEAK_MACS_PER_CYCLE if not isa or isa in flags)
    mhz = [float(line.partition(":")[2]) for line in cpuinfo.splitlines()
           if line.startswith("cpu MHz")]
    if max_khz.strip():
        hz, source = float(max_khz) * 1e3, "cpufreq cpuinfo_max_freq"
    elif mhz:
        hz, source = max(mhz) * 1e6, "/proc/cpuinfo cpu MHz, may be the base clock"
    else:
        hz, source = 1e9, "unknown clock, 1 GHz assumed"
    return {"clock_hz": hz, "clock_source": source, "isa": isa or "baseline",
            "macs_per_cycle": peak,
            "macs_per_s_per_core": {variant: n * hz for variant, n in peak.items()}}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def floor_us(macs: int, variant: str, threads: int, floor: dict[str, Any]) -> float:
    # float16 and dynamic-range models compute in float32 on CPU.
    rate = floor["macs_per_s_per_core"]["int8" if variant == "int8" else "float32"]
    return macs / (rate * threads) * 1e6


def latency_rows(documents: Sequence[dict[str, Any]], current_sha: dict[str, str]) -> list[dict]:
    """Flatten board documents into report rows, with int8/float32 ratios and floors."""
    rows = []
    for doc in documents:
        if doc.get("status") != "ok":
            continue
        floor = doc.get("compute_floor")
        for r in doc["results"]:
            key = f"{r.get('build')}/{r.get('variant')}"
            row = {"build": r.get("build"), "variant": r.get("variant"), "board": doc["board"],
                   "threads": r["threads"], "runtime": f"{doc['runtime']['name']} "
                   f"{doc['runtime']['version']}", "bytes": r.get("bytes"),
                   "fresh": current_sha.get(key) == r.get("sha256")}
            if "error" in r:
                row["error"] = r["error"]
                rows.append(row)
                continue
            row.update({k: r.get(k) for k in (
                "init_ms", "first_us", "mean_us", "std_us", "p50_us", "p90_us", "p99_us",
                "peak_rss_mb", "accuracy", "agreement", "samples", "disagreements", "macs")})
            if floor and r.get("macs"):
                row["floor_us"] = floor_us(r["macs"], r["variant"], r["threads"], floor)
                row["p50_over_floor"] = r["p50_us"] / row["floor_us"]
            rows.append(row)
    by_case = {(r["build"], r["variant"], r["board"], r["threads"]): r for r in rows}
    for r in rows:
        if r["variant"] == "int8" and "p50_us" in r:
            base = by_case.get((r["build"], "float32", r["board"], r["threads"]))
            if base and base.get("p50_us"):
                r["int8_over_float32"] = r["p50_us"] / base["p50_us"]
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render_table(rows: Sequence[dict], fmt: str) -> str:
    headers = ["build", "variant", "board", "thr", "runtime", "init ms", "first µs", "mean µs",
               "p50 µs", "p90 µs", "p99 µs", "RSS MB", "bytes", "acc %", "agree %",
               "int8/f32", "MACs", "floor µs", "p50/floor", "state"]
    body = []
    for r in rows:
        agree = r.get("agreement")
        state = "ok" if r["fresh"] else "STALE (model changed since)"
        if "error" in r:
            state = f"ERROR {r['error']}"
        elif agree is not None and agree < 1:
            state = f"DISAGREES with host on {len(r['disagreements'])} sample(s)"
        body.append([
            r["build"], r["variant"], r["board"], r["threads"], r["runtime"],
            _fmt(r.get("init_ms"), ".2f"), _fmt(r.get("first_us"), ".1f"),
            _fmt(r.get("mean_us"), ".1f"), _fmt(r.get("p50_us"), ".1f"),
            _fmt(r.get("p90_us"), ".1f"), _fmt(r.get("p99_us"), ".1f"),
            _fmt(r.get("peak_rss_mb"), ".1f"), _fmt(r.get("bytes"), ","),
            _fmt(None if r.get("accuracy") is None else 100 * r["accuracy"], ".2f"),
            _fmt(None if agree is None else 100 * agree, ".2f"),
            _fmt(r.get("int8_over_float32"), ".2f"), _fmt(r.get("macs"), ","),
            _fmt(r.get("floor_us"), ".2f"),
            _fmt(r.get("p50_over_floor"), ".1f"), state])
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


def render_markdown(rows: Sequence[dict], documents: Sequence[dict]) -> str:
    lines = ["# On-device latency", "",
             "Per build x variant x board x threads: interpreter load + allocate (init), first "
             "invoke, then timed invokes after warm-up. int8/f32 is the int8 p50 over the "
             "float32 p50 on the same board and thread count. acc/agree: the board's top-1 on "
             "labelled test images, and agreement with the host's predictions.", ""]
    for doc in documents:
        if doc.get("status") == "ok":
            m = doc["machine"]
            pinning = f"pinned to CPUs {doc['cpus']}" if doc.get("cpus") else "not pinned"
            lines.append(f"- **{doc['board']}**: {m['cpu_model']}, {m['cores']} cores, "
                         f"{m['uname']}; {doc['runtime']['name']} {doc['runtime']['version']}; "
                         f"{pinning}; "
                         f"pushed {len(doc.get('pushed', []))} file(s)")
            if doc.get("compute_floor"):
                f = doc["compute_floor"]
                peak = f["macs_per_cycle"]
                lines.append(f"  - compute floor: {f['isa']} peak of {peak['float32']} float32 / "
                             f"{peak['int8']} int8 MACs/cycle per core at "
                             f"{f['clock_hz'] / 1e9:.2f} GHz "
                             f"({f['clock_source']}); floor = MACs / (that x threads)")
        else:
            lines.append(f"- **{doc['board']}**: FAILED - {doc.get('error', 'no result yet')}")
    return "\n".join([*lines, "", render_table(rows, "github"), ""])


def render_chart(rows: Sequence[dict], path: Path) -> None:
    """Horizontal bars of p50 latency, one per build/variant/board/threads, PNG via Pillow."""
    from PIL import Image, ImageDraw

    bars = [r for r in rows if r.get("p50_us")]
    colours = {"float32": (66, 133, 244), "int8": (219, 68, 55), "float16": (244, 180, 0),
               "dynamic_range": (15, 157, 88)}
    label_w, bar_w, row_h, top = 330, 520, 22, 40
    image = Image.new("RGB", (label_w + bar_w + 90, top + row_h * max(len(bars), 1) + 20),
                      "white")
    draw = ImageDraw.Draw(image)
    # Pillow's default bitmap font has no "µ".
    draw.text((10, 10), "p50 latency per variant and board (microseconds, lower is better)",
              fill="black")
    peak = max((r["p50_us"] for r in bars), default=1.0)
    for i, r in enumerate(bars):
        y = top + i * row_h
        label = f"{r['build']} {r['variant']} @ {r['board']}, {r['threads']} thread(s)"
        draw.text((10, y + 4), label, fill="black")
        width = max(1, int(bar_w * r["p50_us"] / peak))
        draw.rectangle([label_w, y + 3, label_w + width, y + row_h - 3],
                       fill=colours.get(r["variant"], (120, 120, 120)))
        draw.text((label_w + width + 6, y + 4), f"{r['p50_us']:.1f}", fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def write_latency_report(reports_dir: Path, boards: Sequence[Any],
                         models: dict[str, Path]) -> list[dict]:
    """Rebuild latency.{json,md,png} from reports/latency/<board>.json for the given boards."""
    reports_dir = Path(reports_dir)
    documents = []
    for board in boards:
        path = reports_dir / "latency" / f"{board.name}.json"
        if path.exists():
            documents.append(json.loads(path.read_text()))
    current_sha = {key: sha256_file(p) for key, p in models.items() if Path(p).exists()}
    rows = latency_rows(documents, current_sha)
    failed = [{"board": d["board"], "error": d.get("error")} for d in documents
              if d.get("status") != "ok"]
    write_json(reports_dir / "latency.json", {"rows": rows, "failed_boards": failed,
                                              "boards": [d["board"] for d in documents]})
    write_text(reports_dir / "latency.md", render_markdown(rows, documents))
    render_chart(rows, reports_dir / "latency.png")
    print(render_table(rows, "simple"))
    for f in failed:
        print(f"board {f['board']}: FAILED: {f['error']}")
    return rows
