"""Provenance and the reproducibility verdict, on real files in tmp_path."""

from __future__ import annotations

import hashlib

from pipeline.nightly.provenance import (artifact_hashes, board_files, canonical_hash,
                                         code_hash, reproducibility)


def entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def manifest(run_id: int, artifacts: dict, boards=("local",), inputs: str = "in") -> dict:
    return {"run_id": run_id, "inputs_hash": inputs, "artifacts": artifacts,
            "boards": [{"name": b} for b in boards]}


BASE = {"models/b/b.h5": entry(b"h5"), "models/b/b_int8.tflite": entry(b"int8"),
        "models/b/history.json": entry(b"t=1"), "bench/k1/plan.json": entry(b"plan"),
        "bench/k1/b_int8.tflite": entry(b"int8"), "reports/latency/k1.json": entry(b"k1")}


def test_identical_inputs_and_bytes_are_reproducible_and_timings_differ_as_expected():
    now = {k: dict(v) for k, v in BASE.items()}
    now["models/b/history.json"] = entry(b"t=2")
    verdict = reproducibility(now, "in", manifest(4, BASE, boards=("k1",)), ["k1"])
    assert verdict["reproducible"] is True and verdict["previous_run"] == 4
    assert verdict["differing_as_expected"] == ["models/b/history.json"]
    assert verdict["summary"] == ("REPRODUCIBLE: 5 of 6 artifacts byte-identical to run 4 "
                                  "(inputs unchanged); 1 measurement file(s) differ as expected "
                                  "(timings, run-directory paths, board settings)")
    assert now["models/b/b.h5"]["identical_to_previous"] is True
    assert now["models/b/history.json"]["identical_to_previous"] is False


def test_a_changed_model_or_a_missing_file_is_not_reproducible():
    now = {k: dict(v) for k, v in BASE.items() if k != "models/b/b.h5"}
    now["models/b/b_int8.tflite"] = entry(b"other")
    verdict = reproducibility(now, "in", manifest(4, BASE, boards=("k1",)), ["k1"])
    assert verdict["reproducible"] is False
    assert verdict["differing"] == ["models/b/b_int8.tflite"]
    assert verdict["missing"] == ["models/b/b.h5"] and verdict["dropped"] == []
    assert "; differing: models/b/b_int8.tflite; missing: models/b/b.h5" in verdict["summary"]


def test_files_of_a_board_dropped_from_the_inventory_are_dropped_not_missing():
    now = {k: dict(v) for k, v in BASE.items() if not board_files(k, "k1")}
    verdict = reproducibility(now, "in", manifest(4, BASE, boards=("k1",)), [])
    assert verdict["reproducible"] is True and verdict["missing"] == []
    assert verdict["dropped"] == ["bench/k1/b_int8.tflite", "bench/k1/plan.json",
                                  "reports/latency/k1.json"]
    assert verdict["dropped_boards"] == ["k1"]
    assert verdict["summary"].startswith("REPRODUCIBLE: 3 of 3 artifacts")
    assert "3 file(s) of board(s) dropped from the inventory (k1) not compared" in \
        verdict["summary"]
    # A board still in the inventory whose files vanished: missing, an alarm.
    verdict = reproducibility(now, "in", manifest(4, BASE, boards=("k1",)), ["k1"])
    assert verdict["reproducible"] is False and len(verdict["missing"]) == 3


def test_board_files_are_the_boards_own_only():
    assert board_files("bench/k1/plan.json", "k1")
    assert board_files("reports/latency/k1.json", "k1")
    assert board_files("reports/latency/k1.samples.ndjson.gz", "k1")
    assert not board_files("reports/latency/k10.samples.ndjson.gz", "k1")
    assert not board_files("bench/k10/plan.json", "k1")
    assert not board_files("reports/latency/k10.json", "k1")
    assert not board_files("models/k1/k1.h5", "k1")


def test_new_files_and_changed_inputs_are_not_compared():
    now = {**{k: dict(v) for k, v in BASE.items()}, "bench/k2/plan.json": entry(b"p")}
    verdict = reproducibility(now, "in", manifest(4, BASE), ["k1", "k2"])
    assert verdict["new"] == ["bench/k2/plan.json"] and verdict["reproducible"] is True
    assert now["bench/k2/plan.json"]["identical_to_previous"] is None
    verdict = reproducibility(now, "other", manifest(4, BASE), ["k1"])
    assert verdict["comparable"] is False and "inputs changed since run 4" in verdict["summary"]
    assert all(a["identical_to_previous"] is None for a in now.values())
    assert reproducibility(now, "in", None)["summary"] == "no previous run manifest to compare with"


def test_artifact_hashes_skip_temporary_files_links_and_the_nightlys_own(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.tflite").write_bytes(b"model")
    (tmp_path / "models" / ".m.tflite.abc.partial").write_bytes(b"half")
    (tmp_path / "models" / "link.tflite").symlink_to(tmp_path / "models" / "m.tflite")
    for own in ("manifest.json", "record.json", "doit.log", ".doit.db", ".task-graph.json"):
        (tmp_path / own).write_text("x")
    assert artifact_hashes(tmp_path) == {"models/m.tflite": entry(b"model")}


def test_code_hash_follows_the_code_and_canonical_hash_ignores_key_order(tmp_path):
    # A module in a subsystem package counts as much as one at the top (the hash read only
    # pipeline/*.py after the code moved into packages, so a stage's edit went unrecorded).
    names = ("pipeline/a.py", "pipeline/stages/b.py", "board/runner.py", "dodo.py")
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    seen = {code_hash(tmp_path)}
    for name in names:  # each is code that makes the artifacts
        (tmp_path / name).write_text(f"x = {len(seen) + 1}\n")
        seen.add(code_hash(tmp_path))
    assert len(seen) == 5
    (tmp_path / "README.md").write_text("docs")  # not code
    assert code_hash(tmp_path) in seen
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})
