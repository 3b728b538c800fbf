"""Names of the .tflite variants and of their files: `<build>_<variant>.tflite`.

Imports neither numpy nor TensorFlow: dodo.py names every task's targets with these on each
`doit` call, including no-op builds.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import EXTRA_VARIANTS, ConvertParams


def variant_names(params: ConvertParams) -> list[str]:
    return ["float32", "int8", *params.extra_variants]


def variant_path(model_dir: Path, build: str, variant: str) -> Path:
    return Path(model_dir) / f"{build}_{variant}.tflite"


def variant_of(path: Path) -> tuple[str, str]:
    """(build, variant) of a `<build>_<variant>.tflite` path."""
    for variant in ("float32", "int8", *EXTRA_VARIANTS):
        if Path(path).stem.endswith(f"_{variant}"):
            return Path(path).stem[: -len(variant) - 1], variant
    raise ValueError(f"{path}: not named <build>_<variant>.tflite")
