"""TFLite build pipeline: MNIST-style IDX data -> Keras -> float32/int8 .tflite -> drift report.

Every stage module is importable without TensorFlow; TensorFlow is imported inside the
functions that need it, so `doit` can load the task graph in a fraction of a second.
"""

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

# The on-board runner is a standalone script (it must not import this package); the host
# loads it by path wherever it needs the board's exact behaviour.
RUNNER = Path(__file__).resolve().parent.parent / "board" / "runner.py"


def artifact_root(environ: Mapping[str, str]) -> Path:
    """The artifact tree every command reads and the build writes: $PIPELINE_ARTIFACTS, else
    artifacts/ (doit's database and the cached task graph live there too)."""
    return Path(environ.get("PIPELINE_ARTIFACTS", "artifacts"))


@functools.cache
def load_runner() -> ModuleType:
    """board/runner.py as a module, so the host quantizes and predicts with the board's code."""
    # Named as its path reads (board/runner.py), so tools that key functions by module name
    # (mutmut's trampolines) find the functions of the file they changed.
    spec = importlib.util.spec_from_file_location("board.runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PipelineError(Exception):
    """An error the user can act on; its message says what went wrong and how to fix it."""
