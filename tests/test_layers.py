"""Per-layer quantization error on the smoke build's real model, and the selective variant
that keeps the worst layer in float, end to end through `doit`."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from pipeline.stages.convert import ConvertError, convert, float_tensor_dtypes
from pipeline.stages.layers import layer_errors
from tests.conftest import executed_tasks, run_doit
from tests.project import edit_params

EDGE_OPS = {"QUANTIZE", "DEQUANTIZE"}


def _rows(reports):
    with open(reports / "layers.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def smoke(smoke_project):
    from pipeline.stages.preprocess import load_arrays
    from pipeline.stages.train import load_model

    art = smoke_project / "artifacts"
    arrays = load_arrays(art / "data" / "mnist" / "mnist.npz")
    return art, load_model(art / "models" / "mnist_cnn" / "mnist_cnn.h5"), arrays


def test_one_row_per_quantized_tensor_ranked_worst_first(smoke):
    from ai_edge_litert.interpreter import Interpreter

    art, _, _ = smoke
    for build in ("mnist_cnn", "mnist_mlp"):
        reports = art / "reports" / build
        rows = _rows(reports)
        interpreter = Interpreter(model_path=str(art / "models" / build / f"{build}_int8.tflite"))
        dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
        # Quantized results: integer outputs of compute ops (SHAPE and friends make int32
        # shape tensors, QUANTIZE/DEQUANTIZE only convert at the edges).
        ops = Counter(op["op_name"] for op in interpreter._get_ops_details()
                      if op["op_name"] not in EDGE_OPS
                      and dtypes[op["outputs"][0]] in (np.int8, np.uint8))
        assert Counter(r["op"] for r in rows) == ops, build
        ratios = [float(r["rmse_over_scale"]) for r in rows]
        assert ratios == sorted(ratios, reverse=True)
        assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
        markdown = (reports / "layers.md").read_text()
        assert "The worst tensor is **" in markdown and f"(`{rows[0]['tensor']}`)" in markdown
        assert f'float_layers = ["{rows[0]["tensor"]}"]' in markdown
        assert (reports / "layers.png").stat().st_size > 5000


def test_calibrating_on_a_blank_image_moves_the_worst_error_up(smoke):
    from pipeline.stages.convert import representative_indices

    _, model, arrays = smoke
    representative = arrays["x_train"][representative_indices(arrays["y_train"], 100, 1234)]
    debug = arrays["x_test"][:50]
    good = layer_errors(model, representative, debug)
    blank = layer_errors(model, np.zeros((10, 28, 28), np.uint8), debug)
    assert [r["tensor"] for r in good] != [] and len(good) == len(blank)
    assert blank[0]["rmse_over_scale"] > 3 * good[0]["rmse_over_scale"]


def test_selective_variant_keeps_named_tensors_float_and_rejects_unknown_names(smoke):
    from ai_edge_litert.interpreter import Interpreter

    art, model, arrays = smoke
    worst = _rows(art / "reports" / "mnist_cnn")[0]["tensor"]
    representative = arrays["x_train"][:100]
    content = convert(model, "int8_selective", representative, "int8", [worst])
    assert worst in float_tensor_dtypes(content)
    interpreter = Interpreter(model_content=content)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # the board feeds int8 still
    with pytest.raises(ConvertError, match=r"no tensor named \['cnn_1/nope'\]"):
        convert(model, "int8_selective", representative, "int8", [worst, "cnn_1/nope"])


def test_float_layers_build_flows_through_evaluate_card_and_bench(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    worst = _rows(project / "artifacts" / "reports" / "mnist_cnn")[0]["tensor"]
    smoke = project / "params" / "smoke.toml"
    edit_params(smoke, builds=[
        {"name": "mnist_cnn", "dataset": "mnist", "model": "cnn", "float_layers": [worst]},
        {"name": "mnist_mlp", "dataset": "mnist", "model": "mlp"}])
    proc = run_doit(project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = executed_tasks(proc.stdout)
    assert {"convert:mnist_cnn", "evaluate:mnist_cnn", "card:mnist_cnn"} <= ran
    assert not ran & {"convert:mnist_mlp", "train:mnist_cnn", "layers:mnist_cnn"}
    art = project / "artifacts"
    rows = {v["name"]: v for v in json.loads(
        (art / "reports" / "mnist_cnn" / "accuracy.json").read_text())["variants"]}
    assert set(rows) == {"keras", "float32", "int8", "int8_selective", "onnx_float32",
                         "onnx_int8", "onnx_int8_tflite"}
    selective, int8 = rows["int8_selective"], rows["int8"]
    assert int8["bytes"] < selective["bytes"] < rows["float32"]["bytes"]
    assert abs(selective["drift_pt"]) <= 5.0
    accuracy_md = (art / "reports" / "mnist_cnn" / "accuracy.md").read_text()
    cells = {c.strip() for line in accuracy_md.splitlines() if line.startswith("|")
             for c in line.strip("|").split("|")}
    assert "int8_selective" in cells
    card = json.loads((art / "models" / "mnist_cnn" / "model_card.json").read_text())
    assert "int8_selective" in [v["name"] for v in card["variants"]]
    latency = json.loads((art / "reports" / "latency.json").read_text())
    assert ("mnist_cnn", "int8_selective") in {(r["build"], r["variant"]) for r in latency["rows"]}


def test_a_full_disk_leaves_no_layers_file_without_its_siblings(smoke_project, small_disk):
    import dataclasses

    from pipeline.core.files import DiskFullError
    from pipeline.stages.layers import run
    from pipeline.core.params import load_params

    art = smoke_project / "artifacts"
    params = load_params(smoke_project / "params" / "smoke.toml")
    # 16 KiB: room for layers.csv (written first), not for the chart.
    report_dir = small_disk(16) / "reports"
    with pytest.raises(DiskFullError, match=rf"writing {report_dir / 'layers.png'}: "):
        run("mnist_cnn", art / "models" / "mnist_cnn" / "mnist_cnn.h5",
            art / "data" / "mnist" / "mnist.npz", params.convert,
            dataclasses.replace(params.layers, samples=20), report_dir)
    assert list(report_dir.iterdir()) == []  # no layers.csv without layers.md and .png
