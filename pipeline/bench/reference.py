"""References: the model each case is timed beside, and the verdict on the pair.

A board's reference for build/variant is the model last timed on that board (for `doit
bench`), or the last accepted nightly's (the nightly seeds the index of its run directory
from it). Each is kept by its SHA-256 under artifacts/references/, copied once, and the index
artifacts/references/<board>.json says which SHA-256 each build/variant had. A reference that
is missing, damaged or unreadable is not compared: the case is timed alone, and the board's
result says why once (`reference_notes`).

Each pair's per-round medians (the verdict's whole input) are kept once, compressed, beside
the board's result: reports/latency/<board>.samples.ndjson.gz (in a nightly's run directory
too), one JSON line per case, named with its SHA-256 by the result's "samples_file";
`recompute_verdicts` (and `python -m pipeline.bench.reference <board>.json`) judges them again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline import PipelineError
from pipeline.core.files import sha256_file, write_json
from pipeline.core.layout import Layout
from pipeline.core.verdict import Verdict, describe, judge

# What one line of a samples file holds (besides the two lists of round medians).
SAMPLE_KEYS = ("build", "variant", "threads", "sha256", "reference_sha256", "alpha",
               "min_effect")


class SamplesError(PipelineError):
    """A samples file that is missing, damaged or not what its result names (one line)."""


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


def split_samples(results: Sequence[dict[str, Any]], alpha: float, min_effect: float) -> bytes:
    """Move each pair's per-round medians out of `results` (their "pair" keeps its counts)
    into canonical gzip'd NDJSON: one line per case, sorted by build, variant and threads,
    keys sorted, no timestamp in the gzip header, so the same samples give the same bytes.
    JSON keeps every float exactly, so a verdict recomputed from them is the same verdict."""
    lines = []
    for r in results:
        pair = r.get("pair")
        if not isinstance(pair, dict) or "candidate_us" not in pair:
            continue
        lines.append({**{k: r.get(k) for k in SAMPLE_KEYS[:5]}, "alpha": alpha,
                      "min_effect": min_effect, "candidate_us": pair.pop("candidate_us"),
                      "reference_us": pair.pop("reference_us")})
    lines.sort(key=lambda line: (line["build"], line["variant"], line["threads"]))
    text = "".join(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n"
                   for line in lines)
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def samples_reference(name: str, data: bytes) -> dict[str, str]:
    """How a result names its samples file: the name beside it and its SHA-256."""
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest()}


def read_samples(path: Path, sha256: str | None) -> list[dict[str, Any]]:
    """The lines of a samples file whose SHA-256 must be `sha256`; SamplesError (one line
    naming the file) when it is missing, damaged or not made of well-formed lines."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SamplesError(f"{path}: cannot read it ({exc.strerror or exc}); bench the board "
                           "again to time its pairs anew") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise SamplesError(f"{path}: SHA-256 {actual[:12]} is not the {str(sha256)[:12]} its "
                           "result names (changed or damaged); bench the board again")
    try:
        lines = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines()]
    except (OSError, EOFError, ValueError) as exc:
        raise SamplesError(f"{path}: not gzip'd JSON lines ({exc}); bench the board again") \
            from None
    for number, line in enumerate(lines, 1):
        lists = [line.get(k) if isinstance(line, dict) else None
                 for k in ("candidate_us", "reference_us")]
        if not isinstance(line, dict) or any(k not in line for k in SAMPLE_KEYS) or not all(
                isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
                for v in lists):
            raise SamplesError(f"{path}: line {number} lacks {', '.join(SAMPLE_KEYS)} or its "
                               "round medians; bench the board again")
    return lines


def recompute_verdicts(result_path: Path) -> list[tuple[dict[str, Any], Verdict | None]]:
    """Each case of a board's result (reports/latency/<board>.json) that was timed beside its
    reference, with the verdict judged again from its samples file."""
    try:
        doc = json.loads(Path(result_path).read_text())
    except (OSError, ValueError) as exc:
        raise SamplesError(f"{result_path}: unreadable ({exc})") from None
    named = doc.get("samples_file") if isinstance(doc, dict) else None
    if not isinstance(named, dict) or not isinstance(named.get("name"), str):
        raise SamplesError(f"{result_path}: names no samples file (a result of an older "
                           "bench, or a failed one); bench the board again")
    path = Path(result_path).parent / Path(named["name"]).name
    return [(line, judge(line["reference_us"], line["candidate_us"],
                         same_bytes=line["sha256"] == line["reference_sha256"],
                         alpha=line["alpha"], min_effect=line["min_effect"]))
            for line in read_samples(path, named.get("sha256"))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Judge again each verdict of a board's result from its samples file.")
    parser.add_argument("result", type=Path, help="reports/latency/<board>.json")
    args = parser.parse_args(argv)
    try:
        cases = recompute_verdicts(args.result)
    except SamplesError as exc:
        sys.exit(f"error: {exc}")
    for line, verdict in cases:
        print(f"{line['build']}/{line['variant']} x{line['threads']}: "
              f"{describe(verdict) or 'too few rounds for a verdict'}")


if __name__ == "__main__":
    main()
