"""A graph pass after tf2onnx that puts the translated int8 model in the QDQ form ONNX
Runtime fuses into integer kernels (QLinearConv, QGemm, QLinearMatMul).

tf2onnx translates a TFLite int8 op as DequantizeLinear -> float op -> QuantizeLinear, which
ONNX Runtime fuses only when the pattern is the one its QDQ selectors know. Three things in
the translation break that pattern (measured: ORT's optimized graph of the CNN kept 2 of 3
Conv and a Gemm in float and dequantized their int8 weights on every run):

- an int8 tensor reshaped or transposed (NHWC <-> NCHW, flatten) *before* its
  DequantizeLinear: on x86 ORT converts int8 activations to uint8 only in Q -> DQ pairs, so a
  DQ fed by a Reshape or a graph input is not fused. Rewritten as DQ -> Reshape/Transpose ->
  Q -> DQ with the same scale and zero point (Q(DQ(q)) = q, so the values are unchanged), the
  form ORT's own quantizer writes;
- TFLite's fused activation as a Relu / Clip between the op and its QuantizeLinear: removed
  when the QuantizeLinear's zero point and range already clamp at the same bounds (Q is
  monotonic and saturating, so Q(clip(x, lo, hi)) = Q(x) exactly when Q(lo) is the type's
  minimum and Q(hi) its maximum);
- a fully connected layer as MatMul + Add of a constant bias: one Gemm when the weight is a
  constant 2-D matrix and the activation 2-D (ONNX's Gemm semantics, the same arithmetic);
- a constant DequantizeLinear read by an elementwise op (the MLP's 1/255 rescale Mul): ORT
  runs that op in float and would dequantize the constant on every run, so the constant is
  stored dequantized (the same float32 arithmetic, done once).
- DequantizeLinear -> an elementwise op with a constant scalar -> QuantizeLinear that maps
  every int8 value to itself (the Rescaling layer's x/255 between ORT's input QuantizeLinear
  at scale 1 and the next at scale 1/255; an Add of 0): ORT runs the op in float on every
  run, so the three are bypassed. Checked on all 256 values in float32, each at least a
  quarter step from a rounding boundary, so the result does not depend on how a kernel
  orders the arithmetic. After a graph input's DQ only when the model's metadata states the
  input's quantization (`state_quantization`): the DQ left there has the next one's scale,
  and a reader of an older model finds the input's quantization in that DQ.

Each rewrite checks its precondition and leaves a node it does not recognise as it was;
`RewriteSummary.left_in_float` names every Conv/Gemm/MatMul still outside the QDQ form. The
caller's check against LiteRT on every test image is what proves the result.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Ops that only move int8 values around: the DQ may go before them (per-tensor only).
_LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
# The compute ops whose float form means dequantized weights on every run.
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Per-tensor elementwise ops whose constant operand may be stored dequantized.
_ELEMENTWISE = ("Mul", "Add", "Sub", "Div")


@dataclass
class RewriteSummary:
    clamps_removed: int = 0
    gemms: int = 0
    requantized_layouts: int = 0
    constants_dequantized: int = 0
    identities_bypassed: int = 0
    left_in_float: list[str] = field(default_factory=list)

    def describe(self) -> str:
        done = (f"{self.clamps_removed} activations folded into QuantizeLinear, "
                f"{self.gemms} MatMul+Add made Gemm, {self.requantized_layouts} reshapes "
                "requantized, "
                f"{self.constants_dequantized} constants stored dequantized, "
                f"{self.identities_bypassed} identity requantizations bypassed")
        if self.left_in_float:
            done += ("; not recognised, left as translated (float in ONNX Runtime): "
                     + ", ".join(self.left_in_float))
        return done


class _Graph:
    """Index of a GraphProto: producers, consumers, constants (rebuilt after each rewrite)."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}

    def only_consumer(self, tensor: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def scalar(self, name: str) -> np.ndarray | None:
        value = self.constants.get(name)
        return value if value is not None and value.size == 1 else None


def state_quantization(model: Any) -> dict[str, tuple[float, int]]:
    """Write into `model`'s metadata (the runner's QUANTIZATION_METADATA keys) the
    quantization of its integer input and output, read from the Dequantize/QuantizeLinear
    beside them, before any rewrite moves those; returns what was stated per side."""
    import json

    from onnx import helper

    from pipeline import load_runner
    from pipeline.core.runtimes import onnx_quantization

    keys = load_runner().QUANTIZATION_METADATA
    stated = {}
    for side, value in (("input", model.graph.input[0]), ("output", model.graph.output[0])):
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        found = onnx_quantization(model.graph, value.name, side) \
            if np.issubdtype(dtype, np.integer) else None
        if found is not None:
            helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                           keys[side]: json.dumps(list(found))})
            stated[side] = found
    return stated


def integer_form(model: Any) -> RewriteSummary:
    """Rewrite `model` (a ModelProto, in place) as described in the module docstring."""
    from pipeline import load_runner

    summary = RewriteSummary()
    stated = {p.key for p in model.metadata_props}
    # Graph inputs whose quantization the metadata states: their DQ may be bypassed.
    free_inputs = {model.graph.input[0].name} \
        if load_runner().QUANTIZATION_METADATA["input"] in stated else set()
    summary.clamps_removed = _fold_clamps(model.graph)
    summary.gemms = _matmul_add_to_gemm(model)
    summary.requantized_layouts = _requantize_layouts(model.graph)
    summary.constants_dequantized = _dequantize_constants(model.graph)
    summary.identities_bypassed = _bypass_identities(model.graph, free_inputs)
    summary.left_in_float = _float_compute(_Graph(model.graph))
    return summary


def _quantized(q_node: Any, index: _Graph, value: float) -> int | None:
    """What QuantizeLinear `q_node` (per-tensor) makes of the float `value` before saturating,
    or None when its scale or zero point is not a constant scalar."""
    scale = index.scalar(q_node.input[1])
    zero = index.scalar(q_node.input[2]) if len(q_node.input) > 2 else None
    if scale is None or zero is None:
        return None
    if np.isinf(value):
        return int(np.sign(value)) * 2 ** 31
    # ONNX QuantizeLinear: round half to even of x / scale, in float32, then + zero point.
    return int(np.rint(np.float32(value) / scale.astype(np.float32).item())) + int(zero.item())


def _clamp_bounds(node: Any, index: _Graph) -> tuple[float, float] | None:
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    bounds = [-np.inf, np.inf]
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot]:
            value = index.scalar(node.input[slot])
            if value is None:
                return None
            bounds[slot - 1] = float(value.item())
    for attribute in node.attribute:  # Clip before opset 11
        if attribute.name in ("min", "max"):
            bounds[attribute.name == "max"] = attribute.f
    return bounds[0], bounds[1]


def _fold_clamps(graph: Any) -> int:
    removed = 0
    index = _Graph(graph)
    for node in list(graph.node):
        bounds = _clamp_bounds(node, index)
        q_node = index.only_consumer(node.output[0]) if bounds else None
        if q_node is None or q_node.op_type != "QuantizeLinear":
            continue
        zero = index.scalar(q_node.input[2]) if len(q_node.input) > 2 else None
        low, high = (_quantized(q_node, index, b) for b in bounds)
        if zero is None or low is None or high is None:
            continue
        info = np.iinfo(zero.dtype)
        if low <= info.min and high >= info.max:
            q_node.input[0] = node.input[0]
            graph.node.remove(node)
            removed += 1
    return removed


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor ONNX's shape inference knows."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: len(v.type.tensor_type.shape.dim)
            for v in (*inferred.value_info, *inferred.input, *inferred.output)
            if v.type.tensor_type.HasField("shape")}


def _constant_rank(name: str, index: _Graph) -> int | None:
    """Rank of a constant, or of the constant a DequantizeLinear reads."""
    if name in index.constants:
        return index.constants[name].ndim
    node = index.producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and \
            node.input[0] in index.constants:
        return index.constants[node.input[0]].ndim
    return None


def _matmul_add_to_gemm(model: Any) -> int:
    from onnx import helper

    graph, made = model.graph, 0
    index, ranks = _Graph(graph), _ranks(model)
    for node in list(graph.node):
        if node.op_type != "MatMul" or ranks.get(node.input[0]) != 2 or \
                _constant_rank(node.input[1], index) != 2:
            continue
        add = index.only_consumer(node.output[0])
        if add is None or add.op_type != "Add":
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if _constant_rank(bias, index) not in (1, 2):
            continue
        gemm = helper.make_node("Gemm", [node.input[0], node.input[1], bias], list(add.output),
                                name=node.name)
        # At the Add's place: every input of both is computed before it.
        position = list(graph.node).index(add)
        graph.node.insert(position, gemm)
        graph.node.remove(node)
        graph.node.remove(add)
        made += 1
    return made


def _requantize_layouts(graph: Any) -> int:
    """X (int8) -> layout ops -> DQ(s, z)  =>  X -> DQ(s, z) -> layout ops -> Q(s, z) -> DQ(s, z),
    for a per-tensor DQ whose layout chain has no other reader."""
    from onnx import helper

    index, moved = _Graph(graph), 0
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or \
                index.scalar(dq.input[1]) is None or index.scalar(dq.input[2]) is None:
            continue
        chain, source = [], dq.input[0]
        while source in index.producer and index.producer[source].op_type in _LAYOUT_OPS \
                and index.only_consumer(source) is not None:
            chain.append(index.producer[source])
            source = chain[-1].input[0]
        if not chain or (source not in index.inputs and (
                source not in index.producer or
                index.producer[source].op_type != "QuantizeLinear")):
            continue
        first, last = chain[-1], chain[0]
        early, late = f"{source}_dequantized", f"{last.output[0]}_requantized"
        graph.node.append(helper.make_node("DequantizeLinear", [source, *dq.input[1:]],
                                           [early], name=early))
        graph.node.append(helper.make_node("QuantizeLinear", [last.output[0], *dq.input[1:]],
                                           [late], name=late))
        first.input[0] = early
        dq.input[0] = late
        moved += 1
    return moved


def _dequantize_constants(graph: Any) -> int:
    from onnx import numpy_helper

    index, folded = _Graph(graph), 0
    for dq in list(graph.node):
        reader = index.only_consumer(dq.output[0]) if dq.op_type == "DequantizeLinear" else None
        if reader is None or reader.op_type not in _ELEMENTWISE or \
                any(name not in index.constants for name in dq.input) or \
                index.constants[dq.input[1]].size != 1:
            continue
        q, scale = index.constants[dq.input[0]], index.constants[dq.input[1]]
        zero = index.constants[dq.input[2]] if len(dq.input) > 2 else np.zeros((), q.dtype)
        # ONNX DequantizeLinear: (x - zero_point) * scale, in float32.
        value = (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32),
                                                         dq.output[0]))
        graph.node.remove(dq)
        folded += 1
    return folded


# An elementwise op's float32 arithmetic, operand order kept (the constant may be either).
_ARITHMETIC = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
# How far from a rounding boundary (in steps) every value must land for an identity to count.
_MARGIN = 0.25


def _identity_chain(q2: Any, index: _Graph, free_inputs: set[str]) -> tuple[Any, Any] | None:
    """(DequantizeLinear, op) when DQ -> op(constant scalar) -> `q2` maps every value of the
    DQ's integer type to itself; None otherwise."""
    op = index.producer.get(q2.input[0])
    if op is None or op.op_type not in _ARITHMETIC or index.only_consumer(op.output[0]) is not q2:
        return None
    slots = [i for i, name in enumerate(op.input) if index.scalar(name) is not None]
    if len(slots) != 1 or len(op.input) != 2:
        return None
    dq = index.producer.get(op.input[1 - slots[0]])
    # A DQ of a graph input may state the input's quantization (the contract a board feeds)
    # in a model whose metadata does not: bypassed, the next DQ's scale would read as the
    # input's.
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or \
            len(q2.input) < 3 or (dq.input[0] in index.inputs and
                                  dq.input[0] not in free_inputs):
        return None
    s1, z1 = index.scalar(dq.input[1]), index.scalar(dq.input[2])
    s2, z2 = index.scalar(q2.input[1]), index.scalar(q2.input[2])
    constant = index.scalar(op.input[slots[0]])
    if any(v is None for v in (s1, z1, s2, z2)) or z1.dtype != z2.dtype or \
            z1.dtype.kind not in "iu" or constant.dtype != np.float32:
        return None
    info = np.iinfo(z1.dtype)
    values = np.arange(info.min, info.max + 1)
    # ONNX's DequantizeLinear, the op and QuantizeLinear's x / scale, all in float32.
    x = (values.astype(np.float32) - np.float32(z1.item())) * np.float32(s1.item())
    c = np.float32(constant.item())
    y = _ARITHMETIC[op.op_type](*((x, c) if slots[0] == 1 else (c, x))).astype(np.float32)
    steps = y / np.float32(s2.item())
    if not np.all(np.isfinite(steps)) or np.abs(steps - np.rint(steps)).max() > _MARGIN:
        return None
    out = np.clip(np.rint(steps) + int(z2.item()), info.min, info.max)
    return (dq, op) if np.array_equal(out, values) else None


def _bypass_identities(graph: Any, free_inputs: set[str]) -> int:
    bypassed = 0
    while True:  # a bypass can line up the next chain (the rescale's Mul, then its Add of 0)
        index = _Graph(graph)
        found = next(((q2, chain) for q2 in graph.node if q2.op_type == "QuantizeLinear"
                      and q2.output[0] not in index.outputs
                      and (chain := _identity_chain(q2, index, free_inputs)) is not None),
                     None)
        if found is None:
            return bypassed
        q2, (dq, op) = found
        for reader in index.consumers[q2.output[0]]:
            reader.input[:] = [dq.input[0] if n == q2.output[0] else n for n in reader.input]
        graph.node.remove(q2)
        graph.node.remove(op)
        if len(index.consumers[dq.output[0]]) == 1 and dq.output[0] not in index.outputs:
            graph.node.remove(dq)
        bypassed += 1


def float_compute_nodes(model: Any) -> list[tuple[str, str]]:
    """(op type, node name) of each Conv/Gemm/MatMul of `model` outside the QDQ form, which
    ONNX Runtime runs in float (a build's nodes_to_exclude, or what the rewrite left)."""
    return [tuple(entry.split(" ", 1)) for entry in _float_compute(_Graph(model.graph))]


def _float_compute(index: _Graph) -> list[str]:
    """Compute nodes ORT cannot fuse: an input not read through a DequantizeLinear, or an
    output not quantized by a QuantizeLinear."""
    left = []
    for node in index.graph.node:
        if node.op_type not in _COMPUTE_OPS:
            continue
        reads = [index.producer.get(name) for name in node.input if name]
        writes = index.only_consumer(node.output[0])
        if any(r is None or r.op_type != "DequantizeLinear" for r in reads) or \
                writes is None or writes.op_type != "QuantizeLinear":
            left.append(f"{node.op_type} {node.name or node.output[0]}")
    return left
