"""Convert stage: reload the saved `.h5` and write float32, int8 (and optional) `.tflite` files.

The int8 model is full-integer (TFLITE_BUILTINS_INT8) with int8 or uint8 input/output,
calibrated on a seeded, class-stratified sample of the training images, and is checked
after conversion to hold no float tensor at all.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline import PipelineError
# Re-exported: the calibration draw is shared with convert_onnx (its own module, so that an
# edit of the TFLite recipes here does not redo the ONNX models).
from pipeline.stages.calibration import representative_indices  # noqa: F401
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import outputs_together, write_bytes
from pipeline.core.params import ConvertParams, load_params
from pipeline.stages.preprocess import load_arrays
# Re-exported: callers name variants through this stage.
from pipeline.core.variants import (DYNAMIC_RANGE, FLOAT16, FLOAT32, INT8, SELECTIVE,  # noqa: F401
                               VARIANTS, variant_names, variant_of, variant_path)

# The doit task family (variants.Variant.producer) whose variants this stage writes.
PRODUCER = "convert"


class ConvertError(PipelineError):
    pass


def checked_sample_count(count: int, available: int, key: str, where: str, what: str) -> int:
    """`count`, or a ConvertError naming the param when the split holds fewer images."""
    if count > available:
        raise ConvertError(f"{key} = {count:,} but {where} {available:,} {what}: lower it to "
                           f"at most {available:,}")
    return count


def representative_dataset(images: np.ndarray, add_channel_axis: bool = True) -> Any:
    def generate() -> Iterator[list[np.ndarray]]:
        for image in images:
            sample = image[np.newaxis, ..., np.newaxis] if add_channel_axis else image
            yield [sample.astype(np.float32)]
    return generate


def converter_for(model: Any, variant: str, representative: np.ndarray | None = None,
                  int8_io: str = "int8", add_channel_axis: bool = True) -> Any:
    """A TFLiteConverter set up for one variant; the per-layer debugger reuses the int8 one.

    `representative` holds calibration inputs: H x W images (given a batch and a channel
    axis here) or, with `add_channel_axis=False`, whole input tensors as the model takes them.
    """
    import tensorflow as tf

    # This stage's own recipes, one per variant it produces (the registry says which).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == FLOAT32:
        pass
    elif variant in (INT8, SELECTIVE):
        if representative is None:
            raise ValueError("int8 conversion needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative,
                                                                   add_channel_axis)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if variant == SELECTIVE:  # the layers kept in float need the float kernels
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        io_type = {"int8": tf.int8, "uint8": tf.uint8}[int8_io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif variant == FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == DYNAMIC_RANGE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return converter


def convert(model: Any, variant: str, representative: np.ndarray | None = None,
            int8_io: str = "int8", float_layers: Sequence[str] = (),
            add_channel_axis: bool = True) -> bytes:
    """Convert a Keras model to one TFLite variant and return the flatbuffer bytes.

    `float_layers` (tensor names from the per-layer report) stay float in `int8_selective`;
    `representative` and `add_channel_axis` are as in `converter_for`.
    """
    converter = converter_for(model, variant, representative, int8_io, add_channel_axis)
    if variant != SELECTIVE:
        return converter.convert()
    import tensorflow as tf

    if not float_layers:
        raise ValueError("int8_selective needs at least one float layer")
    from tensorflow.lite.python import util as lite_util

    # Quantized with float input/output (fully_quantize=False), which the converter's own
    # I/O rewrite then turns into int8 or uint8 as convert.int8_io says: the debugger's
    # fully_quantize ignores inference_input_type and always gives int8 (zero point -128).
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=representative_dataset(representative, add_channel_axis),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(float_layers), fully_quantize=False))
    io_type = {"int8": tf.int8, "uint8": tf.uint8}[int8_io]
    content = lite_util.modify_model_io_type(debugger.get_nondebug_quantized_model(),
                                             io_type, io_type)
    # The debugger ignores names it does not know; a typo would silently ship full int8.
    unknown = [name for name in float_layers if name not in float_tensor_dtypes(content)]
    if unknown:
        raise ConvertError(f"float_layers: no tensor named {unknown} in this model; copy "
                           "names from the tensor column of reports/<build>/layers.csv")
    return content


def float_tensor_dtypes(model_content: bytes) -> dict[str, str]:
    """Name -> dtype of every floating-point tensor in a .tflite model."""
    from pipeline.core.runtimes import open_model_content

    return open_model_content(model_content, VARIANTS[FLOAT32].format).float_tensors()


def float_tensors(model_content: bytes) -> list[str]:
    """"name (dtype)" of every floating-point tensor in a .tflite model."""
    return [f"{name} ({dtype})" for name, dtype in float_tensor_dtypes(model_content).items()]


def check_integer_only(model_content: bytes, source: str,
                       layer_names: Sequence[str] = ()) -> None:
    """Raise ConvertError if the model holds a float tensor; `layer_names` (the Keras
    model's) let the message say which layer has no int8 kernel."""
    floats = float_tensors(model_content)
    if floats:
        layers = layers_in(floats, layer_names)
        raise ConvertError(
            f"{source} is not integer-only: {len(floats)} float tensor(s), e.g. "
            + ", ".join(floats[:5])
            + (f"; layer(s) with no int8 kernel: {', '.join(layers)} (replace them, e.g. "
               "relu for elu, or keep them float with the build's float_layers)" if layers
               else ""))


def layers_in(tensor_names: Sequence[str], layer_names: Sequence[str]) -> list[str]:
    """The Keras layers whose names appear in TFLite tensor names (the converter writes
    them as `<model>_1/<layer>_1/<op>`), in model order."""
    import re

    return [layer for layer in layer_names
            if any(re.search(rf"(^|/){re.escape(layer)}(_\d+)?(/|$)", name.split(" (")[0])
                   for name in tensor_names)]


@outputs_together()  # every variant, or none: evaluate and bench need the whole set
def run(model_path: Path, data_path: Path, params: ConvertParams, build: str,
        model_dir: Path, float_layers: Sequence[str] = ()) -> dict[str, int]:
    """The doit action: every variant of `build` from its saved `.h5`; returns bytes per variant.

    `float_layers` (the build's) adds the `int8_selective` variant.
    """
    from pipeline.stages.train import load_model

    arrays = load_arrays(data_path)
    representative = arrays["x_train"][representative_indices(
        arrays["y_train"], checked_sample_count(params.representative_samples,
                                                len(arrays["y_train"]),
                                                "convert.representative_samples",
                                                f"{data_path} has only", "training images"),
        params.seed)]
    sizes = {}
    with native_output_hidden():  # "Saved artifact ... Captures", SavedModel loader lines
        model = load_model(model_path)
    for variant in variant_names(params, float_layers, producer=PRODUCER):
        path = variant_path(model_dir, build, variant)
        # The converter prints its flags and MLIR notices from C++; a failure shows them.
        with native_output_hidden():
            try:
                content = convert(model, variant, representative, params.int8_io, float_layers)
            except ConvertError:
                raise
            except Exception as exc:  # noqa: BLE001 - the converter's ConverterError and kin
                message = " ".join(str(exc).split())
                layers = layers_in([message.replace(" ", "/")],
                                   [layer.name for layer in model.layers])
                raise ConvertError(
                    f"{path}: the converter failed: {type(exc).__name__}: {message[:600]}"
                    + (f"; in layer(s) {', '.join(layers)}" if layers else "")) from None
            if VARIANTS[variant].all_integer:
                check_integer_only(content, str(path), [layer.name for layer in model.layers])
        write_bytes(path, content)
        sizes[variant] = len(content)
        print(f"{path}: {len(content):,} bytes")
    remove_stale_variants(model_dir, build, variant_names(params, float_layers))
    return sizes


def remove_stale_variants(model_dir: Path, build: str, current: Sequence[str],
                          log=print) -> list[Path]:
    """Remove `build`'s variant files that it no longer ships (an extra variant, float_layers
    or a format switched off), so its folder holds exactly its current variants; return them.

    Only files the pipeline made go: named `<build>_<variant><suffix>` after a registry
    variant, and listed with the same SHA-256 in the build's model card (the card lists
    every file a build shipped). No task declares them as targets any more, so doit never
    expects them back.
    """
    from pipeline.core.files import sha256_file
    from pipeline.core.layout import CARD_JSON

    card_path = Path(model_dir) / CARD_JSON
    try:
        shipped = {v["file"]: v["sha256"] for v in json.loads(card_path.read_text())["variants"]}
    except (OSError, ValueError, KeyError, TypeError):
        shipped = {}
    removed = []
    for name in VARIANTS:
        path = variant_path(model_dir, build, name)
        if name in current or not path.is_file():
            continue
        if shipped.get(path.name) != sha256_file(path):
            log(f"{path}: no longer a variant of {build}, kept: {card_path} does not list this "
                "file with its content, so the pipeline did not make it; remove it yourself")
            continue
        path.unlink()
        removed.append(path)
        log(f"{path}: removed, {build} no longer ships {name}")
    return removed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("model", type=Path, help="the .h5 written by train")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    params = load_params(args.params, os.environ.get("PIPELINE_SET", ""))
    run(args.model, args.data, params.convert, args.build, args.model.parent)


if __name__ == "__main__":
    main()
