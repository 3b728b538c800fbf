"""TFLite build pipeline: MNIST-style IDX data -> Keras -> float32/int8 .tflite -> drift report.

Every stage module is importable without TensorFlow; TensorFlow is imported inside the
functions that need it, so `doit` can load the task graph in a fraction of a second.
"""


class PipelineError(Exception):
    """An error the user can act on; its message says what went wrong and how to fix it."""
