"""The one table of model formats, and the runner's standalone copy of it."""

import re

from pipeline import load_runner
from pipeline.bench import floor, latency_chart, report
from pipeline.core import runtimes
from pipeline.core.formats import FORMATS, NO_RUNTIME_MARK
from pipeline.core.variants import VARIANTS, format_of, model_suffixes
from pipeline.virtual_k1 import rootfs as vk_rootfs


def test_the_runner_reads_the_same_suffixes_as_the_host():
    """board/runner.py cannot import the pipeline: its copy must say what the table says,
    and mark a row it has no runtime for with the words the host looks for."""
    assert load_runner().FORMATS == {f.suffix: f.key for f in FORMATS.values()}
    assert load_runner().NO_RUNTIME_MARK == NO_RUNTIME_MARK == "NO RUNTIME: "


def test_every_row_names_code_that_exists():
    for fmt in FORMATS.values():
        assert runtimes.BACKENDS[fmt.key].format == fmt.key
        assert callable(getattr(floor, fmt.mac_counter))
        assert re.fullmatch(r"#[0-9a-f]{6}", fmt.colour)
        assert fmt.suffix.startswith(".") and fmt.key
    assert len({f.suffix for f in FORMATS.values()}) == len(FORMATS)
    assert len({f.colour for f in FORMATS.values()}) == len(FORMATS)


def test_every_module_reads_the_table():
    """Variants, the suffix lookup, the report's labels and the virtual K1 follow the rows."""
    assert {v.format for v in VARIANTS.values()} <= set(FORMATS)
    assert all(v.suffix == FORMATS[v.format].suffix for v in VARIANTS.values())
    assert model_suffixes() == {f.suffix for f in FORMATS.values()}
    assert [format_of(f"m{f.suffix}") for f in FORMATS.values()] == list(FORMATS)
    assert latency_chart.runtime_family("onnx_int8") == "ONNX Runtime"
    assert latency_chart.runtime_family("int8") == "TFLite"
    assert latency_chart.COLOURS == {"tflite": "#4c72b0", "onnx": "#dd8452"}
    assert report.runtimes_text({"tflite": {"missing": "x"}, "onnx": {"missing": "x"}}) \
        == "TFLite: none; ONNX: none"
    assert "python3-onnxruntime" in vk_rootfs.PACKAGES
