"""The one seam that runs a model on the host: `open_model(path)` -> a `HostModel`.

Every stage that runs a model (convert's float-tensor check, evaluate, analysis, card, floor,
bench's host predictions, predict) goes through it, with one calling convention: raw uint8
pixels (N x H x W) in, dequantized class probabilities (N x classes float32) out. The backend
is chosen by the model's format (pipeline/core/variants.py, from the file's suffix): LiteRT for
.tflite, ONNX Runtime (CPU provider) for .onnx.

Inputs are quantized by board/runner.py's own `quantize`, so host and board feed identical
tensors, and `board_predictions` is the runner's own `predict` (an ONNX session is handed to
it behind the interpreter calls it makes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline import PipelineError, load_runner
from pipeline.core.formats import FORMATS
from pipeline.core.variants import VARIANTS, format_of, variant_of


class UnsupportedModelError(ValueError):
    """A model that loads but breaks this seam's contract (e.g. an integer input whose
    quantization the graph does not state): not damage, so no rebuild hint."""


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


def _allocate(interpreter: Any) -> None:
    """allocate_tensors without its native notice: LiteRT applies the XNNPACK delegate there
    and prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ (once per
    process, into the console of whatever command opened the first model)."""
    from pipeline.core.console import native_output_hidden

    with native_output_hidden():
        interpreter.allocate_tensors()


class LiteRTModel:
    """A .tflite model under the LiteRT interpreter (ai_edge_litert)."""

    format = "tflite"

    def __init__(self, path: Path | None = None, threads: int | None = None,
                 content: bytes | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from pipeline.core.console import native_output_hidden

        if (path is None) == (content is None):
            raise ValueError("give exactly one of path and content")
        self.path = None if path is None else Path(path)
        source = ({"model_path": str(path)} if path is not None
                  else {"model_content": content})

        def make() -> Any:
            with native_output_hidden():
                return Interpreter(**source, num_threads=threads)

        self._make = make
        self._interpreter = make()
        self._allocated = False

    def _ready(self) -> Any:
        """The interpreter with its own (batch of one) input shape, allocated."""
        if not self._allocated:
            _allocate(self._interpreter)
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
            _allocate(interpreter)
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


# Ops that move or reshape a tensor without changing its values: an integer graph input's
# quantization is that of the DequantizeLinear it reaches through them (and an integer
# output's, that of the QuantizeLinear it comes from). tf2onnx puts a Reshape first.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def onnx_quantization(graph: Any, name: str, side: str) -> tuple[float, int] | None:
    """(scale, zero_point) of a graph input (`side` "input": the DequantizeLinear that reads
    it) or output ("output": the QuantizeLinear that writes it), per-tensor only; None when
    the tensor is not quantized there. An ONNX tensor carries no quantization itself: the
    translated .tflite keeps it in these nodes' initializers."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    wanted = "DequantizeLinear" if side == "input" else "QuantizeLinear"
    current, seen = name, set()
    while current not in seen:  # bounded: each tensor is visited once
        seen.add(current)
        if side == "input":
            nodes = [n for n in graph.node if current in n.input]
            node = nodes[0] if len(nodes) == 1 else None
        else:
            node = next((n for n in graph.node if current in n.output), None)
        if node is None:
            return None
        if node.op_type == wanted and len(node.input) == 3 and \
                all(i in initializers for i in node.input[1:]):
            scale, zero_point = (numpy_helper.to_array(initializers[i]) for i in node.input[1:])
            if scale.size != 1:
                return None
            return float(scale.reshape(())), int(zero_point.reshape(()))
        if node.op_type not in _LAYOUT_OPS:
            return None
        current = node.output[0] if side == "input" else node.input[0]
    return None


def onnx_metadata(model: Any) -> dict[str, str]:
    """A ModelProto's metadata_props as a mapping (what onnxruntime's custom_metadata_map
    gives the runner)."""
    return {prop.key: prop.value for prop in model.metadata_props}


def onnx_detail(graph: Any, value: Any, side: str,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A graph input or output described as LiteRT describes a tensor (name, dtype, shape,
    quantization), so the runner's quantize and this module's dequantize take it as is. A
    symbolic dimension reads -1, as in LiteRT's shape_signature. An integer tensor's
    quantization is what the model's `metadata` states (the runner's
    QUANTIZATION_METADATA), else that of the Dequantize/QuantizeLinear beside it (a model
    built before the metadata)."""
    from onnx import helper

    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    quantization = (0.0, 0)  # LiteRT's "not quantized"
    if np.issubdtype(dtype, np.integer):
        found = load_runner().metadata_quantization(metadata or {}, side) or \
            onnx_quantization(graph, value.name, side)
        if found is None:
            raise UnsupportedModelError(
                f"{value.name}: an integer graph {side} with no per-tensor "
                f"{'Dequantize' if side == 'input' else 'Quantize'}Linear "
                "beside it: its scale and zero point are unknown")
        quantization = found
    return {"name": value.name, "index": 0, "dtype": dtype.type, "shape": shape,
            "quantization": quantization}


class _SessionAsInterpreter:
    """An ONNX Runtime session behind the interpreter calls board/runner.py's `predict`
    makes (details, set_tensor, invoke, get_tensor), so the host's board predictions of an
    .onnx model are the runner's own loop too."""

    def __init__(self, session: Any, inp: dict[str, Any], out: dict[str, Any]) -> None:
        self._session, self._inp, self._out = session, inp, out
        self._feed: np.ndarray | None = None
        self._result: np.ndarray | None = None

    def get_input_details(self) -> list[dict[str, Any]]:
        return [self._inp]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [self._out]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._feed = value

    def invoke(self) -> None:
        self._result = self._session.run([self._out["name"]], {self._inp["name"]: self._feed})[0]

    def get_tensor(self, index: int) -> np.ndarray:
        return self._result


class OnnxRuntimeModel:
    """An .onnx model under ONNX Runtime's CPU execution provider (the host's; the board's
    runner picks its own providers)."""

    format = "onnx"
    providers = ("CPUExecutionProvider",)

    def __init__(self, path: Path | None = None, threads: int | None = None,
                 content: bytes | None = None) -> None:
        import onnx
        import onnxruntime as ort

        if (path is None) == (content is None):
            raise ValueError("give exactly one of path and content")
        self.path = None if path is None else Path(path)
        self._proto = onnx.load(str(path)) if path is not None else onnx.load_from_string(content)
        graph = self._proto.graph
        metadata = onnx_metadata(self._proto)
        try:
            self._input = onnx_detail(graph, graph.input[0], "input", metadata)
            self._output = onnx_detail(graph, graph.output[0], "output", metadata)
        except ValueError as exc:  # unreadable metadata: one line naming the file
            if isinstance(exc, UnsupportedModelError):
                raise
            raise UnsupportedModelError(f"{self.path or 'the model'}: {exc}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ORT's default, one per core
        # Warnings only (e.g. an unused initializer); errors still raise.
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path) if path is not None else content,
                                            sess_options=options,
                                            providers=list(self.providers),
                                            disabled_optimizers=list(
                                                load_runner().ORT_DISABLED_OPTIMIZERS))

    def probabilities(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        # A model exported with a static batch (1, as the board runs it) takes that many
        # images per run; a symbolic batch takes `batch_size`.
        fixed = self._input["shape"][0] if self._input["shape"] else -1
        step = fixed if fixed > 0 else batch_size
        if len(images) % step:
            raise ValueError(f"{self.path}: a static batch of {step} cannot take "
                             f"{len(images)} images")
        quantize = load_runner().quantize
        name, out = self._input["name"], self._output["name"]
        outputs = []
        for start in range(0, len(images), step):
            batch = images[start:start + step, ..., np.newaxis]
            result = self.session.run([out], {name: quantize(batch, self._input)})[0]
            outputs.append(dequantize(result, self._output))
        return np.concatenate(outputs)

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return np.argmax(self.probabilities(images, batch_size), axis=1)

    def board_predictions(self, images: np.ndarray) -> np.ndarray:
        adapter = _SessionAsInterpreter(self.session, self._input, self._output)
        return np.asarray(load_runner().predict(adapter, images))

    def io_contract(self) -> dict[str, Any]:
        return {"input": tensor_contract(self._input), "output": tensor_contract(self._output)}

    def _typed_graph(self) -> tuple[dict[str, int], dict[str, list[int] | None]]:
        """Element type and shape of every named tensor (ONNX's shape inference)."""
        import onnx

        graph = onnx.shape_inference.infer_shapes(self._proto).graph
        types, shapes = {}, {}
        for t in graph.initializer:
            types[t.name], shapes[t.name] = t.data_type, [int(d) for d in t.dims]
        for v in (*graph.input, *graph.value_info, *graph.output):
            tensor = v.type.tensor_type
            types[v.name] = tensor.elem_type
            shapes[v.name] = ([d.dim_value if d.HasField("dim_value") else -1
                               for d in tensor.shape.dim] if tensor.HasField("shape") else None)
        return types, shapes

    def float_tensors(self) -> dict[str, str]:
        from onnx import helper

        types, _ = self._typed_graph()
        dtypes = {name: np.dtype(helper.tensor_dtype_to_np_dtype(t))
                  for name, t in types.items() if t}
        return {name: d.name for name, d in dtypes.items() if np.issubdtype(d, np.floating)}

    def ops(self) -> list[dict[str, Any]]:
        _, shapes = self._typed_graph()

        def shape(name: str) -> tuple[int, ...] | None:
            found = shapes.get(name)
            return None if found is None else tuple(found)

        return [{"op": node.op_type, "inputs": [shape(i) for i in node.input],
                 "outputs": [shape(o) for o in node.output]} for node in self._proto.graph.node]


# Model format -> the backend that opens it on the host (core/formats.py names the class).
BACKENDS: dict[str, type] = {f.key: globals()[f.backend] for f in FORMATS.values()}


def open_model(path: Path, threads: int | None = None) -> HostModel:
    """The model file at `path`, opened by the backend of its format."""
    backend = _backend(format_of(path))
    try:
        return backend(path=Path(path), threads=threads)
    except UnsupportedModelError:
        raise
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
