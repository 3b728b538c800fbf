"""ONNX variants: the Keras model exported, quantized by ONNX Runtime, and the int8 .tflite
translated, for boards whose runtime is ONNX Runtime (the K1's).

Two doit task families (variants.py's `producer`), so a TFLite-only change never redoes the
models exported from the `.h5` and an ONNX change never redoes a `.tflite`:

- `convert_onnx:<build>` reads the `.h5`: `onnx_float32` (Keras' own `model.export`, static
  batch of 1) and `onnx_int8` (`onnxruntime.quantization.quantize_static` on that float model:
  QDQ, per-channel, MinMax, calibrated on exactly the int8 .tflite's representative images).
- `translate_onnx:<build>` reads the int8 `.tflite` (it must follow `convert`): tf2onnx's
  TFLite path, opset 17, static batch of 1. It is written only if ONNX Runtime's outputs equal
  LiteRT's bit for bit on every test image; otherwise the task fails naming the first image
  that differs. This is the proof that a board without TFLite runs the model you validated.

Same inputs, same bytes: see `canonical`.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline import PipelineError
from pipeline.stages.calibration import representative_indices
from pipeline.stages.onnx_graph import (RewriteSummary, integer_form,
                                         state_quantization)
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import write_bytes
from pipeline.core.layout import CARD_JSON, CARD_MD
from pipeline.core.params import (ONNX_CALIBRATION_METHODS as CALIBRATION_METHODS,
                                  ConvertParams, load_params)
from pipeline.stages.preprocess import load_arrays
from pipeline.core.variants import (INT8, ONNX_FLOAT32, ONNX_INT8, ONNX_INT8_TFLITE, VARIANTS,
                               variant_names, variant_path)

# The doit task family (variants.Variant.producer) of the variants `run` writes; the
# translation's is "translate_onnx".
PRODUCER = "convert_onnx"
# tf2onnx's TFLite path at opset 17 translates every op of the int8 models (measured for the
# default builds: outputs equal LiteRT's bit for bit on all 10,000 test images); issue 12
# measured Debian's riscv64 onnxruntime 1.21 running it.
TRANSLATE_OPSET = 17

# The counter suffix tf2onnx appends to the names it makes (see `canonical`).
_COUNTER = re.compile(r"__(\d+)")


class OnnxConvertError(PipelineError):
    pass


class UnknownNodesError(OnnxConvertError):
    """nodes_to_exclude names a node the float model does not have (the caller names the
    build)."""


def canonical(model: Any) -> bytes:
    """The model's bytes without the process-dependent details tf2onnx leaves in them.

    tf2onnx (inside Keras' export, and the translation) names the nodes it adds from a
    process-wide counter ("Reshape__37") in an order that depends on set iteration (string
    hashes differ per process), lists nodes that do not depend on each other in either order,
    and its duplicate-constant merge keeps whichever equal constant it meets first. So: the
    nodes are put in the order a depth-first walk from the graph outputs meets them (inputs
    in slot order; that order depends on the graph's edges alone), each initializer is named
    after the first node that reads it ("<node>:<input slot>"), every remaining counter
    number is renumbered in order of first use, initializers and value_info are sorted by
    name, doc strings cleared, and the proto serialized deterministically. Nodes and
    initializers no output depends on are dropped. Graph input and output names are kept:
    they are the contract.
    """
    graph = model.graph
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        raise ValueError("canonical: subgraphs (If/Loop/Scan) are not handled")
    ordered_nodes = _walk_from_outputs(graph)
    del graph.node[:]
    graph.node.extend(ordered_nodes)
    initializers = {t.name for t in graph.initializer}
    numbers: dict[str, int] = {}

    def renumber(name: str) -> str:
        return _COUNTER.sub(lambda m: f"__{numbers.setdefault(m.group(1), len(numbers))}",
                            name)

    def rename_value(value: Any) -> None:
        value.name = renumber(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = renumber(dim.dim_param)

    for value in graph.input:
        rename_value(value)
    constants: dict[str, str] = {}
    for node in graph.node:
        node.name = renumber(node.name)
        names = []
        for slot, name in enumerate(node.input):
            if name in initializers:
                names.append(constants.setdefault(name, f"{node.name}:{slot}"))
            else:
                names.append(renumber(name))
        node.input[:] = names
        node.output[:] = [renumber(o) for o in node.output]
        node.doc_string = ""
    for value in (*graph.output, *graph.value_info):
        rename_value(value)
    for tensor in graph.initializer:
        tensor.name = constants.get(tensor.name, "")
    _sort_by_name(graph)
    model.doc_string = graph.doc_string = ""
    return model.SerializeToString(deterministic=True)


def _sort_by_name(graph: Any) -> None:
    """Initializers (those still named: the ones some node reads) and value_info by name."""
    for field, keep in ((graph.initializer, lambda t: bool(t.name)),
                        (graph.value_info, lambda v: True)):
        ordered = sorted((item for item in field if keep(item)), key=lambda item: item.name)
        copies = [type(item)() for item in ordered]
        for copy, item in zip(copies, ordered):
            copy.CopyFrom(item)
        del field[:]
        field.extend(copies)


def _walk_from_outputs(graph: Any) -> list[Any]:
    """Copies of the graph's nodes in depth-first post-order from its outputs (each node after
    the producers of its inputs, taken in slot order): a topological order fixed by the
    edges alone."""
    producer = {out: node for node in graph.node for out in node.output}
    order, done = [], set()
    for output in graph.output:
        # An explicit stack (node, next input slot) instead of recursion: no depth limit.
        start = producer.get(output.name)
        stack = [(start, 0)] if start is not None and id(start) not in done else []
        while stack:
            node, slot = stack.pop()
            if slot < len(node.input):
                stack.append((node, slot + 1))
                source = producer.get(node.input[slot])
                if source is not None and id(source) not in done and \
                        all(source is not n for n, _ in stack):
                    stack.append((source, 0))
            elif id(node) not in done:
                done.add(id(node))
                copy = type(node)()
                copy.CopyFrom(node)
                order.append(copy)
    return order


def export_float(model: Any) -> bytes:
    """The Keras model as a float32 ONNX graph with a static batch of 1: a dynamic batch adds
    Shape/Slice/Concat nodes that are slower in ONNX Runtime and that SpacemiT's execution
    provider does not take. Input: raw 0..255 pixels as float32 (the 1/255 is inside)."""
    import onnx
    import tensorflow as tf

    shape = (1, *model.input_shape[1:])
    with tempfile.TemporaryDirectory(prefix="onnx-export.") as tmp:
        path = Path(tmp) / "model.onnx"
        model.export(str(path), format="onnx", verbose=False,
                     input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
        exported = onnx.load(str(path))
    onnx.checker.check_model(exported)
    return canonical(exported)


def quantize_int8(float_model: bytes, representative: np.ndarray,
                  calibration: str = "MinMax", preprocess: bool = False,
                  nodes_to_exclude: Sequence[str] = ()) -> bytes:
    """ONNX Runtime's static int8 quantization of the float model: QDQ (the form SpacemiT's
    execution provider and its model zoo use), int8 weights per channel and int8 activations,
    ranges by `calibration` (one of CALIBRATION_METHODS) over `representative` (H x W uint8
    images). `preprocess`: ORT's quant_pre_process first (shape inference and graph
    optimization, as ORT recommends). `nodes_to_exclude` stay float. Then
    onnx_graph.integer_form, for what ORT's quantizer leaves in float."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)

    if calibration not in CALIBRATION_METHODS:
        raise OnnxConvertError(f"convert.onnx_calibration: unknown method {calibration!r}; "
                               f"choose from {list(CALIBRATION_METHODS)}")

    class Calibration(CalibrationDataReader):
        """Each representative image as the float model takes it: 1 x H x W x 1 raw pixels
        as float32, as convert.py feeds the TFLite converter."""

        def __init__(self, input_name: str) -> None:
            self._feeds = iter([{input_name: image[np.newaxis, ..., np.newaxis]
                                 .astype(np.float32)} for image in representative])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    input_name = onnx.load_from_string(float_model).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="onnx-quantize.") as tmp:
        # A path, not the ModelProto: quantize_static rewrites a proto it is given in place.
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(float_model)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            source = prepared
        _check_node_names(nodes_to_exclude, onnx.load(str(source)), preprocess)
        quantize_static(str(source), str(target), Calibration(input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, calibration),
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(nodes_to_exclude))
        quantized = onnx.load(str(target))
    # The Rescaling layer's constants as ORT's quantizer leaves them (DequantizeLinear of an
    # int8 1/255 and 0 on every run): stored dequantized, same arithmetic, about a third
    # faster on the host (docs/measured/onnx_runtimes.md); outputs measured identical on
    # all 10,000 MNIST test images. Then the rescale itself, between ORT's input
    # QuantizeLinear and the next, when it maps every int8 value to itself (calibrated on
    # images that reach 255): bypassed, the same outputs, no float Mul on every run.
    integer_form(quantized)
    onnx.checker.check_model(quantized)
    return canonical(quantized)


def _check_node_names(names: Sequence[str], model: Any, preprocessed: bool) -> None:
    """One line naming the key and the valid names when `names` holds a node `model` (what
    quantize_static is given) does not have: ORT's quantizer ignores unknown names."""
    known = [node.name for node in model.graph.node]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownNodesError(
            f"nodes_to_exclude: no node named {unknown} in the float model"
            + (" after quant_pre_process" if preprocessed else "")
            + f"; valid names (reports/<build>/layers_onnx.md names them): {known}")


def translate_tflite(tflite_path: Path, integer: bool = True) -> bytes:
    """The .tflite translated by tf2onnx (opset 17), its graph input and output given the
    .tflite's own static shape (tf2onnx writes the batch as a symbol); with `integer`, put
    in the form ONNX Runtime runs in integer kernels (onnx_graph.integer_form)."""
    import onnx
    import tf2onnx

    from pipeline.core.runtimes import open_model

    model, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=TRANSLATE_OPSET)
    contract = open_model(tflite_path).io_contract()
    for value, side in ((model.graph.input[0], "input"), (model.graph.output[0], "output")):
        shape = contract[side]["shape"]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise OnnxConvertError(f"{tflite_path}: tf2onnx gave the {side} {len(dims)} "
                                   f"dimensions, the .tflite {len(shape)}")
        for dim, size in zip(dims, shape):
            if dim.HasField("dim_param"):
                dim.dim_value = size  # clears dim_param (a oneof)
    state_quantization(model)  # the contract, before the integer rewrite moves its nodes
    onnx.checker.check_model(model)
    content = canonical(model)
    return rewrite_integer(content)[0] if integer else content


def rewrite_integer(content: bytes) -> tuple[bytes, RewriteSummary]:
    """The translated model in ONNX Runtime's integer form, canonical, and what was done."""
    import onnx

    model = onnx.load_from_string(content)
    summary = integer_form(model)
    rewritten = canonical(model)
    onnx.checker.check_model(onnx.load_from_string(rewritten))
    return rewritten, summary


@dataclass(frozen=True)
class Agreement:
    """How an ONNX model's outputs compare with the .tflite's under LiteRT, per test image."""
    steps: np.ndarray          # largest difference in output quantization steps
    top1_differs: np.ndarray   # indices of images whose top-1 class differs

    @property
    def identical(self) -> int:
        return int((self.steps == 0).sum())

    @property
    def worst(self) -> int:
        return int(self.steps.max(initial=0))


def compare_outputs(onnx_content: bytes, tflite_path: Path, images: np.ndarray,
                    onnx_name: str) -> Agreement:
    """ONNX Runtime's outputs against LiteRT's, one image per run as both models' static
    batch of 1 takes them, through the same input quantization (the runner's). Fails unless
    both have the same input and output quantization."""
    from pipeline.core.runtimes import open_model, open_model_content

    # One thread each: a batch of one image gives a thread pool nothing to share out, and its
    # spinning workers cost a loaded machine more than the run itself (measured: half the wall
    # time of the check with ONNX Runtime's default pool on this 2-core host).
    onnx_model = open_model_content(onnx_content, VARIANTS[ONNX_INT8_TFLITE].format, threads=1)
    lite = open_model(tflite_path, threads=1)
    ours, theirs = onnx_model.io_contract(), lite.io_contract()
    for side in ("input", "output"):
        keys = ("dtype", "shape", "scale", "zero_point")
        mine, ref = ({k: c[side].get(k) for k in keys} for c in (ours, theirs))
        if mine != ref:
            raise OnnxConvertError(f"{onnx_name}: its {side} is {mine}, the .tflite's {ref}; "
                                   "not written")
    with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        expected = lite.probabilities(images, 1)
    got = onnx_model.probabilities(images, 1)
    # Both are dequantized with the same scale and zero point: the difference is an exact
    # multiple of the scale, so this is the integer outputs' difference.
    steps = np.rint(np.abs(got - expected) / np.float32(theirs["output"]["scale"])).max(axis=1)
    return Agreement(steps.astype(np.int64),
                     np.flatnonzero(got.argmax(axis=1) != expected.argmax(axis=1)))


def check_same_outputs(onnx_content: bytes, tflite_path: Path, images: np.ndarray,
                       onnx_name: str, max_steps: int = 0) -> tuple[int, int]:
    """Fail unless ONNX Runtime answers as LiteRT does on every image: the same input and
    output quantization, the same top-1 class, and integer outputs that differ by at most
    `max_steps` output quantization steps (0: bit for bit).

    Returns (images whose outputs are bit-identical, largest difference in steps).
    """
    agreement = compare_outputs(onnx_content, tflite_path, images, onnx_name)
    steps = agreement.steps
    beyond = np.flatnonzero(steps > max_steps)
    advice = ("not written. A board running it would not answer as the validated .tflite "
              "does: raise convert.onnx_tflite_max_steps only if that is acceptable, or set "
              "convert.onnx = false to build TFLite only")
    if agreement.top1_differs.size:
        first = int(agreement.top1_differs[0])
        raise OnnxConvertError(
            f"{onnx_name}: ONNX Runtime's top-1 class differs from LiteRT's for "
            f"{Path(tflite_path).name} on test image {first} ({agreement.top1_differs.size} "
            f"of {len(images):,} images; {agreement.identical:,} bit-identical, at most "
            f"{agreement.worst} output steps apart); " + advice.replace(
                "raise convert.onnx_tflite_max_steps only if that is acceptable, or ", ""))
    if beyond.size:
        first = int(beyond[0])
        raise OnnxConvertError(
            f"{onnx_name}: ONNX Runtime's output differs from LiteRT's for "
            f"{Path(tflite_path).name} by {steps[first]:.0f} output steps on test image "
            f"{first} (more than convert.onnx_tflite_max_steps = {max_steps}; "
            f"{beyond.size} of {len(images):,} images beyond it, at most {steps.max():.0f} "
            f"steps, {agreement.identical:,} bit-identical); " + advice)
    return agreement.identical, agreement.worst


def run(model_path: Path, data_path: Path, params: ConvertParams, build: str,
        model_dir: Path, nodes_to_exclude: Sequence[str] = ()) -> dict[str, int]:
    """The convert_onnx action: onnx_float32 and onnx_int8 of `build` from its saved `.h5`,
    the build's `nodes_to_exclude` kept float in onnx_int8; returns bytes per variant. Both
    are computed before either is written."""
    from pipeline.stages.train import load_model

    arrays = load_arrays(data_path)
    representative = arrays["x_train"][representative_indices(
        arrays["y_train"], params.representative_samples, params.seed)]
    with native_output_hidden():  # TensorFlow and tf2onnx notices; a failure shows them
        model = load_model(model_path)
        contents = {ONNX_FLOAT32: export_float(model)}
        try:
            contents[ONNX_INT8] = quantize_int8(contents[ONNX_FLOAT32], representative,
                                                params.onnx_calibration,
                                                params.onnx_preprocess, nodes_to_exclude)
        except UnknownNodesError as exc:
            raise UnknownNodesError(f"builds[{build}].{exc}") from None
    wanted = variant_names(params, producer=PRODUCER)
    return _write({v: c for v, c in contents.items() if v in wanted}, model_dir, build)


def run_translate(tflite_path: Path, data_path: Path, build: str, model_dir: Path,
                  max_steps: int = 0) -> int:
    """The translate_onnx action: onnx_int8_tflite from the int8 .tflite, in ONNX Runtime's
    integer form, written only when it answers as LiteRT does on every test image (same
    top-1, within `max_steps` output steps). Prints how many images are bit-identical before
    and after the integer rewrite."""
    path = variant_path(model_dir, build, ONNX_INT8_TFLITE)
    with native_output_hidden():
        plain = translate_tflite(tflite_path, integer=False)
    content, summary = rewrite_integer(plain)
    images = load_arrays(data_path)["x_test"]
    before = compare_outputs(plain, tflite_path, images, str(path))
    try:
        identical, worst = check_same_outputs(content, tflite_path, images, str(path),
                                              max_steps)
    except OnnxConvertError:
        # A model translated under a looser limit fails this one too: it must not stay in
        # models/ nor in the card, which describes it (the card task rebuilds the card).
        for stale in (path, model_dir / CARD_MD, model_dir / CARD_JSON):
            stale.unlink(missing_ok=True)
        raise
    size = _write({ONNX_INT8_TFLITE: content}, model_dir, build)[ONNX_INT8_TFLITE]
    print(f"{path.name}: {summary.describe()}")
    print(f"{path.name}: outputs equal LiteRT's bit for bit on {identical:,} of "
          f"{len(images):,} test images" + (f" (the others within {worst} output steps)"
                                            if identical < len(images) else "")
          + f"; before the integer rewrite {before.identical:,}")
    return size


def _write(contents: dict[str, bytes], model_dir: Path, build: str) -> dict[str, int]:
    sizes = {}
    for variant, content in contents.items():
        path = variant_path(model_dir, build, variant)
        write_bytes(path, content)
        sizes[variant] = len(content)
        print(f"{path}: {len(content):,} bytes")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("model", type=Path, help="the .h5 written by train (the int8 .tflite "
                        "written by convert beside it is translated too)")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    try:
        everything = load_params(args.params, os.environ.get("PIPELINE_SET", ""))
        params = everything.convert
        excluded = next((b.nodes_to_exclude for b in everything.builds if b.name == args.build),
                        ())  # a build the params file does not declare: nothing excluded
        run(args.model, args.data, params, args.build, args.model.parent, excluded)
        run_translate(variant_path(args.model.parent, args.build, INT8), args.data,
                      args.build, args.model.parent, params.onnx_tflite_max_steps)
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
