"""The one table of model formats: what a file suffix means, which runtime runs it on the
host and on a board, how its MACs are counted, and how reports name and colour it.

Every module that treats formats differently reads this table (variants, runtimes, the
floor's MAC counting, the latency report's labels, colours and ratio table, the virtual
K1's packages); board/runner.py keeps its own standalone copy of `suffix -> key` and of
NO_RUNTIME_MARK, and tests/test_formats.py checks that the two agree. A new format is one row here, its host
backend (core/runtimes.py), its MAC counter (bench/floor.py) and its loader in the runner.

Imports nothing heavy: dodo.py reads it (through variants) on every `doit` call.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from pipeline.core.records import record


@record
class ModelFormat:
    """One model file format.

    `key` is the name everything else uses (Variant.format, the runner's `runtimes` keys);
    `backend` the class in pipeline/core/runtimes.py that opens it on the host;
    `mac_counter` the function in pipeline/bench/floor.py that counts its MACs; `display`
    the short name in runtime lines (`TFLite: ai_edge_litert 1.4`), `runtime` the runtime
    family in chart titles and ratio headings; `colour` its points in latency.png;
    `board_packages` the Debian packages that give a board (the virtual K1) its runtime.
    """
    key: str
    suffix: str
    display: str
    runtime: str
    backend: str
    mac_counter: str
    colour: str
    board_packages: tuple[str, ...] = ()


# The words the runner starts a case's error with when the board has no runtime for its
# format (the virtual K1 and .tflite). board/runner.py keeps its own copy, as it does of
# the suffixes; tests/test_formats.py checks that the two agree.
NO_RUNTIME_MARK = "NO RUNTIME: "

# In display order (runtime lines list formats in this order).
FORMATS: Mapping[str, ModelFormat] = MappingProxyType({f.key: f for f in (
    # No TFLite runtime is packaged for riscv64 Debian: the virtual K1 reports NO RUNTIME.
    ModelFormat("tflite", ".tflite", "TFLite", "TFLite", backend="LiteRTModel",
                mac_counter="count_tflite_macs", colour="#4c72b0"),
    ModelFormat("onnx", ".onnx", "ONNX", "ONNX Runtime", backend="OnnxRuntimeModel",
                mac_counter="count_onnx_macs", colour="#dd8452",
                board_packages=("python3-onnxruntime",)),
)})
