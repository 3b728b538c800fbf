"""Mutation testing: break the code on purpose, one realistic break at a time, and see whether
the tests notice. A mutant that survives is a missing assertion.

    python benchmarks/mutate.py                         # every case in benchmarks/mutations.py
    python benchmarks/mutate.py --only pipeline/history.py --list
    python benchmarks/mutate.py --cases my_cases.py --json survivors.json

A cases file defines CASES, a list of `Case(file, original, mutated, tests, note)`: `original`
must occur exactly once in `file`; it is replaced by `mutated` and the named tests run
(`python -m pytest -q -x <tests>`). The tree is copied once into a temporary directory and
every mutation is applied there and undone after its run (in a `finally`), so the working
tree is never touched, even by Ctrl-C. Before the mutants, each distinct test selection runs
once on the unmutated copy (their union, in one run, when they name only files and tests): a
selection that fails there makes every mutant look killed, so the run stops. A mutant is killed when the tests fail or time out; it survives when they pass.

Output: one line per mutant, then per file the number of mutants, killed and survived, and
the survival rate. The tests find the real MNIST as they always do: give PIPELINE_MIRROR, or
the copy gets ../shared/datasets/mnist of the source tree as its mirror.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("dodo.py", "params.toml", "params", "pipeline", "board", "tests", "pyproject.toml",
          "benchmarks")


SCORED = ("killed", "survived", "timeout")


@dataclass(frozen=True)
class Case:
    file: str             # relative to the tree, e.g. "pipeline/history.py"
    original: str         # a snippet that occurs exactly once in the file
    mutated: str          # what it becomes
    tests: tuple[str, ...]  # pytest arguments: files, or file::test, or "-k expr"
    note: str = ""        # what the break means, in a few words


@dataclass
class Outcome:
    case: Case
    status: str           # "killed", "survived", "timeout", "stale" (snippet not found once),
                          # "invalid" (the mutant does not import: fix the case)
    seconds: float


def load_cases(path: Path) -> list[Case]:
    spec = importlib.util.spec_from_file_location("mutation_cases", path)
    module = importlib.util.module_from_spec(spec)
    module.Case = Case  # a cases file uses `Case` without importing this script
    spec.loader.exec_module(module)
    return list(module.CASES)


def copy_tree(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", ".pytest_cache"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def run_tests(tree: Path, tests: Sequence[str], env: dict[str, str], timeout: float
              ) -> tuple[str, float, str]:
    """(verdict, seconds, the end of pytest's output)."""
    started = time.monotonic()
    # Its own process group: a timeout or Ctrl-C stops pytest and whatever it started
    # (doit, runners), not just pytest.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                             "no:cacheprovider", *tests], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # 5: no test collected; 2/3/4: usage, collection or internal errors (a mutant that does
    # not even import). None of them is a verdict on the tests.
    tail = (stdout + stderr)[-3000:]
    if proc.returncode in (2, 3, 4, 5):
        return "invalid", time.monotonic() - started, tail
    return ("survived" if proc.returncode == 0 else "killed"), time.monotonic() - started, tail


def mutate_one(tree: Path, case: Case, env: dict[str, str], timeout: float) -> Outcome:
    path = tree / case.file
    text = path.read_text()
    if text.count(case.original) != 1:
        return Outcome(case, "stale", 0.0)
    try:
        path.write_text(text.replace(case.original, case.mutated))
        status, seconds, _ = run_tests(tree, case.tests, env, timeout)
    finally:
        path.write_text(text)  # undone on every way out, Ctrl-C included
    return Outcome(case, status, seconds)


def summary(outcomes: Sequence[Outcome]) -> list[str]:
    lines = []
    for file in sorted({o.case.file for o in outcomes}):
        mine = [o for o in outcomes if o.case.file == file and o.status in SCORED]
        survived = sum(o.status == "survived" for o in mine)
        rate = f"{100 * survived / len(mine):.0f} %" if mine else "–"
        lines.append(f"{file}: {len(mine)} mutant(s), {len(mine) - survived} killed, "
                     f"{survived} survived ({rate})")
    scored = [o for o in outcomes if o.status in SCORED]
    survived = sum(o.status == "survived" for o in scored)
    if scored:
        lines.append(f"total: {len(scored)} mutant(s), {survived} survived "
                     f"({100 * survived / len(scored):.0f} %)")
    stale = [o for o in outcomes if o.status == "stale"]
    if stale:
        lines.append(f"{len(stale)} case(s) not applied: their snippet does not occur exactly "
                     "once (update the cases file)")
    invalid = [o for o in outcomes if o.status == "invalid"]
    if invalid:
        lines.append(f"{len(invalid)} case(s) not scored: the mutant does not import (fix the "
                     "case): " + "; ".join(o.case.note for o in invalid))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=ROOT / "benchmarks" / "mutations.py",
                        help="file defining CASES (default benchmarks/mutations.py)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="source tree to copy and mutate (default: this checkout)")
    parser.add_argument("--only", action="append", default=[],
                        help="only cases of this file (repeatable)")
    parser.add_argument("--match", help="only cases whose note contains this text")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds per mutant's test run before it counts as killed")
    parser.add_argument("--workdir", type=Path,
                        help="where the copy is made (default: the system's temporary dir)")
    parser.add_argument("--json", type=Path, help="also write every outcome here")
    args = parser.parse_args(argv)
    cases = [c for c in load_cases(args.cases) if (not args.only or c.file in args.only)
             and (args.match is None or args.match in c.note)]
    if args.list:
        for c in cases:
            print(f"{c.file}: {c.note or c.mutated.strip()[:60]}  [{' '.join(c.tests)}]")
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")
           or k in ("PIPELINE_MIRROR", "PIPELINE_MIRROR_MNIST")}
    shared = args.tree.resolve().parent / "shared" / "datasets" / "mnist"
    if "PIPELINE_MIRROR" not in env and shared.is_dir():
        env["PIPELINE_MIRROR"] = str(shared)  # the copy has no ../shared beside it
    env["PIPELINE_OFFLINE"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="mutate-", dir=args.workdir))
    outcomes: list[Outcome] = []
    try:
        tree = workdir / "tree"
        copy_tree(args.tree.resolve(), tree)
        selections = sorted({c.tests for c in cases})
        if all(not arg.startswith("-") for sel in selections for arg in sel):
            # Files and test ids only: their union in one run covers every selection.
            selections = [tuple(dict.fromkeys(arg for sel in selections for arg in sel))]
        for tests in selections:
            status, seconds, tail = run_tests(tree, tests, env, args.timeout)
            if status != "survived":
                raise SystemExit(f"error: the unmutated tree fails {' '.join(tests)} "
                                 f"({status}, {seconds:.0f} s): fix that first\n{tail}")
            print(f"baseline {' '.join(tests)}: passes ({seconds:.0f} s)", flush=True)
        for i, case in enumerate(cases, 1):
            outcome = mutate_one(tree, case, env, args.timeout)
            outcomes.append(outcome)
            print(f"[{i}/{len(cases)}] {outcome.status.upper():8} {case.file}: "
                  f"{case.note or case.mutated.strip()[:60]} ({outcome.seconds:.0f} s)",
                  flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for line in summary(outcomes):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(o.case), "status": o.status,
                                          "seconds": o.seconds} for o in outcomes], indent=2))


if __name__ == "__main__":
    main()
