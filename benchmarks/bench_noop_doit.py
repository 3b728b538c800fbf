"""A no-op `doit` against a bare `doit` on an empty dodo.py, alternating, side by side.

Issue 22's constraint: a no-op `doit` (a built project, everything up to date) stays at most
1.4x a bare `doit` in a directory whose dodo.py is empty (an empty file: no task, no
DOIT_CONFIG; the floor any doit project pays: Python, doit and its plugins). Both are timed
in this one run, one after the other in each round, so a busy machine slows both alike; the
figure is the ratio of the medians.

Each project is a fresh clone's files (`git archive` of a revision, or this checkout's files
as they are on disk with `--rev WORKTREE`), built once with the smoke preset (the default
build's task graph, trained in about a minute) and run once more before timing, so every
timed run is a no-op (checked: a timed run that executes a task stops the benchmark).
Several `--rev` are timed in the same rounds: the before/after of a change is one run.

Two conditions, both timed:
- bytecode cached: Python writes and reuses `__pycache__` (a user's checkout);
- no bytecode: PYTHONDONTWRITEBYTECODE=1 and no `__pycache__` in the project, so every
  project module is compiled on every run (CI containers and this repository's sandboxes
  set it). Installed packages (doit) keep the bytecode pip compiled, in both directories.
- no bytecode, graph declared: as above, with the cached task graph removed before each
  run, so the tasks are declared again (and the graph rewritten): the first `doit` after
  a change. A revision without the cache declares on every run in all three.

Usage: python benchmarks/bench_noop_doit.py [--rev main] [--rev WORKTREE] [--repeats 9]
           [--mirror DIR_OR_URL] [--workdir DIR] [--out docs/measured/noop_doit.md]
`--workdir` keeps the built projects (reused and brought up to date by the next run);
by default they live in a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
GOAL = 1.4
CONDITIONS = ("bytecode cached", "no bytecode", "no bytecode, graph declared")
# The task graph cached as data (pipeline/graph/cache.py), removed before each run of the
# third condition: what the first `doit` after a change pays to declare the tasks again.
GRAPH = Path("artifacts") / ".task-graph.json"


def clone_files(rev: str, dest: Path) -> None:
    """`dest` holds `rev`'s tracked files (WORKTREE: as they are on disk now); files a
    previous copy had and `rev` does not are left, artifacts/ (the build) is kept.

    As `git checkout` does, only files whose bytes differ are written: a rewritten file has
    a new mtime, and doit then hashes it on every no-op run (it keeps the mtime it saw when
    the task last ran), which would be timed as if it were the project's own cost."""
    with tempfile.TemporaryDirectory() as tmp:
        source = REPO if rev == WORKTREE else Path(tmp)
        if rev == WORKTREE:
            names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                                   capture_output=True).stdout.decode().split("\0")
        else:
            archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO,
                                     check=True, capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as files:
                files.extractall(source, filter="data")
                names = [m.name for m in files.getmembers() if m.isfile()]
        for name in filter(None, names):
            src, dst = source / name, dest / name
            if src.is_file() and not (dst.is_file() and dst.read_bytes() == src.read_bytes()):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


def run_doit(cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and stdout of one `doit`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"doit in {cwd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def executed(stdout: str) -> list[str]:
    """The tasks a verbosity-2 doit run executed ('.  name'); up-to-date ones print '-- name'."""
    return [line for line in stdout.splitlines() if line.startswith(".  ")]


def condition_env(env: dict[str, str], condition: str) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if condition.startswith("no bytecode"):
        out["PYTHONDONTWRITEBYTECODE"] = "1"
    return out


HIDDEN = "__pycache__.hidden"


def hide_bytecode(project: Path) -> None:
    """No `__pycache__` in the project for the no-bytecode runs. Set aside, not deleted: the
    next round's bytecode-cached runs get it back, so they are timed with the bytecode a
    user's checkout has (deleting it made each of them compile and write every module
    again, which timed both conditions as no bytecode)."""
    for cache in project.rglob("__pycache__"):
        hidden = cache.with_name(HIDDEN)
        if hidden.exists():
            shutil.rmtree(hidden)
        cache.rename(hidden)


def restore_bytecode(project: Path) -> None:
    for hidden in project.rglob(HIDDEN):
        cache = hidden.with_name("__pycache__")
        if cache.exists():
            shutil.rmtree(cache)
        hidden.rename(cache)


def prepare(revs: list[str], workdir: Path, env: dict[str, str]) -> dict[str, Path]:
    """label -> a built project per revision, plus "bare" (an empty dodo.py)."""
    bare = workdir / "bare"
    bare.mkdir(parents=True, exist_ok=True)
    (bare / "dodo.py").write_text("")
    projects = {"bare": bare}
    for rev in revs:
        project = workdir / rev.replace("/", "_")
        clone_files(rev, project)
        print(f"building {rev} in {project} (smoke preset; reused when already built)",
              file=sys.stderr)
        run_doit(project, condition_env(env, "bytecode cached"))
        projects[rev] = project
    for project in projects.values():  # this run must be a no-op, and writes the bytecode
        left = executed(run_doit(project, condition_env(env, "bytecode cached"))[2])
        if left:
            sys.exit(f"{project}: a second doit still ran {left}: not a no-op")
    return projects


def measure(projects: dict[str, Path], env: dict[str, str], repeats: int
            ) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(condition, label) -> [(wall, cpu)] per round; each round runs every directory under
    every condition, in turn, in reverse order every other round, so that no directory
    always runs right after the same one (what one leaves behind, a warm page cache or a
    busy disk, falls on each alike)."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {
        (c, label): [] for c in CONDITIONS for label in projects}
    for round_ in range(repeats):
        order = list(projects.items())
        for condition in CONDITIONS:
            for label, project in (order if round_ % 2 == 0 else order[::-1]):
                if condition.startswith("no bytecode"):
                    hide_bytecode(project)
                else:
                    restore_bytecode(project)
                if condition.endswith("graph declared"):
                    (project / GRAPH).unlink(missing_ok=True)
                wall, cpu, out = run_doit(project, condition_env(env, condition))
                if label != "bare" and executed(out):
                    sys.exit(f"{label}: a timed run executed {executed(out)}: not a no-op")
                samples[(condition, label)].append((wall, cpu))
    return samples


def table(samples: dict[tuple[str, str], list[tuple[float, float]]], labels: list[str]
          ) -> list[str]:
    rows = ["| condition | dodo.py | wall median s | CPU median s | wall / bare | CPU / bare |",
            "|---|---|---|---|---|---|"]
    for condition in CONDITIONS:
        bare = samples[(condition, "bare")]
        bare_wall = statistics.median(w for w, _ in bare)
        bare_cpu = statistics.median(c for _, c in bare)
        for label in ["bare", *labels]:
            wall = statistics.median(w for w, _ in samples[(condition, label)])
            cpu = statistics.median(c for _, c in samples[(condition, label)])
            name = "empty (bare doit)" if label == "bare" else f"project at {label}, no-op"
            rows.append(f"| {condition} | {name} | {wall:.3f} | {cpu:.3f} | "
                        f"{wall / bare_wall:.2f}x | {cpu / bare_cpu:.2f}x |")
    return rows


def commit_of(rev: str) -> str:
    """`rev`'s short commit (WORKTREE: HEAD's, marked when files differ from it)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD" if rev == WORKTREE else rev],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    if rev == WORKTREE and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                          cwd=REPO, capture_output=True, text=True).stdout:
        commit += " plus uncommitted edits"
    return commit


def describe(commits: dict[str, str]) -> str:
    import doit

    names = ", ".join(f"{rev} = {commit}" for rev, commit in commits.items())
    return (f"Python {platform.python_version()}, doit {'.'.join(map(str, doit.__version__))}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; {names}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help="a git revision to clone and time, "
                        f"or {WORKTREE} (this checkout's files); repeatable (default: "
                        f"{WORKTREE})")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--mirror", default=os.environ.get("PIPELINE_MIRROR")
                        or str(REPO.parent / "shared" / "datasets" / "mnist"),
                        help="MNIST mirror (default: $PIPELINE_MIRROR, else "
                        "../shared/datasets/mnist beside the repository)")
    parser.add_argument("--workdir", type=Path, help="keep the built projects here")
    parser.add_argument("--out", type=Path, help="also write the table as a Markdown page")
    args = parser.parse_args()
    revs = args.rev or [WORKTREE]
    commits = {rev: commit_of(rev) for rev in revs}  # before building: a branch may move
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_MIRROR=args.mirror, PIPELINE_OFFLINE="1",
               PIPELINE_PARAMS="params/smoke.toml")
    with tempfile.TemporaryDirectory() as tmp:
        projects = prepare(revs, args.workdir or Path(tmp), env)
        rows = table(measure(projects, env, args.repeats), revs)
    # The command as a reader would type it: where this run kept its projects is no figure.
    shown = [a for i, a in enumerate(sys.argv[1:]) if "--workdir" not in (a, sys.argv[i])
             and not a.startswith("--workdir=")]
    command = "python benchmarks/bench_noop_doit.py " + " ".join(shown)
    text = "\n".join([
        "# A no-op doit against bare doit", "",
        f"Generated by `{command.strip()}`; do not edit. Median of {args.repeats} runs each, "
        "the directories alternating in every round (benchmarks/bench_noop_doit.py says "
        f"how). Goal: a no-op at most {GOAL}x bare doit (issue 22).", "",
        describe(commits) + ".", "", *rows, ""])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
