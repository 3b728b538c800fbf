"""The staging plan (pipeline/bench/plan.py) without a board: what plan.json tells the runner
(models, samples, the ONNX models' quantization contract, peak GEMMs, timeouts) against
independent readings: hashlib, numpy's own .npz reader, LiteRT and ONNX Runtime driven by
hand, hand-counted MACs and hand-computed deadlines. Fast: the committed fixture models only.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench import plan as bench_plan
from pipeline.core.boards import Board
from tests.conftest import synthetic_images
from tests.test_runtimes import direct_probabilities


def litert_quantization(model: Path) -> dict[str, list]:
    """[scale, zero_point] of the input and output as LiteRT reads them from a .tflite."""
    from ai_edge_litert.interpreter import Interpreter

    lite = Interpreter(model_path=str(model))
    return {side: [float(d["quantization"][0]), int(d["quantization"][1])]
            for side, d in (("input", lite.get_input_details()[0]),
                            ("output", lite.get_output_details()[0]))}


def litert_top1(model: Path, images: np.ndarray) -> np.ndarray:
    """Each image's top-1 by LiteRT driven by hand (test_runtimes' direct reading: raw
    pixels, quantized by the input's own scale and zero point, one image per invoke)."""
    return np.argmax(direct_probabilities(model, images), axis=1)


def test_the_plan_states_each_integer_sides_quantization_as_litert_has_it(tiny_models,
                                                                          tiny_onnx_models):
    """io_quantization: the translated model's int8 input and output contract, which the
    board's onnxruntime cannot read and the runner needs (its input bytes, the top-1
    probability), against LiteRT's own reading of the int8 .tflite it was translated from;
    a QDQ model (float input and output) and a .tflite get none."""
    for build in ("tiny_cnn", "tiny_mlp"):
        expected = litert_quantization(tiny_models[f"{build}/int8"])
        stated = bench_plan.io_quantization(tiny_onnx_models[f"{build}/onnx_int8_tflite"])
        assert set(stated) == {"input", "output"}, build
        for side in ("input", "output"):  # approx takes no nested containers (pytest 9)
            assert stated[side][0] == pytest.approx(expected[side][0], rel=1e-7), (build, side)
            assert stated[side][1] == expected[side][1], (build, side)
            assert type(stated[side][0]) is float and type(stated[side][1]) is int
        assert bench_plan.io_quantization(tiny_onnx_models[f"{build}/onnx_int8"]) == {}
        assert bench_plan.io_quantization(tiny_onnx_models[f"{build}/onnx_float32"]) == {}
        assert bench_plan.io_quantization(tiny_models[f"{build}/int8"]) == {}


def test_default_deadline_comes_from_the_plan():
    """60 s per case plus 0.1 s per invoke (1 + warmup + runs + samples), the run 60 s more
    than all its cases; a case is capped at a day: the cap itself is reached, and one invoke
    beyond stays at it."""
    case, deadline = bench_plan.plan_deadline_s(cases=8, warmup=20, runs=300, samples=200)
    assert case == pytest.approx(60 + 521 * 0.1) and deadline == pytest.approx(8 * case + 60)
    # 863,400 invokes x 0.1 s + 60 s = 86,400 s: exactly a day.
    assert bench_plan.plan_deadline_s(1, 0, 0, 863_398) == pytest.approx((86_399.9, 86_459.9))
    assert bench_plan.plan_deadline_s(1, 0, 0, 863_399) == pytest.approx((86_400.0, 86_460.0))
    assert bench_plan.plan_deadline_s(2, 0, 0, 863_400) == (86_400.0, 2 * 86_400.0 + 60)
    assert bench_plan.plan_deadline_s(0, 0, 0, 0) == (60.1, 60.0)


def test_npz_bytes_are_the_arrays_and_nothing_else(tmp_path):
    """numpy's own reader gives back each array under its name, with dtype and shape; the
    bytes are the same at any time (np.savez stamps the clock), and differ when one value
    does; an object array (a pickle, which the board's np.load refuses) is refused here."""
    arrays = {"x": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
              "y": np.array([3, 1], dtype=np.int64), "host": np.array([3, 7])}
    data = bench_plan.npz_bytes(**arrays)
    with np.load(io.BytesIO(data), allow_pickle=False) as read:
        assert sorted(read.files) == ["host", "x", "y"]
        for name, array in arrays.items():
            assert read[name].dtype == array.dtype and read[name].shape == array.shape
            np.testing.assert_array_equal(read[name], array)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert bench_plan.npz_bytes(**arrays) == data
    changed = dict(arrays, y=np.array([3, 2], dtype=np.int64))
    assert bench_plan.npz_bytes(**changed) != data
    with pytest.raises(ValueError):
        bench_plan.npz_bytes(x=np.array([{"a": 1}], dtype=object))


def test_pick_samples_takes_distinct_sorted_pairs_seeded():
    """Each image stays with its label (the image holds its own index), the indices are
    distinct and ascending, the same for a seed and different for another; taking all of
    them is each once."""
    labels = np.arange(50) * 3
    images = np.arange(50).repeat(4).reshape(50, 2, 2)
    x, y = bench_plan.pick_samples(images, labels, 10, seed=5)
    index = x[:, 0, 0]
    assert len(set(index.tolist())) == 10 and list(index) == sorted(index)
    np.testing.assert_array_equal(y, index * 3)
    np.testing.assert_array_equal(x, images[index])
    np.testing.assert_array_equal(bench_plan.pick_samples(images, labels, 10, seed=5)[1], y)
    assert not np.array_equal(bench_plan.pick_samples(images, labels, 10, seed=6)[1], y)
    assert not np.array_equal(bench_plan.pick_samples(images, labels, 10)[1], y)  # seed 0
    np.testing.assert_array_equal(bench_plan.pick_samples(images, labels, 50)[1], labels)


def test_stage_plan_writes_what_the_runner_reads(tiny_models, tiny_onnx_models, tmp_path):
    """Every entry against hashlib, numpy's reader and LiteRT driven by hand; stale files of
    an earlier plan go, a folder stays; the quantization contract only for the translated
    ONNX model; the board's settings passed through."""
    labels_cnn, labels_mlp = np.arange(12) % 10, np.arange(7) % 10
    samples = {"tiny_cnn": (synthetic_images(labels_cnn, 1), labels_cnn),
               "tiny_mlp": (synthetic_images(labels_mlp, 2), labels_mlp)}
    models = {"tiny_cnn/int8": tiny_models["tiny_cnn/int8"],
              "tiny_mlp/float32": tiny_models["tiny_mlp/float32"],
              "tiny_cnn/onnx_int8_tflite": tiny_onnx_models["tiny_cnn/onnx_int8_tflite"]}
    stage = tmp_path / "stage"
    (stage / "kept").mkdir(parents=True)
    (stage / "old_model.tflite").write_bytes(b"stale")
    board = Board(name="b", threads=(1, 2, 4), cpus=(0, 3), warmup=3, runs=17,
                  min_rounds=21, min_seconds=0.25, peak_seconds=1.5)
    path = bench_plan.stage_plan(models, samples, board, stage)
    assert path == stage / "plan.json"
    plan = json.loads(path.read_text())
    assert not (stage / "old_model.tflite").exists() and (stage / "kept").is_dir()
    assert (plan["threads"], plan["cpus"], plan["warmup"], plan["runs"], plan["min_rounds"],
            plan["min_seconds"], plan["peak_seconds"]) == ([1, 2, 4], [0, 3], 3, 17, 21, 0.25,
                                                           1.5)
    assert plan["peak"] == [] and [e["key"] for e in plan["models"]] == list(models)
    contract = litert_quantization(tiny_models["tiny_cnn/int8"])
    for entry, (key, model) in zip(plan["models"], models.items()):
        assert entry["file"] == model.name and entry["host_key"] == "host"
        assert (stage / model.name).read_bytes() == model.read_bytes()
        assert entry["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert entry["samples"] == f"{model.stem}_samples.npz"
        npz = (stage / entry["samples"]).read_bytes()
        assert entry["samples_sha256"] == hashlib.sha256(npz).hexdigest()
        images, labels = samples[key.split("/")[0]]
        with np.load(io.BytesIO(npz)) as read:
            np.testing.assert_array_equal(read["x"], images)
            np.testing.assert_array_equal(read["y"], labels)
            host = read["host"]
        if model.suffix == ".tflite":  # the board's reference, as LiteRT itself answers
            np.testing.assert_array_equal(host, litert_top1(model, images))
        assert "top1" not in entry and "reference" not in entry
        quantized = {k for k in entry if k.endswith("_quantization")}
        if key.endswith("onnx_int8_tflite"):
            assert quantized == {"input_quantization", "output_quantization"}
            for side in ("input", "output"):
                assert entry[f"{side}_quantization"][0] == pytest.approx(contract[side][0])
                assert entry[f"{side}_quantization"][1] == contract[side][1]
        else:
            assert quantized == set()
    # The translated model answers as the .tflite it came from, on every image.
    translated = next(e for e in plan["models"] if e["key"].endswith("onnx_int8_tflite"))
    with np.load(stage / translated["samples"]) as read:
        np.testing.assert_array_equal(read["host"], litert_top1(tiny_models["tiny_cnn/int8"],
                                                                samples["tiny_cnn"][0]))
    # 3 models x 3 thread counts; the most samples of a build is 12.
    case = 60 + (1 + 3 + 17 + 12) * 0.1
    assert plan["case_timeout_s"] == pytest.approx(case)
    assert plan["deadline_s"] == pytest.approx(9 * case + 60)
    assert sorted(p.name for p in stage.iterdir()) == sorted(
        ["kept", "plan.json", *(m.name for m in models.values()),
         *(f"{m.stem}_samples.npz" for m in models.values())])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stage_plan_with_references_peak_gemms_and_top1(tiny_models, tmp_path):
    """A reference is pushed under its bytes' name, a peak model carries its hand-counted
    MACs, `top1` marks each entry; each pair and peak case adds its own time to the case and
    the run (two of each: a count that divides is caught). The stage's folders are made."""
    labels = np.arange(5)
    samples = {"tiny_mlp": (synthetic_images(labels, 3), labels),
               "tiny_cnn": (synthetic_images(labels, 4), labels)}
    mlp, cnn = tiny_models["tiny_mlp/int8"], tiny_models["tiny_cnn/int8"]
    mlp_ref, cnn_ref = tiny_models["tiny_mlp/float32"], tiny_models["tiny_cnn/float32"]
    board = Board(name="b", threads=(1, 2, 4), warmup=4, runs=6, min_seconds=0.5,
                  peak_seconds=2.0)
    stage = tmp_path / "work" / "b"
    plan = json.loads(bench_plan.stage_plan(
        {"tiny_mlp/int8": mlp, "tiny_cnn/int8": cnn}, samples, board, stage, top1=True,
        peak={"float32": mlp_ref, "int8": cnn},
        references={"tiny_mlp/int8": mlp_ref, "tiny_cnn/int8": cnn_ref}).read_text())
    for entry, ref in zip(plan["models"], (mlp_ref, cnn_ref)):
        assert entry["top1"] is True
        digest = sha256(ref)
        assert entry["reference"] == {"file": f"reference_{digest[:16]}.tflite",
                                      "sha256": digest}
        assert (stage / entry["reference"]["file"]).read_bytes() == ref.read_bytes()
    # By hand: the MLP 784 x 8 + 8 x 10 multiply-accumulates; the CNN's convolutions
    # (26 x 26 x 4 x 3 x 3 x 1, 11 x 11 x 8 x 3 x 3 x 4, 3 x 3 x 8 x 3 x 3 x 8) and dense
    # layers (72 x 8, 8 x 10).
    assert plan["peak"] == [
        {"file": mlp_ref.name, "sha256": sha256(mlp_ref), "variant": "float32",
         "macs": 784 * 8 + 8 * 10},
        {"file": cnn.name, "sha256": sha256(cnn), "variant": "int8",
         "macs": 26 * 26 * 4 * 9 + 11 * 11 * 8 * 9 * 4 + 3 * 3 * 8 * 9 * 8 + 72 * 8 + 80}]
    # 4 cases (2 models, 2 peak GEMMs) x 3 thread counts; a pair times both models for
    # (warmup + runs) invokes and at least min_seconds twice each.
    case = 60 + (1 + 4 + 6 + 5) * 0.1
    pair = 2 * (4 + 6) * 0.1 + 4 * 0.5
    assert plan["case_timeout_s"] == pytest.approx(case + pair + 2.0)
    assert plan["deadline_s"] == pytest.approx(12 * case + 60 + pair * 3 * 2 + 2.0 * 3 * 2)


def test_a_plan_of_peak_gemms_alone_times_no_samples(tiny_models, tmp_path):
    """No models, so no samples: a case is the child's start, one invoke per warmup and run,
    and peak_seconds."""
    board = Board(name="b", threads=(1,), warmup=2, runs=3, peak_seconds=1.5)
    peak = tiny_models["tiny_mlp/float32"]
    plan = json.loads(bench_plan.stage_plan({}, {}, board, tmp_path / "s",
                                            peak={"float32": peak}).read_text())
    assert plan["models"] == [] and [p["macs"] for p in plan["peak"]] == [6352]
    assert plan["case_timeout_s"] == pytest.approx(60 + (1 + 2 + 3) * 0.1 + 1.5)
    assert plan["deadline_s"] == pytest.approx(60 + (1 + 2 + 3) * 0.1 + 60 + 1.5)
