"""Per-layer quantization error of a build's onnx_int8 model against onnx_float32.

The equivalent of ONNX Runtime's `qdq_loss_debug` (its activation matching) done with the
`onnx` API: every activation tensor the QDQ model quantizes (a QuantizeLinear whose input is
not a constant) is added as an output of the float model, and the DequantizeLinear after
that QuantizeLinear as an output of the int8 model; both run in ONNX Runtime on the same
seeded test images and each pair is compared in quantization steps (error / the
QuantizeLinear's scale), worst first, as layers.md does for the int8 .tflite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from pipeline.core.files import write_text

# ORT's quantizer renames a graph output it quantizes: `<name>_QuantizeLinear_Input`.
_RENAMED_OUTPUT = "_QuantizeLinear_Input"


def _scalars(graph: Any) -> dict[str, float | int]:
    """Every one-element constant of the graph (per-tensor scales and zero points)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {name: value.item() for name, value in values.items() if value.size == 1}


def quantized_activations(float_model: Any, int8_model: Any) -> list[dict[str, Any]]:
    """One entry per activation quantized in `int8_model` that `float_model` also computes:
    the float tensor's name, the int8 model's dequantized tensor, its scale, zero point and
    the float op that makes it ("input" for a graph input)."""
    graph = int8_model.graph
    constants = {t.name for t in graph.initializer}
    # The DequantizeLinear that undoes each QuantizeLinear: same scale and zero point. (After
    # onnx_graph's identity bypass the input's QuantizeLinear feeds a DQ of another scale:
    # that is the rescaled tensor, not the input's dequantization.)
    scalars = _scalars(graph)
    dequantized = {(n.input[0], scalars[n.input[1]], scalars[n.input[2]]): n.output[0]
                   for n in graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2
                   and n.input[1] in scalars and n.input[2] in scalars}
    producers = {o: n.op_type for n in float_model.graph.node for o in n.output}
    producers.update({i.name: "input" for i in float_model.graph.input})
    # The node that makes the tensor in the int8 graph (a Conv whose Relu the quantizer folded
    # makes the Relu's output): the name nodes_to_exclude takes, kept from the float model.
    makers = {o: n.name for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants \
                or len(node.input) < 3 or node.input[1] not in scalars \
                or node.input[2] not in scalars:
            continue
        pair = (node.output[0], scalars[node.input[1]], scalars[node.input[2]])
        if pair not in dequantized:
            continue
        name = node.input[0]
        if name not in producers and name.endswith(_RENAMED_OUTPUT):
            name = name[:-len(_RENAMED_OUTPUT)]
        if name not in producers:
            continue  # a tensor only the int8 graph has: nothing float to compare with
        found.append({"tensor": name, "dequantized": dequantized[pair],
                      "op": producers[name], "node": makers.get(node.input[0], ""),
                      "scale": float(pair[1]), "zero_point": int(pair[2])})
    return found


def _with_outputs(model: Any, names: Sequence[str]) -> bytes:
    """`model` serialized with `names` added to its graph outputs (type left to inference)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return copy.SerializeToString()


def run_outputs(content: bytes, names: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
    """Each of `names` over `images` (H x W uint8, fed one at a time as 1 x H x W x 1 raw
    pixels in float32, as evaluate feeds the ONNX models), stacked along a new first axis."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # No graph optimization: the fused kernels would hide the DequantizeLinear outputs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runs = [session.run(list(names), {input_name: image[np.newaxis, ..., np.newaxis]
                                      .astype(np.float32)}) for image in images]
    return [np.stack([r[i] for r in runs]) for i in range(len(names))]


def layer_errors(float_path: Path, int8_path: Path,
                 images: np.ndarray) -> list[dict[str, Any]]:
    """One row per quantized activation of onnx_int8, ranked by RMSE / scale (worst first)."""
    import onnx

    float_model, int8_model = onnx.load(str(float_path)), onnx.load(str(int8_path))
    tensors = quantized_activations(float_model, int8_model)
    floats = run_outputs(_with_outputs(float_model, [t["tensor"] for t in tensors]),
                         [t["tensor"] for t in tensors], images)
    ints = run_outputs(_with_outputs(int8_model, [t["dequantized"] for t in tensors]),
                       [t["dequantized"] for t in tensors], images)
    rows = []
    for t, reference, quantized in zip(tensors, floats, ints):
        error = quantized.astype(np.float64) - reference.astype(np.float64)
        rmse = math.sqrt(float(np.mean(error ** 2)))
        rows.append({"op": t["op"], "tensor": t["tensor"], "node": t["node"],
                     "elements": int(reference[0].size),
                     "rmse_over_scale": rmse / t["scale"], "rmse": rmse,
                     "mean_error": float(error.mean()),
                     "max_abs_error": float(np.abs(error).max()), "scale": t["scale"],
                     "zero_point": t["zero_point"]})
    rows.sort(key=lambda row: row["rmse_over_scale"], reverse=True)
    return [{"rank": i + 1, **row} for i, row in enumerate(rows)]


def float_nodes(int8_path: Path) -> list[dict[str, str]]:
    """The Conv/Gemm/MatMul nodes onnx_int8 runs in float (the build's nodes_to_exclude)."""
    import onnx

    from pipeline.stages.onnx_graph import float_compute_nodes

    return [{"op": op, "node": name}
            for op, name in float_compute_nodes(onnx.load(str(int8_path)))]


def _float_line(kept: Sequence[dict[str, str]]) -> str:
    if not kept:
        return ("Every Conv, Gemm and MatMul runs in int8. To keep one in float, add its node "
                "to `nodes_to_exclude = [...]` in this build's `[[builds]]` entry.\n\n")
    return ("Kept in float (the build's `nodes_to_exclude`): "
            + ", ".join(f"{k['op']} `{k['node']}`" for k in kept) + ".\n\n")


def render_markdown(build: str, rows: Sequence[dict[str, Any]], samples: int,
                    kept: Sequence[dict[str, str]] = ()) -> str:
    table = tabulate(
        [[r["rank"], f"{r['op']} `{r['tensor']}`", f"`{r['node']}`" if r["node"] else "",
          f"{r['rmse_over_scale']:.3f}", f"{r['mean_error']:+.2e}", f"{r['max_abs_error']:.2e}",
          f"{r['scale']:.3g}", r["zero_point"], f"{r['elements']:,}"] for r in rows],
        headers=["rank", "tensor", "made by node", "RMSE / scale", "mean error",
                 "max abs error", "scale", "zero point", "elements"], tablefmt="github",
        disable_numparse=True)
    worst = (f"The worst tensor is `{rows[0]['tensor']}` ({rows[0]['op']}): RMSE "
             f"{rows[0]['rmse_over_scale']:.2f} quantization steps; rounding alone gives "
             f"{1 / math.sqrt(12):.2f}.\n\n" if rows else "")
    return (f"# Per-layer quantization error: {build} onnx_int8\n\n"
            "Each activation tensor onnx_int8 quantizes (QuantizeLinear then DequantizeLinear) "
            f"against the same tensor of onnx_float32, both run by ONNX Runtime on {samples} "
            "seeded test images. RMSE / scale is the error in quantization steps of that "
            "tensor's QuantizeLinear, worst first. Values: "
            "[layers_onnx.json](layers_onnx.json).\n\n"
            f"{worst}{_float_line(kept)}{table}\n")


def write_reports(build: str, rows: Sequence[dict[str, Any]], test_indices: Sequence[int],
                  report_dir: Path, kept: Sequence[dict[str, str]] = ()) -> None:
    """layers_onnx.md and layers_onnx.json (inside the caller's outputs_together); the JSON
    names the test images compared (indices into x_test), so the figures can be redone, and
    the nodes `kept` in float."""
    write_text(report_dir / "layers_onnx.json",
               json.dumps({"build": build, "test_indices": list(test_indices),
                           "float_nodes": list(kept), "rows": list(rows)}, indent=2) + "\n")
    write_text(report_dir / "layers_onnx.md",
               render_markdown(build, rows, len(test_indices), kept))
