"""What a build prints: the pipeline's own lines by default, third-party logs on request.

TensorFlow, Keras, absl and the TFLite converter print a hundred lines of notices per build
(oneDNN, SavedModel loader, "Saved artifact ... Captures", HDF5 "legacy", converter flags).
`quiet_third_party()` silences what can be silenced by setting (environment, loggers,
warning filters) and `native_output_hidden()` swallows what native code writes straight to
file descriptors 1 and 2 around the calls known to chatter. PIPELINE_VERBOSE=1 (read at
the edges, dodo.py and each main()) leaves all of it visible.

Imports neither numpy nor TensorFlow: dodo.py calls `quiet_third_party` on every load.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Iterator, Mapping, TextIO

# Set once by quiet_third_party(); native_output_hidden() does nothing while it is False.
_quiet = False

# Python warnings TensorFlow/Keras raise on every build that the pipeline cannot act on.
_KNOWN_WARNINGS = (
    # The representative dataset supplies the input statistics; TF warns on every int8 convert.
    ("Statistics for quantized inputs were expected", UserWarning),
    # Keras internals on NumPy 2.
    ("__array__ implementation doesn't accept a copy keyword", DeprecationWarning),
    # The pipeline saves .h5 on purpose (the K1 tutorial's format, one file per model).
    (".*HDF5 file via `model.save", UserWarning),
    (".*tf.lite.Interpreter is deprecated", UserWarning),
)


def verbose_requested(environ: Mapping[str, str]) -> bool:
    return environ.get("PIPELINE_VERBOSE", "") not in ("", "0")


def quiet_third_party(verbose: bool, absl: bool = True) -> None:
    """Silence TensorFlow/Keras/absl notices for this process (and its children) unless
    `verbose`. Call before TensorFlow is imported: its C++ logger reads the environment once.

    `absl=False` leaves absl's logger for `quiet_absl` to set up later (dodo.py: a no-op
    `doit` does not pay for importing it)."""
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    # 3: TensorFlow's C++ INFO/WARNING/ERROR notices (cpu_feature_guard, SavedModel loader,
    # MLIR passes) are not printed; errors still reach Python as exceptions. Notices logged
    # before absl is initialised (oneDNN at import) ignore it: native_output_hidden() does.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if absl:
        quiet_absl()


def quiet_absl(stream: TextIO | None = None) -> None:
    """Import absl's logger (TensorFlow's; 13 ms, no TensorFlow) with `stream` as sys.stderr,
    and unless verbose keep it to errors: it carries Keras's "HDF5 ... legacy" WARNING and
    TF's INFO lines.

    absl binds the sys.stderr it finds when first imported. Inside a doit action that is
    doit's capture object, which cannot be closed, and every build would end with a
    traceback at exit: dodo.py passes the real stderr.
    """
    import logging  # here: dodo.py imports this module on every `doit`, a no-op too

    saved = sys.stderr
    if stream is not None:
        sys.stderr = stream
    try:
        import absl.logging
    finally:
        sys.stderr = saved
    if _quiet:
        absl.logging.set_verbosity(absl.logging.ERROR)
    # Python's own root logger likewise: a library's module-level logging.warning()
    # (onnxruntime's quantizer: "consider to run pre-processing") would otherwise bind
    # doit's capture object for good and print "--- Logging error ---" in later tasks.
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(stream or sys.__stderr__)
        handler.setLevel(logging.ERROR if _quiet else logging.WARNING)
        root.addHandler(handler)


@contextlib.contextmanager
def native_output_hidden() -> Iterator[None]:
    """Hide what is written to stdout/stderr inside the block, by Python or by native code.

    The TFLite converter and interpreter print from C++ ("fully_quantize: 0, ...", "Created
    TensorFlow Lite XNNPACK delegate") where no logger setting reaches them, so the file
    descriptors themselves point at a temporary file for the block. If the block raises,
    what was hidden is written to stderr first: a failure keeps its explanation (Ctrl-C, not
    a failure, keeps it hidden).
    """
    if not _quiet:
        yield
        return
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        text_sink = open(sink.fileno(), "w", closefd=False, buffering=1)
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(text_sink), contextlib.redirect_stderr(text_sink):
                yield
        except KeyboardInterrupt:
            # Ctrl-C is not a failure of the block: what it hid (oneDNN, absl start-up
            # notices) explains nothing, and the build says "interrupted" in one line.
            raise
        except BaseException:
            text_sink.flush()
            _restore(saved)
            sink.seek(0)
            hidden = sink.read().decode(errors="replace")
            if hidden:
                sys.stderr.write(hidden)
                sys.stderr.flush()
            raise
        finally:
            text_sink.close()
            _restore(saved)


def _restore(saved: dict[int, int]) -> None:
    for fd, copy in list(saved.items()):
        os.dup2(copy, fd)
        os.close(copy)
        del saved[fd]
