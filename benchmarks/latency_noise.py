"""Latency noise: run one staged bench plan several times and print the spread of each p50.

The nightly's latency gate (nightly.max_latency_regression_pct) must sit above this noise.
Stage a plan first (any `doit bench:<board>` leaves artifacts/bench/<board>/plan.json), then

    python benchmarks/latency_noise.py artifacts/bench/local/plan.json --repeats 5

For a remote board, run board/runner.py there the same way and feed the JSON outputs with
--results. Prints, per model x threads, every p50, their median, the full range and the
largest deviation from the median, in % of the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

RUNNER = Path(__file__).resolve().parent.parent / "board" / "runner.py"


def spread(documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, threads): the p50 of every run, their median, range and max deviation (%)."""
    cases: dict[tuple[str, int], list[float]] = {}
    for doc in documents:
        for r in doc["results"]:
            if r.get("p50_us") is not None:
                cases.setdefault((r["model"], r["threads"]), []).append(r["p50_us"])
    rows = []
    for (model, threads), p50s in sorted(cases.items()):
        median = statistics.median(p50s)
        rows.append({"model": model, "threads": threads, "p50_us": p50s, "median_us": median,
                     "range_pct": (max(p50s) - min(p50s)) / median * 100,
                     "max_dev_pct": max(abs(p - median) for p in p50s) / median * 100})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path, nargs="?", help="a staged plan.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, nargs="*", default=[],
                        help="runner JSON outputs to use instead of running the plan")
    args = parser.parse_args(argv)
    documents = [json.loads(p.read_text()) for p in args.results]
    if args.plan:
        for i in range(args.repeats):
            proc = subprocess.run([sys.executable, str(RUNNER), "--plan", str(args.plan)],
                                  capture_output=True, text=True, check=True)
            documents.append(json.loads(proc.stdout))
            print(f"run {i + 1}/{args.repeats} done", file=sys.stderr)
    if not documents:
        parser.error("give a plan.json or --results")
    rows = spread(documents)
    for r in rows:
        print(f"{r['model']:32} x{r['threads']}  p50 "
              + " ".join(f"{p:7.1f}" for p in r["p50_us"])
              + f"  median {r['median_us']:7.1f}  range {r['range_pct']:5.1f} %  "
              f"max dev {r['max_dev_pct']:5.1f} %")
    print(f"worst deviation from the median: {max(r['max_dev_pct'] for r in rows):.1f} %")


if __name__ == "__main__":
    main()
