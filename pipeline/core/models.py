"""Where a build's model comes from: a built-in name, the user's own Python callable, or a
saved Keras model file. The one place that reads a `[[builds]] model = "..."` reference.

    model = "cnn" | "mlp"               the built-in K1 tutorial CNN, or the MLP
    model = "models/kws.py:build"       function `build` in that file
    model = "mypkg.models:build"        function `build` in an importable module
    model = "pretrained/digits.keras"   a saved Keras model (.keras or .h5): fine-tuned, or
                                        converted as it is with `fine_tune = false`

File paths are relative to the directory of the params file that names them (absolute paths
work too). The callable is called as `build(input_shape, num_classes)` with `input_shape`
the model's input without the batch axis, e.g. (28, 28, 1), and returns an uncompiled
`keras.Model` whose output has `num_classes` softmax probabilities.

Imports neither numpy nor TensorFlow: dodo.py resolves every build's model (its file is a
dependency of the build's train task) on each `doit` call.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from pipeline import PipelineError
from pipeline.core.records import record

BUILTIN_MODELS = ("cnn", "mlp")
SAVED_SUFFIXES = (".keras", ".h5")


class ModelSourceError(PipelineError):
    pass


@record
class ModelSource:
    """A resolved model reference. `file` is what the train task depends on: the user's
    .py file, the module's file, or the saved model (None for a built-in)."""
    reference: str
    builtin: str | None = None
    file: Path | None = None
    module: str | None = None     # an importable module's name ("mypkg.models")
    function: str | None = None

    @property
    def kind(self) -> str:
        """"builtin", "callable" or "saved"."""
        if self.builtin:
            return "builtin"
        return "callable" if self.function else "saved"


@functools.lru_cache(maxsize=None)
def resolve(reference: str, base_dir: Path) -> ModelSource:
    """The source a reference names; ModelSourceError says what is wrong with it (the
    caller adds which params key it came from)."""
    if reference in BUILTIN_MODELS:
        return ModelSource(reference, builtin=reference)
    if ":" in reference:
        target, _, function = reference.rpartition(":")
        if not function.isidentifier():
            raise ModelSourceError(f"{reference!r}: {function!r} is not a Python function name "
                                   "(write <file.py or module>:<function>)")
        if target.endswith(".py"):
            path = _user_path(target, base_dir)
            if not path.is_file():
                raise ModelSourceError(f"{reference!r}: no file {path} (paths are relative to "
                                       "the params file's directory)")
            return ModelSource(reference, file=path, function=function)
        if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", target) is None:
            raise ModelSourceError(f"{reference!r}: {target!r} is neither a .py file nor a "
                                   "module name")
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError) as exc:
            raise ModelSourceError(f"{reference!r}: no importable module {target!r} ({exc}; is "
                                   "its package installed, or on PYTHONPATH?)") from None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ModelSourceError(f"{reference!r}: no importable module {target!r} (is its "
                                   "package installed, or on PYTHONPATH?)")
        return ModelSource(reference, file=Path(spec.origin), module=target, function=function)
    if reference.endswith(SAVED_SUFFIXES):
        path = _user_path(reference, base_dir)
        if not path.is_file():
            raise ModelSourceError(f"{reference!r}: no file {path} (paths are relative to the "
                                   "params file's directory)")
        return ModelSource(reference, file=path)
    raise ModelSourceError(
        f"unknown model {reference!r}; choose from {list(BUILTIN_MODELS)}, a function "
        "('models/kws.py:build' or 'mypkg.models:build') or a saved Keras model "
        f"({' or '.join(SAVED_SUFFIXES)})")


def _user_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path
