"""reference.py: which model each case is timed beside, the copies kept by SHA-256, the
verdict attached to each pair, and two real benches of this machine one after the other."""

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench import reference
from pipeline.bench import session as bench
from pipeline.core.boards import Board
from pipeline.core.files import sha256_file
from pipeline.core.layout import Layout
from pipeline.core.verdict import describe, judge
from tests.conftest import REPO, synthetic_images


@pytest.fixture
def model_files(tmp_path):
    """Model files as the reference store sees them: bytes kept by SHA-256 (no runtime opens
    them here)."""
    out = {}
    for key in ("tiny_mlp/int8", "tiny_cnn/int8", "tiny_mlp/float32"):
        path = tmp_path / "files" / f"{key.replace('/', '_')}.tflite"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"model {key}".encode())
        out[key] = path
    return out


def test_no_index_no_reference_and_no_note(tmp_path, model_files):
    assert reference.references_for(Layout(tmp_path), "b", model_files) == ({}, [])


def test_kept_models_become_the_references_and_bad_copies_are_named(tmp_path, model_files):
    layout = Layout(tmp_path)
    models = {k: model_files[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
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
    layout.reference_index("b").write_text('{"tiny_mlp/int8": 3}')
    assert reference.references_for(layout, "b", models) == ({}, [
        f"{layout.reference_index('b')}: not a build/variant -> SHA-256 map; delete it to "
        "start over"])


def test_keep_timed_adds_to_the_index_and_copies_each_model_once(tmp_path, model_files):
    layout = Layout(tmp_path)
    layout.reference_index("b").parent.mkdir(parents=True)
    layout.reference_index("b").write_text('{"other/int8": "abc"}')
    models = {k: model_files[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
    sha = {k: sha256_file(p) for k, p in models.items()}
    results = [{"build": "tiny_mlp", "variant": "int8", "sha256": sha["tiny_mlp/int8"]},
               {"build": "tiny_cnn", "variant": "int8"}]  # a failed case: no bytes timed
    reference.keep_timed(layout, "b", models, results)
    assert json.loads(layout.reference_index("b").read_text()) == {
        "other/int8": "abc", "tiny_mlp/int8": sha["tiny_mlp/int8"]}
    stored = layout.reference_model(sha["tiny_mlp/int8"], ".tflite")
    assert stored.read_bytes() == models["tiny_mlp/int8"].read_bytes()
    stored.write_bytes(b"kept as it is")  # already there: never copied again
    reference.keep_timed(layout, "b", models, results)
    assert stored.read_bytes() == b"kept as it is"
    assert sorted(p.name for p in layout.references_dir().iterdir()) == sorted(
        ["b.json", stored.name])


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

    layout, board, models, datasets = staged_bench(
        tmp_path, {k: tiny_models[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}, "artifacts",
        min_seconds=0.05)
    first = bench.run(board, models, datasets, 10, layout, [board])
    assert all("pair" not in r and "verdict" not in r for r in first["results"])
    assert first["reference_notes"] == []
    shutil.copy(tiny_models["tiny_cnn/float32"], models["tiny_cnn/int8"])  # float input now
    second = bench.run(board, models, datasets, 10, layout, [board])
    rows = {f"{r['build']}/{r['variant']}": r for r in second["results"]}
    mlp, cnn = rows["tiny_mlp/int8"], rows["tiny_cnn/int8"]
    assert mlp["verdict"]["word"] == "environment" and mlp["pair"]["rounds"] >= 6
    assert mlp["reference_sha256"] == mlp["sha256"]
    [line] = [line for line, _ in reference.recompute_verdicts(layout.board_result("local"))]
    assert len(line["candidate_us"]) == len(line["reference_us"]) == mlp["pair"]["rounds"]
    assert mlp["verdict"]["ratio"] == pytest.approx(
        np.median(line["candidate_us"]) / np.median(line["reference_us"]), rel=1e-12)
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


def test_an_accepted_nights_references_seed_the_next_night(tmp_path, model_files):
    night1, night2 = Layout(tmp_path / "run1"), Layout(tmp_path / "run2")
    accepted = tmp_path / "accepted"
    models = {k: model_files[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
    results = [{"build": k.split("/")[0], "variant": k.split("/")[1],
                "sha256": sha256_file(p)} for k, p in models.items()]
    reference.keep_timed(night1, "k1", models, results)
    reference.accept_references(night1, accepted)
    assert reference.seed_references(accepted, night2) == 1
    found, notes = reference.references_for(night2, "k1", models)
    assert notes == [] and {k: p.read_bytes() for k, p in found.items()} == {
        k: p.read_bytes() for k, p in models.items()}
    # night 2 replaces the MLP; once accepted, the old MLP leaves the store
    newer = {**models, "tiny_mlp/int8": model_files["tiny_mlp/float32"]}
    reference.keep_timed(night2, "k1", newer, [
        {**results[0], "sha256": sha256_file(newer["tiny_mlp/int8"])}, results[1]])
    reference.accept_references(night2, accepted)
    assert sorted(p.name for p in accepted.iterdir()) == sorted(
        [f"{sha256_file(p)}.tflite" for p in newer.values()] + ["k1.json"])
    assert reference.seed_references(tmp_path / "nothing", Layout(tmp_path / "run3")) == 0
    # a damaged accepted index seeds nothing, and accepting a night skips a damaged one
    (accepted / "k2.json").write_text("[1]")
    assert reference.seed_references(accepted, Layout(tmp_path / "run4")) == 1
    assert sorted(p.name for p in Layout(tmp_path / "run4").references_dir().iterdir()) == \
        sorted(p.name for p in accepted.iterdir() if p.name != "k2.json")


def staged_bench(tmp_path, models: dict, root: str, **settings
                 ) -> tuple[Layout, Board, dict, dict]:
    """What a real bench of this machine needs: a layout under tmp_path/root, a short `local`
    board (`settings` on top), work copies of `models` (build/variant -> file) and each
    build's dataset of 20 synthetic images."""
    from pipeline.stages.preprocess import save_arrays

    labels = np.arange(20) % 10
    data = tmp_path / "d.npz"
    save_arrays(data, {"x_test": synthetic_images(labels, 2), "y_test": labels})
    work = tmp_path / "models"
    work.mkdir()
    copies = {}
    for key, path in models.items():
        copies[key] = work / f"{key.replace('/', '_')}{path.suffix}"
        shutil.copy(path, copies[key])
    board = Board(name="local", warmup=2, runs=10, min_rounds=6, **settings)
    return Layout(tmp_path / root), board, copies, {key.split("/")[0]: data for key in models}


def bench_twice(tmp_path, models: dict, threads=(1, 2)) -> tuple[Layout, Board, dict]:
    """Two real benches of this machine into one (run) directory: the second times each model
    beside the first's copy. Returns the layout, the board and the work copies of `models`."""
    layout, board, copies, datasets = staged_bench(tmp_path, models, "run", threads=threads,
                                                   min_seconds=0.03)
    bench.run(board, copies, datasets, 10, layout, [board])
    return layout, board, copies


def record_run(db, run_dir: Path, when: str) -> None:
    """One completed nightly run in the history database whose board result is run_dir's."""
    from pipeline.nightly import history

    board_rows, latency = history.read_latency(run_dir, ["local"])
    run_id = history.start_run(db, when, None, None, "p", str(run_dir))
    history.finish_run(db, run_id, "ok", when, 60.0, [], board_rows, latency)


@pytest.fixture(scope="module")
def benched_again(tmp_path_factory, tiny_models, tiny_onnx_models) -> dict:
    """Two real benches at 1 and 2 threads (int8 .tflite MLP and CNN, float32 ONNX MLP), the
    second with the CNN replaced by the MLP's bytes, both recorded as nightly runs and
    reported by `python -m pipeline.nightly.report`: the layout, the first bench's result,
    the second's return value and nightly.json / nightly.md."""
    from pipeline.nightly import history
    from pipeline.nightly import report as nightly_report

    tmp_path = tmp_path_factory.mktemp("benched_again")
    models = {k: tiny_models[k] for k in ("tiny_mlp/int8", "tiny_cnn/int8")}
    models["tiny_mlp/onnx_float32"] = tiny_onnx_models["tiny_mlp/onnx_float32"]
    layout, board, copies = bench_twice(tmp_path, models)
    first = Layout(tmp_path / "first")
    first.board_result("local").parent.mkdir(parents=True)
    shutil.copy(layout.board_result("local"), first.board_result("local"))
    # tonight's CNN is the MLP's bytes (same int8 input): a real verdict, not an A/A pair
    shutil.copy(tiny_models["tiny_mlp/int8"], copies["tiny_cnn/int8"])
    second = bench.run(board, copies, {k.split("/")[0]: tmp_path / "d.npz" for k in copies},
                       10, layout, [board])
    db_path = tmp_path / "history.sqlite"
    db = history.connect(db_path)
    record_run(db, first.root, "2026-12-05T00:00:00Z")
    record_run(db, layout.root, "2026-12-06T00:00:00Z")
    db.close()
    out = tmp_path / "reports"
    nightly_report.main(["--db", str(db_path), "--params", str(REPO / "params.toml"),
                         "--out", str(out)])
    return {"layout": layout, "first": json.loads(first.board_result("local").read_text()),
            "second": second, "nightly": json.loads((out / "nightly.json").read_text()),
            "nightly_md": (out / "nightly.md").read_text()}


def test_every_verdict_is_recomputed_exactly_from_the_compressed_samples(benched_again):
    """Point 5 of issue 19: the round medians kept in <board>.samples.ndjson.gz (named with
    their SHA-256 by the board's result, not inline) give back exactly the ratio, interval, p
    and word of every row in latency.json and in nightly.json (through the history database
    and `python -m pipeline.nightly.report`): 1- and 2-thread rows, .tflite and ONNX rows,
    A/A pairs and a model replaced by another of the same input contract."""
    layout, second = benched_again["layout"], benched_again["second"]
    result = json.loads(layout.board_result("local").read_text())
    samples = layout.board_samples("local")
    data = samples.read_bytes()
    assert result["samples_file"] == {"name": samples.name,
                                      "sha256": hashlib.sha256(data).hexdigest()}
    assert all("candidate_us" not in r["pair"] and "reference_us" not in r["pair"]
               for r in result["results"])  # kept once, in the samples file
    lines = [json.loads(x) for x in gzip.decompress(data).decode().splitlines()]
    assert len(lines) == len(second["results"]) == 6
    recomputed = {(line["build"], line["variant"], line["threads"]): verdict.as_dict()
                  for line, verdict in reference.recompute_verdicts(
                      layout.board_result("local"))}
    for line in lines:  # the samples are the verdict's inputs, judged by hand here
        key = (line["build"], line["variant"], line["threads"])
        assert len(line["candidate_us"]) == len(line["reference_us"]) >= 6
        assert recomputed[key]["ratio"] == float(
            np.median(line["candidate_us"]) / np.median(line["reference_us"]))
    assert {k[2] for k in recomputed} == {1, 2}
    words = {k: v["word"] for k, v in recomputed.items()}
    assert words[("tiny_mlp", "onnx_float32", 2)] == "environment"
    assert words[("tiny_cnn", "int8", 1)] != "environment"

    def same(shown: dict, key: tuple) -> None:
        expected = recomputed[key]
        assert {k: shown[k] for k in ("ratio", "low", "high", "p", "word")} == {
            k: expected[k] for k in ("ratio", "low", "high", "p", "word")}, key

    rows = json.loads(layout.latency_report("json").read_text())["rows"]
    for row in rows:
        same(row["verdict"], (row["build"], row["variant"], row["threads"]))
    assert len(rows) == 6
    nightly = benched_again["nightly"]["latency"]
    for row in nightly:
        same(row["verdict"], (row["build"], row["variant"], row["threads"]))
    assert len(nightly) == 6


def md_rows(text: str) -> list[list[str]]:
    """Every row of every markdown table in `text`, as its stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]


def test_two_thread_rows_against_the_samples_the_board_result_and_the_night_before(
        benched_again):
    """latency.json's 2-thread p50 against the pair's round medians in the samples file, and
    nightly.json / nightly.md's 2-thread rows against latency.json and the first bench."""
    layout, first = benched_again["layout"], benched_again["first"]
    result = json.loads(layout.board_result("local").read_text())
    by_key = {(r["build"], r["variant"], r["threads"]): r for r in result["results"]}
    prev = {(r["build"], r["variant"], r["threads"]): r for r in first["results"]}
    lines = {(x["build"], x["variant"], x["threads"]): x for x in
             reference.read_samples(layout.board_samples("local"),
                                    result["samples_file"]["sha256"])}
    rows = [r for r in json.loads(layout.latency_report("json").read_text())["rows"]
            if r["threads"] == 2]
    assert len(rows) == 3
    for row in rows:
        key = (row["build"], row["variant"], row["threads"])
        pair, line = by_key[key]["pair"], lines[key]
        assert row["p50_us"] == by_key[key]["p50_us"]
        # every timed invoke belongs to one round of round_invokes: a hand count
        assert pair["rounds"] == len(line["candidate_us"]) == len(line["reference_us"])
        assert by_key[key]["runs"] == pair["rounds"] * pair["round_invokes"]
        # The median of equal-sized rounds lies between the least and the greatest round
        # median (at least half of every round is >= the least); rel 1e-12 for the mean of
        # two middle values.
        for p50, medians in ((row["p50_us"], line["candidate_us"]),
                             (pair["reference_p50_us"], line["reference_us"])):
            assert min(medians) * (1 - 1e-12) <= p50 <= max(medians) * (1 + 1e-12)
    nightly = {(r["build"], r["variant"], r["threads"]): r
               for r in benched_again["nightly"]["latency"] if r["threads"] == 2}
    assert set(nightly) == {(r["build"], r["variant"], 2) for r in rows}
    md = md_rows(benched_again["nightly_md"])
    for key, n in nightly.items():
        now, then = by_key[key]["p50_us"], prev[key]["p50_us"]
        assert (n["p50_us"], n["p50_prev"], n["p50_median"], n["runs_in_median"]) == (
            now, then, then, 1)  # copied exactly; the median of one earlier run is that run's
        change = float((np.float64(now) / np.float64(then) - 1) * 100)
        assert n["change_vs_prev_pct"] == pytest.approx(change, rel=1e-12)
        assert n["change_vs_median_pct"] == pytest.approx(change, rel=1e-12)
        cells = [f"{now:.1f}", f"{then:.1f}", f"{change:+.1f}", f"{then:.1f}", f"{change:+.1f}"]
        label = [key[0], key[1], "local", "2"]  # nightly.md shows the names as they are
        assert [c[4:9] for c in md if c[:4] == label] == [cells], key


def test_the_samples_file_bytes_are_canonical():
    results = [{"build": "b", "variant": v, "threads": t, "sha256": "s", "reference_sha256": "r",
                "pair": {"rounds": 2, "candidate_us": [1.5, 2.25], "reference_us": [1.0, 3.0]}}
               for v, t in (("int8", 2), ("float32", 1), ("int8", 1))]
    data = reference.split_samples([dict(r, pair=dict(r["pair"])) for r in results], 0.01, 0.02)
    assert data == reference.split_samples([dict(r, pair=dict(r["pair"]))
                                            for r in reversed(results)], 0.01, 0.02)
    assert data[4:8] == bytes(4)  # no time in the gzip header
    lines = gzip.decompress(data).decode().splitlines()
    assert lines[0] == ('{"alpha":0.01,"build":"b","candidate_us":[1.5,2.25],"min_effect":0.02,'
                        '"reference_sha256":"r","reference_us":[1.0,3.0],"sha256":"s",'
                        '"threads":1,"variant":"float32"}')
    assert [json.loads(x)["variant"] + str(json.loads(x)["threads"]) for x in lines] == [
        "float321", "int81", "int82"]


@pytest.mark.parametrize("damage, says", [
    ("missing", "cannot read it"),
    ("truncated", "is not the"),
    ("not gzip", "not gzip'd JSON lines"),
    ("a line without its medians", "line 1 lacks"),
    ("no samples file named", "names no samples file"),
])
def test_a_missing_or_damaged_samples_file_is_one_line_naming_it(tmp_path, capsys, damage,
                                                                    says):
    layout = Layout(tmp_path)
    line = {"build": "b", "variant": "int8", "threads": 1, "sha256": "s",
            "reference_sha256": "r", "alpha": 0.01, "min_effect": 0.02,
            "candidate_us": [1.0] * 6, "reference_us": [1.0] * 6}
    if damage == "a line without its medians":
        del line["reference_us"]
    data = gzip.compress((json.dumps(line) + "\n").encode(), mtime=0)
    if damage == "not gzip":
        data = b"not gzip at all"
    samples = layout.board_samples("k1")
    samples.parent.mkdir(parents=True)
    samples.write_bytes(data)
    named = {"name": samples.name, "sha256": hashlib.sha256(data).hexdigest()}
    if damage == "missing":
        samples.unlink()
    if damage == "truncated":
        samples.write_bytes(data[:-3])
    doc = {"board": "k1", "results": []}
    if damage != "no samples file named":
        doc["samples_file"] = named
    layout.board_result("k1").write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exc:
        reference.main([str(layout.board_result("k1"))])
    message = str(exc.value)
    assert says in message and len(message.splitlines()) == 1
    assert str(samples if damage != "no samples file named" else layout.board_result("k1")) \
        in message
    assert capsys.readouterr().out == ""


def test_verdicts_are_judged_again_from_a_hand_made_samples_file(tmp_path, capsys):
    """The fast path of the test above, on round medians made here: what the file holds, the
    level and minimum effect it keeps per case, and what the command prints."""
    rng = np.random.default_rng(11)
    ref_us, slow_us = list(100 + rng.gamma(1.0, 1.0, 12)), list(103 + rng.gamma(1.0, 1.0, 12))
    results = [{"build": "b", "variant": "int8", "threads": 2, "sha256": "new",
                "reference_sha256": "old", "pair": {"rounds": 12, "candidate_us": slow_us,
                                                    "reference_us": ref_us}},
               {"build": "b", "variant": "float32", "threads": 1, "sha256": "same",
                "reference_sha256": "same", "pair": {"rounds": 12, "candidate_us": ref_us,
                                                     "reference_us": slow_us}},
               {"build": "b", "variant": "onnx_int8", "threads": 1, "sha256": "x"}]
    layout = Layout(tmp_path)
    for min_effect, word in ((0.05, "same"), (0.02, "slower")):
        data = reference.split_samples(json.loads(json.dumps(results)), 0.01, min_effect)
        layout.board_samples("k1").parent.mkdir(parents=True, exist_ok=True)
        layout.board_samples("k1").write_bytes(data)
        named = reference.samples_reference("k1.samples.ndjson.gz", data)
        layout.board_result("k1").write_text(json.dumps({"samples_file": named}))
        cases = reference.recompute_verdicts(layout.board_result("k1"))
        [(aa, aa_verdict), (slow, slow_verdict)] = cases  # float32 before int8
        assert (aa["variant"], aa["threads"], slow["variant"], slow["threads"]) == (
            "float32", 1, "int8", 2)
        assert slow["min_effect"] == min_effect and slow["alpha"] == 0.01
        assert (slow["sha256"], slow["reference_sha256"]) == ("new", "old")
        assert slow["candidate_us"] == slow_us and slow["reference_us"] == ref_us
        assert slow_verdict.ratio == float(np.median(slow_us) / np.median(ref_us))
        assert slow_verdict.p < 0.01 and slow_verdict.word == word
        assert aa_verdict.word == "environment" and aa_verdict.rounds == 12
    stripped = json.loads(json.dumps(results))
    reference.split_samples(stripped, 0.01, 0.02)
    assert stripped[0]["pair"] == {"rounds": 12} and "pair" not in stripped[2]
    reference.main([str(layout.board_result("k1"))])
    assert capsys.readouterr().out.splitlines() == [
        f"b/float32 x1: {describe(aa_verdict)}", f"b/int8 x2: {describe(slow_verdict)}"]


def test_attach_verdicts_uses_the_level_and_minimum_effect_it_is_given():
    rng = np.random.default_rng(12)
    ref_us, new_us = list(100 + rng.gamma(1.0, 1.0, 12)), list(103 + rng.gamma(1.0, 1.0, 12))
    plan = {"models": [{"file": "a", "sha256": "new", "reference": {"sha256": "old"}}]}
    words = []
    for alpha, min_effect in ((0.01, 0.02), (0.01, 0.05), (1e-9, 0.02)):
        results = [{"model": "a", "pair": {"candidate_us": new_us, "reference_us": ref_us}}]
        reference.attach_verdicts(results, plan, alpha, min_effect)
        words.append(results[0]["verdict"]["word"])
        assert results[0]["verdict"] == judge(ref_us, new_us, False, alpha, min_effect).as_dict()
    assert words == ["slower", "same", "same"]
    few = [{"model": "a", "pair": {"candidate_us": new_us[:4], "reference_us": ref_us[:4]}}]
    reference.attach_verdicts(few, plan, 0.01, 0.02)
    assert "verdict" not in few[0] and few[0]["reference_sha256"] == "old"


# --- each message whole, each loop past a case it skips ------------------------------------


def samples_line(**changes) -> dict:
    line = {"build": "b", "variant": "int8", "threads": 1, "sha256": "s",
            "reference_sha256": "r", "alpha": 0.01, "min_effect": 0.02,
            "candidate_us": [1.0] * 6, "reference_us": [1.0] * 6}
    return {**line, **changes}


def write_samples(layout: Layout, lines: list) -> Path:
    data = gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode(), mtime=0)
    path = layout.board_samples("k1")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    layout.board_result("k1").write_text(json.dumps(
        {"samples_file": reference.samples_reference(path.name, data)}))
    return path


def test_the_samples_file_messages_in_full(tmp_path):
    layout = Layout(tmp_path)
    path = write_samples(layout, [samples_line()])
    data = path.read_bytes()
    right = hashlib.sha256(data).hexdigest()
    with pytest.raises(reference.SamplesError) as exc:
        reference.read_samples(tmp_path / "gone.gz", right)
    assert str(exc.value) == (f"{tmp_path / 'gone.gz'}: cannot read it (No such file or "
                              "directory); bench the board again to time its pairs anew")
    with pytest.raises(reference.SamplesError) as exc:
        reference.read_samples(path, "0123456789abcdef")
    assert str(exc.value) == (f"{path}: SHA-256 {right[:12]} is not the 0123456789ab its "
                              "result names (changed or damaged); bench the board again")
    for bad in ([1, 2], {k: v for k, v in samples_line().items() if k != "alpha"},
                samples_line(candidate_us=[1.0, "2"])):
        path = write_samples(layout, [samples_line(), bad])
        with pytest.raises(reference.SamplesError) as exc:
            reference.recompute_verdicts(layout.board_result("k1"))
        assert str(exc.value) == (
            f"{path}: line 2 lacks build, variant, threads, sha256, reference_sha256, alpha, "
            "min_effect or its round medians; bench the board again")
    layout.board_result("k1").write_text("[]")
    with pytest.raises(reference.SamplesError) as exc:
        reference.recompute_verdicts(layout.board_result("k1"))
    assert str(exc.value) == (f"{layout.board_result('k1')}: names no samples file (a result "
                              "of an older bench, or a failed one); bench the board again")
    layout.board_result("k1").write_text("{")
    with pytest.raises(reference.SamplesError) as exc:
        reference.recompute_verdicts(layout.board_result("k1"))
    assert str(exc.value).startswith(f"{layout.board_result('k1')}: unreadable (")


def test_each_line_is_judged_at_its_own_level_and_too_few_rounds_say_so(tmp_path, capsys):
    rng = np.random.default_rng(17)
    ref_us = list(100 + rng.gamma(1.0, 1.0, 8))
    new_us = list(100.5 + rng.gamma(1.0, 1.0, 8))
    p = judge(ref_us, new_us, False).p
    assert 0.01 < p < 0.05  # significant at 5 %, not at 1 %
    layout = Layout(tmp_path)
    write_samples(layout, [samples_line(alpha=0.05, min_effect=0.002, candidate_us=new_us,
                                        reference_us=ref_us),
                           samples_line(variant="float32", candidate_us=[1.0] * 4,
                                        reference_us=[1.0] * 4)])
    [(_, at5), (_, none)] = reference.recompute_verdicts(layout.board_result("k1"))
    assert at5.word == "slower" and at5.p == p and none is None
    reference.main([str(layout.board_result("k1"))])
    assert capsys.readouterr().out.splitlines() == [
        f"b/int8 x1: {describe(at5)}", "b/float32 x1: too few rounds for a verdict"]
    with pytest.raises(SystemExit) as exc:
        reference.main(["--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    assert "Judge again each verdict of a board's result from its samples file." in usage
    assert "reports/latency/<board>.json" in usage


def test_loops_go_past_the_cases_they_skip(tmp_path, model_files):
    results = [{"build": "b", "variant": "a", "threads": 1},  # no pair: not kept
               {"build": "b", "variant": "z", "threads": 1, "sha256": "s",
                "reference_sha256": "r", "pair": {"candidate_us": [1.0], "reference_us": [2.0]}}]
    lines = gzip.decompress(reference.split_samples(results, 0.01, 0.02)).decode().splitlines()
    assert [json.loads(x)["variant"] for x in lines] == ["z"]
    rng = np.random.default_rng(14)
    us = list(100 + rng.gamma(1.0, 1.0, 8))
    plan = {"models": [{"file": "a", "sha256": "x"},
                       {"file": "b", "sha256": "y", "reference": {"sha256": "y"}}]}
    attached = [{"model": "elsewhere", "pair": {"candidate_us": us, "reference_us": us}},
                {"model": "a", "pair": {"candidate_us": us, "reference_us": us}},
                {"model": "b"}, {"model": "b", "pair": {"candidate_us": us, "reference_us": us}}]
    reference.attach_verdicts(attached, plan, 0.01, 0.02)
    assert ["verdict" in r for r in attached] == [False, False, False, True]
    assert attached[3]["verdict"]["word"] == "environment"
    # an index naming keys in sorted order: a key without a model stored, then a good one
    layout = Layout(tmp_path / "a")
    models = {k: model_files[k] for k in ("tiny_cnn/int8", "tiny_mlp/int8")}
    reference.keep_timed(layout, "b", {"tiny_mlp/int8": models["tiny_mlp/int8"]},
                         [{"build": "tiny_mlp", "variant": "int8",
                           "sha256": sha256_file(models["tiny_mlp/int8"])}])
    found, notes = reference.references_for(layout, "b", models)
    assert list(found) == ["tiny_mlp/int8"] and notes == []
    index = json.loads(layout.reference_index("b").read_text())
    sha = "0123456789abcdef" * 4
    layout.reference_index("b").write_text(json.dumps({**index, "tiny_cnn/int8": sha}))
    found, notes = reference.references_for(layout, "b", models)
    assert list(found) == ["tiny_mlp/int8"] and notes == [
        f"tiny_cnn/int8: reference 0123456789ab not compared: {sha}.tflite: No such file or "
        "directory"]
    layout.reference_model(sha, ".tflite").write_bytes(b"other bytes")
    actual = hashlib.sha256(b"other bytes").hexdigest()
    found, notes = reference.references_for(layout, "b", models)
    assert list(found) == ["tiny_mlp/int8"] and notes == [
        f"tiny_cnn/int8: reference 0123456789ab not compared: "
        f"{layout.reference_model(sha, '.tflite')} is damaged (SHA-256 {actual[:12]}); "
        "delete it"]


def test_seeding_and_accepting_go_past_a_damaged_index(tmp_path, model_files, monkeypatch):
    run = Layout(tmp_path / "run")
    accepted = tmp_path / "accepted"
    reference.accept_references(Layout(tmp_path / "empty"), tmp_path / "none")  # nothing yet
    assert not (tmp_path / "none").exists()
    for board, key in (("k1", "tiny_mlp/int8"), ("k2", "tiny_cnn/int8")):
        reference.keep_timed(run, board, {key: model_files[key]},
                             [{"build": key.split("/")[0], "variant": "int8",
                               "sha256": sha256_file(model_files[key])}])
    (run.references_dir() / "a.json").write_text("not json")  # sorted first
    accepted.mkdir()
    reference.accept_references(run, accepted)
    assert sorted(p.name for p in accepted.glob("*.json")) == ["k1.json", "k2.json"]
    (accepted / "a.json").write_text("not json")
    # links not allowed (another file system): the models are copied
    monkeypatch.setattr(reference.os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "x")))
    night = Layout(tmp_path / "night")
    assert reference.seed_references(accepted, night) == 2
    assert sorted(p.name for p in night.references_dir().iterdir()) == sorted(
        ["k1.json", "k2.json", *(f"{sha256_file(p)}.tflite" for k, p in model_files.items()
                                 if k.endswith("/int8"))])
    for p in night.references_dir().iterdir():
        assert p.read_bytes() == (accepted / p.name).read_bytes()
        assert p.stat().st_ino != (accepted / p.name).stat().st_ino  # a copy, not a link
