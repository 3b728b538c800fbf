"""The variant registry: what each variant is, and that the rest of the code asks it."""

import re
from pathlib import Path

import pytest

from pipeline.core import variants
from pipeline.core.params import ConvertParams, EXTRA_VARIANTS
from pipeline.core.variants import (VARIANTS, accuracy_floor, drift_gated_variants, format_of,
                               peak_variants, rank, reference_float_variant,
                               reference_int8_variant, variant_names, variant_of, variant_path)

REPO = Path(__file__).resolve().parent.parent
TFLITE = ("float32", "int8", "int8_selective", "float16", "dynamic_range")
ONNX = ("onnx_float32", "onnx_int8", "onnx_int8_tflite")
NAMES = TFLITE + ONNX


def convert_params(extra=(), onnx=False):
    return ConvertParams(representative_samples=10, seed=1, int8_io="int8",
                         extra_variants=tuple(extra), onnx=onnx,
                         onnx_tflite_max_steps=0)


def test_the_registry_says_what_each_variant_is():
    assert tuple(VARIANTS) == NAMES
    table = {v.name: (v.integer, v.accuracy_floor, v.drift_gated, v.peak, v.optional)
             for v in VARIANTS.values()}
    assert table == {
        "float32": (False, "float", False, True, None),
        "int8": (True, "int8", True, True, None),
        # integer, so the int8 floor (it used to get the float32 one in the nightly)
        "int8_selective": (True, "int8", False, False, "builds.float_layers"),
        "float16": (False, "float", False, True, "convert.extra_variants"),
        "dynamic_range": (False, "float", False, True, "convert.extra_variants"),
        "onnx_float32": (False, "float", False, True, "convert.onnx"),
        # the drift gate applies to ONNX Runtime's own int8 model too
        "onnx_int8": (True, "int8", True, True, "convert.onnx"),
        # equal to int8 bit for bit (checked by its task), so int8's gate covers it
        "onnx_int8_tflite": (True, "int8", False, False, "convert.onnx")}
    assert all(v.format == "tflite" and v.suffix == ".tflite" and v.producer == "convert"
               and v.compared_with == ("keras",) for v in VARIANTS.values()
               if v.name in TFLITE)
    # ONNX rows are compared with Keras (their drift reference) and with the int8 .tflite
    assert {(v.format, v.suffix, v.producer, v.compared_with) for v in VARIANTS.values()
            if v.name in ONNX} == {("onnx", ".onnx", "convert_onnx", ("keras", "int8")),
                                   ("onnx", ".onnx", "translate_onnx", ("keras", "int8"))}
    assert [VARIANTS[n].producer for n in ONNX] == ["convert_onnx", "convert_onnx",
                                                    "translate_onnx"]
    assert [v.name for v in VARIANTS.values() if v.all_integer] == ["int8"]
    with pytest.raises(TypeError):
        VARIANTS["x"] = VARIANTS["int8"]  # read-only
    with pytest.raises(ValueError, match="accuracy_floor"):
        variants.Variant("x", "tflite", ".tflite", False, "int4", False, (), "convert", False)


def test_helpers_read_the_registry():
    assert drift_gated_variants() == ["int8", "onnx_int8"]
    assert peak_variants() == ("float32", "int8", "float16", "dynamic_range", "onnx_float32",
                               "onnx_int8")
    assert reference_int8_variant() == "int8" and reference_float_variant() == "float32"
    assert EXTRA_VARIANTS == ("float16", "dynamic_range")
    assert [accuracy_floor(n) for n in ("keras", *NAMES, "bf16")] == [
        None, "float", "int8", "int8", "float", "float", "float", "int8", "int8", "float"]
    assert sorted(["bf16", "int8", "dynamic_range", "keras", "float32"], key=rank) == [
        "keras", "float32", "int8", "dynamic_range", "bf16"]


def test_variant_names_follow_params_float_layers_and_producer():
    assert variant_names(convert_params()) == ["float32", "int8"]
    assert variant_names(convert_params(["dynamic_range", "float16"]), ["t"]) == list(TFLITE)
    assert variant_names(convert_params(["dynamic_range", "float16"], onnx=True), ["t"]) == \
        list(NAMES)
    assert variant_names(convert_params(onnx=True)) == ["float32", "int8", *ONNX]
    assert variant_names(convert_params(onnx=True), producer="convert_onnx") == [
        "onnx_float32", "onnx_int8"]
    assert variant_names(convert_params(onnx=True), producer="translate_onnx") == [
        "onnx_int8_tflite"]
    assert variant_names(convert_params(onnx=False), producer="convert_onnx") == []
    assert variant_names(convert_params(["float16"]), producer="convert") == [
        "float32", "int8", "float16"]
    assert variant_names(convert_params(["float16"]), producer="onnx") == []


def test_paths_and_names_round_trip_for_every_variant(tmp_path):
    for name in NAMES:
        path = variant_path(tmp_path, "mnist_cnn", name)
        fmt = "onnx" if name in ONNX else "tflite"
        assert path == tmp_path / f"mnist_cnn_{name}.{fmt}"
        assert variant_of(path) == ("mnist_cnn", name)
        assert format_of(path) == fmt
    assert variant_of("b_onnx_int8_tflite.onnx") == ("b", "onnx_int8_tflite")
    # longest name first: a build whose name ends like a variant still reads right
    assert variant_of("b_int8_int8_selective.tflite") == ("b_int8", "int8_selective")
    with pytest.raises(ValueError, match="not named <build>_<variant>"):
        variant_of("mnist_cnn_int8.onnx")
    with pytest.raises(ValueError, match="no variant has the suffix '.h5'"):
        format_of("mnist_cnn.h5")


def test_no_other_module_compares_variant_names_as_strings():
    """The registry answers variant questions; a literal comparison would bypass it."""
    names = "|".join(("keras", *NAMES))
    compare = re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({names})["']"""
                         rf"""|["']({names})["']\s*(==|!=)""")
    offenders = []
    for path in [*sorted((REPO / "pipeline").rglob("*.py")), REPO / "dodo.py"]:
        if path.name == "variants.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compare.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
