"""Provenance of a nightly run: what made its artifacts (code, params, dataset, packages,
machine) and whether its bytes are identical to the previous run's.

Pure functions over files on disk; pipeline/nightly/run.py puts their results in manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.core.datasets import DATASETS
from pipeline.core.files import sha256_file
from pipeline.core.layout import PARAMS_JSON, Layout
from pipeline.graph.cache import FILE_NAME as GRAPH_FILE
from pipeline.nightly.history import PENDING

PACKAGES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",),
            "ai-edge-litert": ("ai-edge-litert",), "numpy": ("numpy",), "doit": ("doit",)}
# Files whose bytes measure something (seconds, latencies), name the run directory or follow
# the board inventory (not an input of the models): they are hashed like everything else,
# but a difference there says nothing about reproducibility.
EXPECTED_TO_DIFFER = ("models/*/history.json", "reports/*", "reports/*/*", "reports/*/*/*",
                      "bench/*/plan.json")
# The nightly's own files in a run directory (pipeline/nightly/run.py writes them, history.py
# the record): not artifacts of the build. The resolved params (PARAMS_JSON) hold the
# nightly's gates too, which are no input of the build (the inputs hash leaves them out).
MANIFEST_JSON, DOIT_LOG = "manifest.json", "doit.log"
EVENTS_JSONL = "doit-events.jsonl"   # doit's task events (pipeline/core/events.py)
NOT_ARTIFACTS = (MANIFEST_JSON, DOIT_LOG, EVENTS_JSONL, PENDING, PARAMS_JSON)



def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_hash(project: Path) -> str:
    """SHA-256 over the code that makes the artifacts: every module of pipeline/ (its
    subsystem packages too), board/runner.py, dodo.py."""
    files = sorted([*(project / "pipeline").rglob("*.py"), project / "board" / "runner.py",
                    project / "dodo.py"])
    return canonical_hash({str(f.relative_to(project)): sha256_file(f) for f in files})


def git_state(project: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty); dirty = tracked files modified (untracked files do not count:
    artifacts/ lives in the tree). (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(project), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name, distributions in PACKAGES.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = f"{metadata.version(dist)} ({dist})"
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def machine(cpuinfo_file: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The host's CPU model as /proc/cpuinfo names it: "model name" on x86, "uarch" on
    RISC-V (the K1's "spacemit,x60"), "Model" on a Raspberry Pi; else Python's guess."""
    try:
        cpuinfo = cpuinfo_file.read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines()
                  if line.startswith(("model name", "uarch", "Model"))), platform.processor())
    return {"cpu_model": model or "unknown", "cores": os.cpu_count(),
            "arch": platform.machine(), "system": platform.platform(),
            "hostname": platform.node()}


def dataset_hashes(run_dir: Path, datasets: Sequence[str],
                   specs: Mapping[str, Any] = DATASETS) -> dict[str, dict[str, str | None]]:
    """SHA-256 of each archive's decompressed payload (None where the file is missing);
    `specs`: the registry, with the params file's declared datasets."""
    from pipeline.stages.download import DownloadError, payload_sha256

    out: dict[str, dict[str, str | None]] = {}
    for name in datasets:
        out[name] = {}
        for remote in specs[name].files:
            try:
                out[name][remote.name] = payload_sha256(Layout(run_dir).raw_dir(name) /
                                                        remote.name)
            except DownloadError:
                out[name][remote.name] = None
    return out


def artifact_hashes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file doit produced in the run directory (temporary
    `.partial` files of an interrupted write and the nightly's own files excluded)."""
    out = {}
    doit_db = Layout(run_dir).doit_db()
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(run_dir).as_posix()
        # references/ holds the last accepted nightly's models, inputs of the bench's
        # verdict (pipeline/bench/reference.py), not products of this run.
        # doit's database and the cached task graph (its key holds this run's paths and
        # mtimes) are bookkeeping, like the nightly's own files.
        if rel in NOT_ARTIFACTS or path == doit_db or path.name.startswith(doit_db.name) \
                or rel == GRAPH_FILE or ".partial" in path.name or rel.startswith("references/"):
            continue
        out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def board_files(rel: str, board: str) -> bool:
    """Whether the run-directory file `rel` belongs to `board` (its plan, its results)."""
    layout = Layout(Path("."))
    return (rel.startswith(f"{layout.bench_dir(board).as_posix()}/")
            or rel in (layout.board_result(board).as_posix(),
                       layout.board_samples(board).as_posix()))


def user_model_hashes(params: Any) -> dict[str, str]:
    """SHA-256 of each build's own model file (their .py, module or saved model): an input
    like the code, so editing it is a change of inputs, not an unreproducible artifact."""
    out = {}
    for build in params.builds:
        source = params.model_source(build.name)
        if source.file is not None and Path(source.file).is_file():
            out[build.name] = sha256_file(source.file)
    return out


def unstable_names_note(run_dir: Path, builds: Sequence[str]) -> str:
    """"; <build>: layer names depend on ..." for each build whose train stage found its
    layer names differing between two calls (history.json), else ""."""
    notes = []
    for build in builds:
        try:
            record = json.loads(Layout(run_dir).history_json(build).read_text())
        except (OSError, ValueError):
            continue
        if record.get("layer_names_stable") is False:
            notes.append(f"{build}: its layer names depend on what the process built before, "
                         "so its .h5/.tflite bytes are not reproducible (give every layer an "
                         "explicit name=; docs/own-model-and-data.md)")
    return "".join(f"; {note}" for note in notes)


def reproducibility(artifacts: dict[str, dict[str, Any]], inputs_hash: str,
                    previous: dict[str, Any] | None,
                    boards: Sequence[str] = ()) -> dict[str, Any]:
    """Mark each artifact identical (or not) to the previous run's, when the inputs (params
    that shape artifacts, code, dataset) are unchanged; summarise the verdict.

    `boards` is this run's inventory: the previous run's files of a board no longer in it
    are "dropped" (the inventory is not an input of the models), not missing."""
    if previous is None:
        for a in artifacts.values():
            a["identical_to_previous"] = None
        return {"comparable": False, "previous_run": None,
                "summary": "no previous run manifest to compare with"}
    if previous.get("inputs_hash") != inputs_hash:
        for a in artifacts.values():
            a["identical_to_previous"] = None
        return {"comparable": False, "previous_run": previous.get("run_id"),
                "summary": f"inputs changed since run {previous.get('run_id')} (params, code "
                           "or dataset): artifacts are not expected to be identical"}
    before = previous.get("artifacts", {})
    unexpected, expected, new, same = [], [], [], 0
    for rel, a in artifacts.items():
        if rel not in before:  # e.g. a board added to the inventory since
            a["identical_to_previous"] = None
            new.append(rel)
            continue
        a["identical_to_previous"] = before[rel]["sha256"] == a["sha256"]
        if a["identical_to_previous"]:
            same += 1
        elif any(fnmatch(rel, pattern) for pattern in EXPECTED_TO_DIFFER):
            expected.append(rel)
        else:
            unexpected.append(rel)
    gone_boards = sorted({b.get("name") for b in previous.get("boards", [])
                          if isinstance(b, dict) and b.get("name")} - set(boards))
    dropped, missing = [], []
    for rel in sorted(set(before) - set(artifacts)):
        (dropped if any(board_files(rel, b) for b in gone_boards) else missing).append(rel)
    ok = not unexpected and not missing
    compared = len(artifacts) - len(new)
    summary = (f"{'REPRODUCIBLE' if ok else 'NOT REPRODUCIBLE'}: {same} of {compared} "
               f"artifacts byte-identical to run {previous.get('run_id')} (inputs unchanged)")
    if unexpected:
        summary += f"; differing: {', '.join(unexpected)}"
    if missing:
        summary += f"; missing: {', '.join(missing)}"
    if expected:
        summary += (f"; {len(expected)} measurement file(s) differ as expected (timings, "
                    "run-directory paths, board settings)")
    if new:
        summary += f"; {len(new)} file(s) new in this run"
    if dropped:
        summary += (f"; {len(dropped)} file(s) of board(s) dropped from the inventory "
                    f"({', '.join(gone_boards)}) not compared")
    return {"comparable": True, "previous_run": previous.get("run_id"), "reproducible": ok,
            "identical": same, "differing": unexpected, "missing": missing, "new": new,
            "dropped": dropped, "dropped_boards": gone_boards,
            "differing_as_expected": expected, "summary": summary}
