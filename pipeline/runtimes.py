"""The one seam that runs a model on the host: `open_model(path)` -> a `HostModel`.

Every stage that runs a model (convert's float-tensor check, evaluate, analysis, card, floor,
bench's host predictions, predict) goes through it, with one calling convention: raw uint8
pixels (N x H x W) in, dequantized class probabilities (N x classes float32) out. The backend
is chosen by the model's format (pipeline/variants.py, from the file's suffix); a second
runtime (ONNX Runtime) is one more class in BACKENDS.

Inputs are quantized by board/runner.py's own `quantize`, so host and board feed identical
tensors, and `board_predictions` is the runner's own `predict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline import PipelineError, load_runner
from pipeline.variants import VARIANTS, format_of, variant_of


class DamagedModelError(PipelineError):
    """A model file the runtime cannot read (truncated, overwritten, not a model)."""


def rebuild_hint(path: Path) -> str:
    """How to remake a model file: the doit task that writes it, by the file's name."""
    try:
        build, variant = variant_of(path)
    except ValueError:
        return "rebuild it with the task that wrote it (`doit list` names them)"
    task = f"{VARIANTS[variant].producer}:{build}"
    return f"rebuild it with `doit forget {task} && doit {task}`"


class HostModel(Protocol):
    """A model opened for inference on this host."""

    path: Path | None
    format: str

    def probabilities(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Class probabilities (N x classes, float32) of N x H x W uint8 images; an integer
        output is dequantized with its own scale and zero point."""

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Top-1 class of each image."""

    def board_predictions(self, images: np.ndarray) -> np.ndarray:
        """Top-1 class of each image exactly as board/runner.py computes it on a board."""

    def io_contract(self) -> dict[str, Any]:
        """{"input": t, "output": t}, t = name, dtype, shape and, for integer tensors, the
        affine quantization (scale, zero_point, real_value): what an application feeds."""

    def float_tensors(self) -> dict[str, str]:
        """Name -> dtype of every floating-point tensor of the graph."""

    def ops(self) -> list[dict[str, Any]]:
        """The graph's operators: {"op", "inputs", "outputs"}, each tensor as its shape."""


def tensor_contract(detail: dict[str, Any]) -> dict[str, Any]:
    """Name, dtype, shape and (integer tensors) affine quantization of one LiteRT tensor."""
    out = {"name": str(detail["name"]), "dtype": np.dtype(detail["dtype"]).name,
           "shape": [int(d) for d in detail["shape"]]}
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero_point = detail["quantization"]
        out.update(scale=float(scale), zero_point=int(zero_point),
                   real_value="(q - zero_point) * scale")
    return out


def dequantize(output: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor as float32: integer ones through their scale and zero point, which
    keeps the order of the classes (scale > 0), so the argmax is the model's top-1."""
    output = output.astype(np.float32)
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero_point = detail["quantization"]
        output = (output - zero_point) * scale
    return output


class LiteRTModel:
    """A .tflite model under the LiteRT interpreter (ai_edge_litert)."""

    format = "tflite"

    def __init__(self, path: Path | None = None, threads: int | None = None,
                 content: bytes | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from pipeline.console import native_output_hidden

        if (path is None) == (content is None):
            raise ValueError("give exactly one of path and content")
        self.path = None if path is None else Path(path)
        source = ({"model_path": str(path)} if path is not None
                  else {"model_content": content})

        def make() -> Any:
            with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
                return Interpreter(**source, num_threads=threads)

        self._make = make
        self._interpreter = make()
        self._allocated = False

    def _ready(self) -> Any:
        """The interpreter with its own (batch of one) input shape, allocated."""
        if not self._allocated:
            self._interpreter.allocate_tensors()
            self._allocated = True
        return self._interpreter

    def probabilities(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        # A second interpreter: resizing the first would change what board_predictions sees.
        interpreter = self._make()
        index = interpreter.get_input_details()[0]["index"]
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size, ..., np.newaxis]
            interpreter.resize_tensor_input(index, batch.shape)
            interpreter.allocate_tensors()
            detail = interpreter.get_input_details()[0]
            # The board's own input quantization, so host and board feed identical tensors.
            interpreter.set_tensor(index, load_runner().quantize(batch, detail))
            interpreter.invoke()
            out = interpreter.get_output_details()[0]
            outputs.append(dequantize(interpreter.get_tensor(out["index"]), out))
        return np.concatenate(outputs)

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return np.argmax(self.probabilities(images, batch_size), axis=1)

    def board_predictions(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(load_runner().predict(self._ready(), images))

    def io_contract(self) -> dict[str, Any]:
        return {"input": tensor_contract(self._interpreter.get_input_details()[0]),
                "output": tensor_contract(self._interpreter.get_output_details()[0])}

    def float_tensors(self) -> dict[str, str]:
        return {t["name"]: np.dtype(t["dtype"]).name
                for t in self._interpreter.get_tensor_details()
                if np.issubdtype(t["dtype"], np.floating)}

    def ops(self) -> list[dict[str, Any]]:
        interpreter = self._ready()
        shapes = {t["index"]: tuple(int(d) for d in t["shape"])
                  for t in interpreter.get_tensor_details()}
        # _get_ops_details is the only public-enough view of the graph LiteRT offers.
        return [{"op": op["op_name"],
                 "inputs": [shapes.get(i) for i in op["inputs"]],
                 "outputs": [shapes.get(i) for i in op["outputs"]]}
                for op in interpreter._get_ops_details()]


# Model format (variants.py's Variant.format) -> the backend that opens it on the host.
BACKENDS: dict[str, type] = {"tflite": LiteRTModel}


def open_model(path: Path, threads: int | None = None) -> HostModel:
    """The model file at `path`, opened by the backend of its format."""
    backend = _backend(format_of(path))
    try:
        return backend(path=Path(path), threads=threads)
    except (ValueError, RuntimeError) as exc:
        # LiteRT: "The model is not a valid Flatbuffer buffer"; ONNX Runtime: InvalidProtobuf.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DamagedModelError(f"{path}: cannot be read as a {backend.format} model "
                                f"({first}; {Path(path).stat().st_size:,} bytes - truncated "
                                f"or overwritten?): {rebuild_hint(Path(path))}") from None


def open_model_content(content: bytes, format: str, threads: int | None = None) -> HostModel:
    """A model held in memory (a converter's output, before it is written)."""
    return _backend(format)(content=content, threads=threads)


def _backend(format: str) -> type:
    try:
        return BACKENDS[format]
    except KeyError:
        raise ValueError(f"no host runtime for the {format!r} format (have: "
                         f"{', '.join(sorted(BACKENDS))})") from None
