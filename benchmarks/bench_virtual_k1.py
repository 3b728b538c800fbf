"""Virtual K1 timings: `up` and `down` (warm cache, and cold with --cold), and what a login costs.

    python benchmarks/bench_virtual_k1.py --repeats 5          # as root
    python benchmarks/bench_virtual_k1.py --repeats 3 --cold   # + a fresh cache (downloads)

Runs the real CLI (`python -m pipeline.virtual_k1`) in a state directory of its own under the
cache, so a board you have up is not touched. Prints the median and range of each figure:
`up` and `down` wall time, `ssh true`, `python3 -c pass` and `import numpy, onnxruntime`
over ssh. With --cold, one `up` into an empty cache directory first (the whole download and
build), then `down`, and that cache is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.virtual_k1 import inventory as vk_inventory  # noqa: E402
from pipeline.virtual_k1 import paths as vk_paths  # noqa: E402


def timed(argv: Sequence[str], **kwargs) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv[:6])} failed: {proc.stderr.strip()[-500:]}")
    return time.monotonic() - started


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.virtual_k1", *args]


def summary(name: str, values: Sequence[float]) -> str:
    return (f"{name:34} median {statistics.median(values):7.2f} s   range "
            f"{min(values):.2f}-{max(values):.2f} s   (n={len(values)})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None,
                        help="the warm cache (default as `python -m pipeline.virtual_k1`)")
    parser.add_argument("--cold", action="store_true", help="also time one cold-cache up")
    args = parser.parse_args(argv)
    cache = (args.cache or Path(os.environ.get("VIRTUAL_K1_CACHE")
                                or vk_paths.default_cache(os.environ))).absolute()
    where = ["--cache", str(cache), "--state", str(cache / "bench-state")]
    figures: dict[str, list[float]] = {}
    if args.cold:
        cold = cache.parent / "virtual-k1-bench-cold"
        shutil.rmtree(cold, ignore_errors=True)
        try:
            figures["up, cold cache (download + build)"] = [
                timed(cli("up", "--cache", str(cold)), cwd=REPO)]
            figures["down after it"] = [timed(cli("down", "--cache", str(cold)), cwd=REPO)]
        finally:
            shutil.rmtree(cold, ignore_errors=True)
    timed(cli("up", *where), cwd=REPO)   # the root file system is built (if needed) here
    timed(cli("down", *where), cwd=REPO)
    layout = vk_paths.BoardPaths(cache, cache / "bench-state")
    for _ in range(args.repeats):
        figures.setdefault("up, warm cache", []).append(timed(cli("up", *where), cwd=REPO))
        port = json.loads(layout.record.read_text())["port"]
        for name, command in (("ssh true", "true"), ("ssh python3 -c pass", "python3 -c pass"),
                              ("ssh import numpy, onnxruntime",
                               "python3 -c 'import numpy, onnxruntime' 2>/dev/null")):
            figures.setdefault(name, []).append(
                timed(vk_inventory.ssh_argv(layout, port, command)))
        figures.setdefault("down", []).append(timed(cli("down", *where), cwd=REPO))
    for name, values in figures.items():
        print(summary(name, values))


if __name__ == "__main__":
    main()
