"""Train stage: build the Keras model for a build, train it deterministically, save `.h5`.

Models take raw uint8 pixels (as float) of shape (28, 28, 1) and rescale by 1/255 inside,
so every later variant (float32, int8, on the board) is fed the same bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import PipelineError
from pipeline.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.files import outputs_together, write_bytes, write_json
from pipeline.layout import HISTORY_JSON
from pipeline.params import TrainParams, load_params, section_dict
from pipeline.preprocess import load_arrays


class TrainError(PipelineError):
    pass


def build_model(kind: str, input_shape: tuple[int, int], num_classes: int) -> Any:
    """`cnn`: the SpacemiT K1 tutorial CNN (93,322 parameters on 28x28); `mlp`: a small MLP."""
    import keras
    from keras import layers

    # Every layer is named explicitly. Keras otherwise numbers default names from a
    # process-wide counter (conv2d, conv2d_3, ...); the names end up in the .h5 and in the
    # .tflite tensor names, so an artifact's bytes - and the per-layer report's tensor names
    # that build.float_layers refers to - would depend on what the same process built before.
    stack: list[Any] = [keras.Input((*input_shape, 1), name="image"),
                        layers.Rescaling(1 / 255, name="rescale")]
    if kind == "cnn":
        stack += [
            layers.Conv2D(32, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(64, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Conv2D(64, 3, activation="relu", name="conv3"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(num_classes, activation="softmax", name="classes"),
        ]
    elif kind == "mlp":
        stack += [
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dropout(0.2, name="dropout"),
            layers.Dense(num_classes, activation="softmax", name="classes"),
        ]
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return keras.Sequential(stack, name=kind)


def split_train_validation(n: int, validation_fraction: float, max_samples: int,
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded index split of the training images; `max_samples` (0 = all) caps the total."""
    order = np.random.default_rng(seed).permutation(n)
    if max_samples:
        order = order[:max_samples]
    n_val = max(1, int(round(len(order) * validation_fraction)))
    return order[n_val:], order[:n_val]


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x[..., np.newaxis], y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def train_model(kind: str, arrays: dict[str, np.ndarray], params: TrainParams,
                verbose: int | str = "auto",
                log_dir: Path | None = None) -> tuple[Any, dict[str, list[float]]]:
    """Train a fresh model on `arrays` (uint8 images); return it with its per-epoch history.

    `log_dir`: write TensorBoard logs there (the caller decides, from `params.tensorboard`).
    The callback only reads metrics, so the weights are the same with or without it.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    x, y = arrays["x_train"], arrays["y_train"]
    train_idx, val_idx = split_train_validation(len(x), params.validation_fraction,
                                                params.max_train_samples, params.seed)
    num_classes = int(max(y.max(), arrays["y_test"].max())) + 1
    model = build_model(kind, x.shape[1:], num_classes)
    steps = params.epochs * -(-len(train_idx) // params.batch_size)
    rate = (keras.optimizers.schedules.CosineDecay(params.learning_rate, steps)
            if params.lr_schedule == "cosine" else params.learning_rate)
    # A fixed optimizer name: the default is uniquified per process ("adam_1"), and the .h5
    # stores the optimizer's slots under it.
    model.compile(optimizer=keras.optimizers.Adam(rate, name="adam"),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = []
    if log_dir is not None:
        # Epoch scalars only: no graph trace, no profiler, no histograms (they cost time and
        # the profiler needs extra packages).
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(log_dir), histogram_freq=0, write_graph=False, profile_batch=0))
    history = model.fit(
        _dataset(x[train_idx], y[train_idx], params.batch_size, params.seed),
        validation_data=_dataset(x[val_idx], y[val_idx], params.batch_size, None),
        epochs=params.epochs,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=verbose,
        callbacks=callbacks,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def save_model(model: Any, path: Path) -> None:
    """The model as HDF5 (Keras's legacy .h5, what `model.save("x.h5")` writes), built in
    memory and written through pipeline.files.

    In memory because h5py cannot fail cleanly on a full disk: its file stays half open, and
    closing it at garbage collection prints tracebacks and can crash the process (seen:
    SIGSEGV at the end of `doit`). A plain write fails with one clear line instead.
    """
    import io

    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        legacy_h5_format.save_model_to_hdf5(model, h5)
    write_bytes(path, buffer.getvalue())


def load_model(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        if not Path(path).exists():
            raise
        # h5py: "Unable to synchronously open file (truncated file: eof = ...)".
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        task = f"train:{Path(path).stem}"
        raise TrainError(f"{path}: cannot be read as a Keras model ({first}; "
                         f"{Path(path).stat().st_size:,} bytes - truncated or overwritten?): "
                         f"rebuild it with `doit forget {task} && doit {task}`") from None


def run(kind: str, data_path: Path, params: TrainParams, model_path: Path,
        history_path: Path, log_dir: Path | None = None) -> dict[str, Any]:
    """The doit action: train, then write the history (with params and timing) and the `.h5`.

    With `params.tensorboard`, TensorBoard logs go to `log_dir` (emptied first, so the
    logs show this training only).
    """
    with native_output_hidden():  # TensorFlow's import-time notices (oneDNN, absl pre-init)
        import tensorflow  # noqa: F401
    arrays = load_arrays(data_path)
    if params.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            # Before training, not after it: tf.summary fails at the first epoch's end.
            raise TrainError("train.tensorboard = true needs the tensorboard package: "
                             "pip install tensorboard (or pip install -e '.[tensorboard]')")
        if log_dir is None:
            raise ValueError("train.tensorboard is on but no log directory was given")
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        log_dir = None
    # A progress bar on a terminal, one line per epoch in logs and CI.
    verbose: int | str = "auto" if sys.stdout.isatty() else 2
    started = time.perf_counter()
    model, history = train_model(kind, arrays, params, verbose=verbose, log_dir=log_dir)
    seconds = time.perf_counter() - started
    record = {"model": kind, "parameters": int(model.count_params()), "train_seconds": seconds,
              "params": section_dict(params), "history": history}
    with outputs_together():  # history.json never without its .h5
        write_json(history_path, record)
        save_model(model, model_path)
    print(f"{model_path}: {record['parameters']:,} parameters, trained in {seconds:.1f} s"
          + (f"; TensorBoard logs in {log_dir}" if log_dir else ""))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["cnn", "mlp"])
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("out", type=Path, help="model .h5 (history.json is written beside it)")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="TensorBoard logs (used when train.tensorboard = true; "
                             "default: logs/ beside the model)")
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    record = run(args.model, args.data, load_params(args.params).train, args.out,
                 args.out.with_name(HISTORY_JSON), args.log_dir or args.out.parent / "logs")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))


if __name__ == "__main__":
    main()
