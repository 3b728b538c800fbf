"""Names of the .tflite variants and of their files: `<build>_<variant>.tflite`.

Imports neither numpy nor TensorFlow: dodo.py names every task's targets with these on each
`doit` call, including no-op builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.params import EXTRA_VARIANTS, ConvertParams

# Everything int8 except the tensors a build's `float_layers` names, which the debugger's
# denylist keeps float (pick them from the per-layer report, layers.csv).
SELECTIVE = "int8_selective"


def variant_names(params: ConvertParams, float_layers: Sequence[str] = ()) -> list[str]:
    selective = [SELECTIVE] if float_layers else []
    return ["float32", "int8", *selective, *params.extra_variants]


def variant_path(model_dir: Path, build: str, variant: str) -> Path:
    return Path(model_dir) / f"{build}_{variant}.tflite"


def variant_of(path: Path) -> tuple[str, str]:
    """(build, variant) of a `<build>_<variant>.tflite` path."""
    # Longest first: "<build>_int8_selective" must not read as a build named "<build>_int8".
    for variant in sorted(("float32", "int8", SELECTIVE, *EXTRA_VARIANTS), key=len, reverse=True):
        if Path(path).stem.endswith(f"_{variant}"):
            return Path(path).stem[: -len(variant) - 1], variant
    raise ValueError(f"{path}: not named <build>_<variant>.tflite")
