"""The artifact tree as artifacts/README.md documents it, spelled out here by hand."""

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.core.layout import ANALYSIS_FILES, LAYERS_FILES, Layout

REPO = Path(__file__).resolve().parent.parent


def test_every_path_of_the_tree(tmp_path):
    a = Layout(tmp_path)
    expected = {
        a.raw_dir("mnist"): "data/mnist/raw",
        a.dataset_npz("mnist"): "data/mnist/mnist.npz",
        a.model_dir("b"): "models/b",
        a.keras_model("b"): "models/b/b.h5",
        a.history_json("b"): "models/b/history.json",
        a.variant_path("b", "int8"): "models/b/b_int8.tflite",
        a.variant_path("b", "int8_selective"): "models/b/b_int8_selective.tflite",
        a.card_json("b"): "models/b/model_card.json",
        a.card_md("b"): "models/b/model_card.md",
        a.logs_dir("b"): "logs/b",
        a.report_dir("b"): "reports/b",
        a.accuracy_json("b"): "reports/b/accuracy.json",
        a.accuracy_md("b"): "reports/b/accuracy.md",
        a.training_png("b"): "reports/b/training.png",
        a.latency_dir(): "reports/latency",
        a.board_result("k1"): "reports/latency/k1.json",
        a.board_samples("k1"): "reports/latency/k1.samples.ndjson.gz",
        a.latency_report("md"): "reports/latency.md",
        a.latency_lock(): "reports/.latency.lock",
        a.bench_dir("k1"): "bench/k1",
        a.peak_dir(): "peak",
        a.peak_model("float16"): "peak/peak_float16.tflite",
        a.nightly_dir(): "nightly",
        a.nightly_lock(): "nightly.lock",
        a.history_db(): "history.sqlite",
        a.doit_db(): ".doit.db",
    }
    for path, rel in expected.items():
        assert path == tmp_path / rel
    assert a.nightly_reports() == [tmp_path / "reports" / f"nightly.{e}"
                                   for e in ("json", "md", "png")]
    assert a.analysis_outputs("b") == [tmp_path / "reports" / "b" / n for n in ANALYSIS_FILES]
    assert a.layers_outputs("b") == [tmp_path / "reports" / "b" / n for n in LAYERS_FILES]
    assert "int8_damage.json" in ANALYSIS_FILES and "layers.csv" in LAYERS_FILES


def test_layout_is_frozen_and_takes_any_path_like(tmp_path):
    a = Layout(str(tmp_path))
    assert a.root == tmp_path and a == Layout(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.root = Path("elsewhere")


def test_model_files_are_the_variant_files_only(tmp_path):
    a = Layout(tmp_path)
    for rel in ("models/b/b_int8.tflite", "models/b/b.h5", "models/b/history.json",
                "models/c/c_float32.tflite", "peak/peak_int8.tflite"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert a.model_files() == [tmp_path / "models/b/b_int8.tflite",
                               tmp_path / "models/c/c_float32.tflite"]


def test_no_other_module_spells_the_tree_by_hand():
    """dodo.py and the stages take every artifact path from Layout."""
    spelled = re.compile(r"""/\s*["'](data|models|reports|latency|peak|nightly|logs|bench)["']"""
                         r"""|["'](history\.sqlite|nightly\.lock|accuracy\.json|"""
                         r"""model_card\.json|history\.json)["']""")
    # train's CLI writes logs beside a model it is given anywhere, outside any tree.
    allowed = {("train.py", 'args.log_dir or args.out.parent / "logs")')}
    offenders = []
    for path in [*sorted((REPO / "pipeline").rglob("*.py")), REPO / "dodo.py"]:  # every package
        if path.name == "layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if spelled.search(line) and not any(path.name == name and text in line
                                                for name, text in allowed):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_the_layout_module_stays_light():
    """dodo.py imports it on every doit call, including no-op builds."""
    import subprocess
    import sys

    code = ("import sys, pipeline.core.layout, pipeline.core.variants; "
            "print(sorted(m for m in ('numpy', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
