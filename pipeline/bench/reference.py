"""References: the model each case is timed beside, and the verdict on the pair.

A board's reference for build/variant is the model last timed on that board (for `doit
bench`), or the last accepted nightly's (the nightly seeds the index of its run directory
from it). Each is kept by its SHA-256 under artifacts/references/, copied once, and the index
artifacts/references/<board>.json says which SHA-256 each build/variant had. A reference that
is missing, damaged or unreadable is not compared: the case is timed alone, and the board's
result says why once (`reference_notes`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.files import sha256_file, write_json
from pipeline.core.layout import Layout
from pipeline.core.verdict import judge


def read_index(path: Path) -> tuple[dict[str, str], str | None]:
    """(build/variant -> SHA-256, or why the index was not usable). No index: no note."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"{path}: unreadable ({exc}); every case timed alone; delete it to start over"
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        return {}, f"{path}: not a build/variant -> SHA-256 map; delete it to start over"
    return doc, None


def references_for(layout: Layout, board: str, models: dict[str, Path]
                   ) -> tuple[dict[str, Path], list[str]]:
    """(build/variant -> the stored reference to time it beside, notes on those that cannot
    be). A build/variant never timed on the board has no reference and needs no note."""
    index, problem = read_index(layout.reference_index(board))
    notes = [problem] if problem else []
    found: dict[str, Path] = {}
    for key, path in sorted(models.items()):
        sha = index.get(key)
        if not sha:
            continue
        stored = layout.reference_model(sha, Path(path).suffix)
        try:
            actual = sha256_file(stored)
        except OSError as exc:
            notes.append(f"{key}: reference {sha[:12]} not compared: {stored.name}: "
                         f"{exc.strerror or exc}")
            continue
        if actual != sha:
            notes.append(f"{key}: reference {sha[:12]} not compared: {stored} is damaged "
                         f"(SHA-256 {actual[:12]}); delete it")
            continue
        found[key] = stored
    return found, notes


def keep_timed(layout: Layout, board: str, models: dict[str, Path],
               results: Sequence[dict[str, Any]]) -> None:
    """After a bench: keep a copy of each model timed (only when missing) and make it the
    board's reference for its build/variant."""
    timed = {f"{r['build']}/{r['variant']}": r["sha256"] for r in results if "sha256" in r}
    index, _ = read_index(layout.reference_index(board))
    for key, sha in timed.items():
        target = layout.reference_model(sha, Path(models[key]).suffix)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(models[key], partial)
            partial.replace(target)
    write_json(layout.reference_index(board), {**index, **timed})


def attach_verdicts(results: Sequence[dict[str, Any]], plan: dict[str, Any],
                    alpha: float, min_effect: float) -> None:
    """Each result timed beside a reference gets the reference's SHA-256 and the verdict
    (verdict.py) on its per-round medians; same bytes make it an A/A pair (environment)."""
    by_file = {m["file"]: m for m in plan["models"]}
    for result in results:
        entry = by_file.get(result.get("model"), {})
        pair, reference = result.get("pair"), entry.get("reference")
        if not pair or not reference:
            continue
        result["reference_sha256"] = reference["sha256"]
        verdict = judge(pair["reference_us"], pair["candidate_us"],
                        same_bytes=reference["sha256"] == entry.get("sha256"),
                        alpha=alpha, min_effect=min_effect)
        if verdict is not None:
            result["verdict"] = verdict.as_dict()


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, partial)
    partial.replace(target)


def seed_references(accepted: Path, run: Layout) -> int:
    """Give a nightly's run directory the last accepted nightly's references (each board's
    index and the models it names); return how many indexes were seeded. Safe to share
    inodes: keep_timed replaces an index by rename and never rewrites a stored model."""
    seeded = 0
    for index_path in sorted(Path(accepted).glob("*.json")):
        index, problem = read_index(index_path)
        if problem:
            continue  # a damaged accepted index: this night times alone and keeps its own
        for key, sha in index.items():
            for model in Path(accepted).glob(f"{sha}.*"):
                _link_or_copy(model, run.references_dir() / model.name)
        _link_or_copy(index_path, run.references_dir() / index_path.name)
        seeded += 1
    return seeded


def accept_references(run: Layout, accepted: Path) -> None:
    """After a nightly that breached nothing: its models become the references of the next
    one. Models no index names any more are removed (the store does not grow for ever)."""
    accepted = Path(accepted)
    for index_path in sorted(run.references_dir().glob("*.json")):
        index, problem = read_index(index_path)
        if problem:
            continue
        for sha in index.values():
            for model in run.references_dir().glob(f"{sha}.*"):
                if not (accepted / model.name).is_file():
                    _link_or_copy(model, accepted / model.name)
        _link_or_copy(index_path, accepted / index_path.name)
    named = {sha for index_path in accepted.glob("*.json")
             for sha in read_index(index_path)[0].values()}
    for model in accepted.iterdir() if accepted.is_dir() else []:
        if model.suffix != ".json" and model.name.split(".")[0] not in named:
            model.unlink()
