"""reference.py: which model each case is timed beside, the copies kept by SHA-256, the
verdict attached to each pair, and two real benches of this machine one after the other."""

import json
import shutil

import numpy as np
import pytest

from pipeline.bench import reference
from pipeline.bench import session as bench
from pipeline.core.boards import Board
from pipeline.core.files import sha256_file
from pipeline.core.layout import Layout
from pipeline.core.verdict import judge
from tests.conftest import synthetic_images


def test_no_index_no_reference_and_no_note(tmp_path, tiny_models):
    assert reference.references_for(Layout(tmp_path), "b", tiny_models) == ({}, [])


def test_kept_models_become_the_references_and_bad_copies_are_named(tmp_path, tiny_models):
    layout = Layout(tmp_path)
    models = {k: tiny_models[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
    results = [{"build": k.split("/")[0], "variant": k.split("/")[1],
                "sha256": sha256_file(p)} for k, p in models.items()]
    reference.keep_timed(layout, "b", models, results)
    found, notes = reference.references_for(layout, "b", models)
    assert notes == [] and set(found) == set(models)
    for key, path in found.items():
        assert path.read_bytes() == models[key].read_bytes()
        assert path.name == sha256_file(models[key]) + ".tflite"
    # damage one copy, remove the other: each is named, neither compared
    found["tiny_mlp/int8"].write_bytes(b"x")
    found["tiny_cnn/int8"].unlink()
    found2, notes = reference.references_for(layout, "b", models)
    assert found2 == {} and len(notes) == 2
    assert "tiny_cnn/int8: reference" in notes[0] and "No such file" in notes[0]
    assert "tiny_mlp/int8: reference" in notes[1] and "damaged" in notes[1]
    layout.reference_index("b").write_text("{not json")
    found3, notes = reference.references_for(layout, "b", models)
    assert found3 == {} and len(notes) == 1 and "unreadable" in notes[0]


def test_attach_verdicts_judges_each_pair_and_same_bytes_are_environment():
    rng = np.random.default_rng(7)
    ref_us = list(100 + rng.gamma(1.0, 1.0, 12))
    new_us = list(112 + rng.gamma(1.0, 1.0, 12))
    plan = {"models": [
        {"file": "a.tflite", "sha256": "new", "reference": {"file": "r", "sha256": "old"}},
        {"file": "b.tflite", "sha256": "same", "reference": {"file": "s", "sha256": "same"}},
        {"file": "c.tflite", "sha256": "alone"}]}
    pair = {"candidate_us": new_us, "reference_us": ref_us}
    results = [{"model": "a.tflite", "pair": pair}, {"model": "b.tflite", "pair": pair},
               {"model": "c.tflite"}]
    reference.attach_verdicts(results, plan, 0.01, 0.02)
    assert results[0]["verdict"] == judge(ref_us, new_us, False).as_dict()
    assert results[0]["verdict"]["word"] == "slower"
    assert results[0]["reference_sha256"] == "old"
    assert results[1]["verdict"]["word"] == "environment"
    assert "verdict" not in results[2]


def test_a_second_bench_times_each_model_beside_the_first(tmp_path, tiny_models):
    """Two real benches of this machine: the first times alone and keeps the models; the
    second times each beside its copy (A/A: environment); a model replaced by one of another
    input contract is timed alone, and the board's result says why once."""
    from pipeline.bench import report
    from pipeline.stages.preprocess import save_arrays

    layout = Layout(tmp_path / "artifacts")
    labels = np.arange(20) % 10
    data = tmp_path / "d.npz"
    save_arrays(data, {"x_test": synthetic_images(labels, 2), "y_test": labels})
    work = tmp_path / "models"
    work.mkdir()
    models = {}
    for key in ("tiny_mlp/int8", "tiny_cnn/int8"):
        models[key] = work / tiny_models[key].name
        shutil.copy(tiny_models[key], models[key])
    board = Board(name="local", warmup=2, runs=10, min_rounds=6, min_seconds=0.05)
    datasets = {"tiny_mlp": data, "tiny_cnn": data}
    first = bench.run(board, models, datasets, 10, layout, [board])
    assert all("pair" not in r and "verdict" not in r for r in first["results"])
    assert first["reference_notes"] == []
    shutil.copy(tiny_models["tiny_cnn/float32"], models["tiny_cnn/int8"])  # float input now
    second = bench.run(board, models, datasets, 10, layout, [board])
    rows = {f"{r['build']}/{r['variant']}": r for r in second["results"]}
    mlp, cnn = rows["tiny_mlp/int8"], rows["tiny_cnn/int8"]
    assert mlp["verdict"]["word"] == "environment" and mlp["pair"]["rounds"] >= 6
    assert mlp["reference_sha256"] == mlp["sha256"]
    assert mlp["verdict"]["ratio"] == pytest.approx(
        np.median(mlp["pair"]["candidate_us"]) / np.median(mlp["pair"]["reference_us"]))
    assert "verdict" not in cnn and "takes [1, 28, 28, 1] int8" in cnn["pair_skipped"]
    assert second["reference_notes"] == [cnn["pair_skipped"]]
    saved = json.loads(layout.board_result("local").read_text())
    assert saved["results"] == json.loads(json.dumps(second["results"]))
    md = layout.latency_report("md").read_text()
    assert "environment vs " + mlp["sha256"][:8] in md and "| alone" in md.replace("  ", " ")
    assert report.clean_text(cnn["pair_skipped"])[:40] in md
    # the float model is now the reference of tiny_cnn/int8 on this board
    index = json.loads(layout.reference_index("local").read_text())
    assert index["tiny_cnn/int8"] == sha256_file(tiny_models["tiny_cnn/float32"])


def test_an_accepted_nights_references_seed_the_next_night(tmp_path, tiny_models):
    night1, night2 = Layout(tmp_path / "run1"), Layout(tmp_path / "run2")
    accepted = tmp_path / "accepted"
    models = {k: tiny_models[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
    results = [{"build": k.split("/")[0], "variant": k.split("/")[1],
                "sha256": sha256_file(p)} for k, p in models.items()]
    reference.keep_timed(night1, "k1", models, results)
    reference.accept_references(night1, accepted)
    assert reference.seed_references(accepted, night2) == 1
    found, notes = reference.references_for(night2, "k1", models)
    assert notes == [] and {k: p.read_bytes() for k, p in found.items()} == {
        k: p.read_bytes() for k, p in models.items()}
    # night 2 replaces the MLP; once accepted, the old MLP leaves the store
    newer = {**models, "tiny_mlp/int8": tiny_models["tiny_mlp/float32"]}
    reference.keep_timed(night2, "k1", newer, [
        {**results[0], "sha256": sha256_file(newer["tiny_mlp/int8"])}, results[1]])
    reference.accept_references(night2, accepted)
    assert sorted(p.name for p in accepted.iterdir()) == sorted(
        [f"{sha256_file(p)}.tflite" for p in newer.values()] + ["k1.json"])
    assert reference.seed_references(tmp_path / "nothing", Layout(tmp_path / "run3")) == 0
