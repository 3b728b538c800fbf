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


def test_each_verdict_field_and_the_summary_against_a_hand_count():
    """The figures of the summary ("1 of 3 artifacts byte-identical") and every list,
    counted by hand for a run with each kind of file."""
    from pathlib import Path

    now = {"new.onnx": entry(b"n"), "a.tflite": entry(b"a"), "b.tflite": entry(b"b2"),
           "c.onnx": entry(b"c2"), "reports/x.md": entry(b"x2")}
    before = {"a.tflite": entry(b"a"), "b.tflite": entry(b"b"), "c.onnx": entry(b"c"),
              "reports/x.md": entry(b"x"), "gone.tflite": entry(b"g"), "gone2.h5": entry(b"g"),
              "bench/old/plan.json": entry(b"p"), "bench/older/plan.json": entry(b"q")}
    previous = {"run_id": "r7", "inputs_hash": "in", "artifacts": before,
                "boards": [{"name": "k1"}, {"name": "old"}, "junk", {"x": 1}, {"name": "older"}]}
    verdict = reproducibility(now, "in", previous, ["k1"])
    assert verdict == {
        "comparable": True, "previous_run": "r7", "reproducible": False, "identical": 1,
        "differing": ["b.tflite", "c.onnx"], "missing": ["gone.tflite", "gone2.h5"],
        "new": ["new.onnx"], "dropped": ["bench/old/plan.json", "bench/older/plan.json"],
        "dropped_boards": ["old", "older"],
        "differing_as_expected": ["reports/x.md"],
        "summary": "NOT REPRODUCIBLE: 1 of 4 artifacts byte-identical to run r7 (inputs "
                   "unchanged); differing: b.tflite, c.onnx; missing: gone.tflite, gone2.h5; "
                   "1 measurement file(s) differ as expected (timings, run-directory paths, "
                   "board settings); 1 file(s) new in this run; 2 file(s) of board(s) dropped "
                   "from the inventory (old, older) not compared"}
    assert [now[r]["identical_to_previous"] for r in sorted(now)] == [
        True, False, False, None, False]  # a, b, c, new, reports/x.md
    # Without artifacts or boards in the previous manifest: every file is new.
    bare = reproducibility({"a": entry(b"a")}, "in", {"run_id": 2, "inputs_hash": "in"})
    assert (bare["reproducible"], bare["summary"]) == (
        True, "REPRODUCIBLE: 0 of 0 artifacts byte-identical to run 2 (inputs unchanged); "
              "1 file(s) new in this run")
    for previous, summary in (
            (None, "no previous run manifest to compare with"),
            ({"run_id": 5, "inputs_hash": "other"}, "inputs changed since run 5 (params, code "
             "or dataset): artifacts are not expected to be identical")):
        files = {"a": entry(b"a")}
        assert reproducibility(files, "in", previous) == {
            "comparable": False, "previous_run": previous and previous["run_id"],
            "summary": summary}
        assert files["a"]["identical_to_previous"] is None
    assert canonical_hash({"p": Path("x/y")}) == hashlib.sha256(b'{"p": "x/y"}').hexdigest()


def test_artifact_hashes_skip_the_references_and_every_file_of_doits_database(tmp_path):
    (tmp_path / "references" / "models").mkdir(parents=True)
    (tmp_path / "references" / "models" / "m.tflite").write_bytes(b"old")
    for name in (".doit.db", ".doit.db.dat", ".doit.db.dir", "x.partial.7"):
        (tmp_path / name).write_text("x")
    (tmp_path / "m.doit.db").write_bytes(b"kept")  # only doit's own names are skipped
    assert artifact_hashes(tmp_path) == {"m.doit.db": entry(b"kept")}


def test_git_state_is_the_commit_and_whether_a_tracked_file_changed(tmp_path):
    import subprocess

    from pipeline.nightly.provenance import git_state

    assert git_state(tmp_path) == (None, None)  # not a checkout

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t",
                               "-c", "user.email=t@t", *args], check=True,
                              capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "a.py").write_text("1\n")
    git("add", "a.py")
    git("commit", "-qm", "a")
    head = (tmp_path / ".git" / git("symbolic-ref", "HEAD").strip()).read_text().strip()
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "new.txt").write_text("untracked")  # artifacts/ lives in the tree
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "a.py").write_text("2\n")
    assert git_state(tmp_path) == (head, True)


def test_machine_and_package_versions_read_proc_cpuinfo_and_the_installed_metadata(
        monkeypatch, tmp_path):
    import os
    import platform
    import re
    import socket
    from importlib import metadata

    from pipeline.nightly import provenance

    info = provenance.machine()
    cpuinfo = open("/proc/cpuinfo").read()
    first = re.search(r"^(?:model name|uarch|Model)\s*:\s*(.*)$", cpuinfo, re.M)
    assert info == {"cpu_model": (first.group(1).strip() if first else platform.processor())
                    or "unknown", "cores": len(re.findall(r"^processor\s*:", cpuinfo, re.M)),
                    "arch": os.uname().machine, "system": platform.platform(),
                    "hostname": socket.gethostname()}
    # A RISC-V board's (the K1's) and a Raspberry Pi's lines, an empty and a missing file.
    for text, model in (("processor\t: 0\nisa\t\t: rv64imafdcv\nuarch\t\t: spacemit,x60\n",
                         "spacemit,x60"), ("Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 "
                                           "Model B Rev 1.4\n", "Raspberry Pi 4 Model B Rev 1.4"),
                        ("", platform.processor() or "unknown"), (None, platform.processor()
                                                                  or "unknown")):
        path = tmp_path / "cpuinfo"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        assert provenance.machine(path)["cpu_model"] == model
    monkeypatch.setattr(provenance, "PACKAGES", {"np": ("no-such-dist", "numpy", "doit"),
                                                 "none": ("no-such-dist",)})
    assert provenance.package_versions() == {
        "np": f"{metadata.version('numpy')} (numpy)", "none": None}


def test_dataset_hashes_are_the_decompressed_payloads_or_none(tmp_path):
    import gzip

    from pipeline.core.datasets import DATASETS
    from pipeline.core.layout import Layout
    from pipeline.nightly.provenance import dataset_hashes

    raw = Layout(tmp_path).raw_dir("mnist")
    raw.mkdir(parents=True)
    names = [f.name for f in DATASETS["mnist"].files]
    (raw / names[0]).write_bytes(gzip.compress(b"payload"))
    (raw / names[1]).write_bytes(b"not gzip")
    assert dataset_hashes(tmp_path, ["mnist"]) == {"mnist": {
        names[0]: hashlib.sha256(b"payload").hexdigest(), **{n: None for n in names[1:]}}}


def test_user_model_hashes_and_the_unstable_names_note(tmp_path):
    import json

    from pipeline.core.layout import Layout
    from pipeline.core.params import load_params
    from pipeline.nightly.provenance import unstable_names_note, user_model_hashes

    (tmp_path / "kws.py").write_text("def build(shape, n): pass\n")
    (tmp_path / "p.toml").write_text(
        '[[builds]]\nname = "own"\ndataset = "mnist"\nmodel = "kws.py:build"\n'
        '[[builds]]\nname = "cnn"\ndataset = "mnist"\nmodel = "cnn"\n')
    params = load_params(tmp_path / "p.toml")
    assert user_model_hashes(params) == {
        "own": hashlib.sha256(b"def build(shape, n): pass\n").hexdigest()}
    layout = Layout(tmp_path / "run")
    for build, record in (("b1", {"layer_names_stable": False}), ("b2", {"layer_names_stable":
                          True}), ("b3", {}), ("b5", {"layer_names_stable": False})):
        layout.history_json(build).parent.mkdir(parents=True)
        layout.history_json(build).write_text(json.dumps(record))
    layout.history_json("b4").parent.mkdir(parents=True)
    layout.history_json("b4").write_text("{")
    note = ("its layer names depend on what the process built before, so its .h5/.tflite "
            "bytes are not reproducible (give every layer an explicit name=; "
            "docs/own-model-and-data.md)")
    assert unstable_names_note(tmp_path / "run", ["b1", "b2", "b3", "b4", "b6", "b5"]) == (
        f"; b1: {note}; b5: {note}")
    assert unstable_names_note(tmp_path / "run", ["b2"]) == ""
