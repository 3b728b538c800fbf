"""Train stage: build the Keras model for a build, train it deterministically, save `.h5`.

Models take raw uint8 pixels (as float) of shape (H, W, 1), e.g. (28, 28, 1), and rescale by
1/255 inside, so every later variant (float32, int8, on the board) is fed the same bytes.
A build's model is a built-in (`cnn`, `mlp`), the user's own function, or a saved Keras
model (pipeline/core/models.py says how each is named); whichever it is, it is checked against
the dataset (input shape, class count), the build's parameter limit and what the later
stages can reload (built-in Keras layers only) before any training.
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
from pipeline.core.console import native_output_hidden, quiet_third_party, verbose_requested
from pipeline.core.files import outputs_together, write_bytes, write_json
from pipeline.core.layout import HISTORY_JSON
from pipeline.core.models import ModelSource, resolve
from pipeline.core.params import DEFAULT_MAX_PARAMETERS, TrainParams, load_params, section_dict
from pipeline.stages.preprocess import load_arrays


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


def make_model(source: ModelSource, input_shape: tuple[int, ...], num_classes: int,
               max_parameters: int = DEFAULT_MAX_PARAMETERS) -> tuple[Any, bool]:
    """The build's model before training, checked (`check_model`), and whether its layer
    names are stable: a user's function is called twice, each time in a fresh Keras session
    (so Keras' default names restart from zero), and must name its layers the same both times,
    or the .h5 and .tflite bytes would depend on the process that built them."""
    import keras

    if source.kind == "builtin":
        model = build_model(source.builtin, input_shape, num_classes)
        return check_model(model, source, input_shape, num_classes, max_parameters), True
    if source.kind == "saved":
        try:
            with native_output_hidden():
                model = keras.models.load_model(source.file, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises anything from a bad file
            raise TrainError(f"{source.file}: Keras cannot load this model ({_one_line(exc)}); "
                             "save it with model.save('model.keras') using built-in layers "
                             "only") from None
        return check_model(model, source, input_shape, num_classes, max_parameters), True
    function = load_callable(source)
    shape = (*input_shape, 1)
    names = []
    for _ in range(2):
        keras.backend.clear_session()
        try:
            model = function(shape, num_classes)
        except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
            raise TrainError(f"{source.reference}: calling {source.function}({shape}, "
                             f"{num_classes}) failed: {_one_line(exc)}") from None
        check_model(model, source, input_shape, num_classes, max_parameters)
        names.append([w.path for w in model.weights])
    return model, names[0] == names[1]


def load_callable(source: ModelSource) -> Any:
    """The user's function a `<file.py>:<fn>` or `<module>:<fn>` reference names."""
    import importlib

    try:
        if source.module:
            module = importlib.import_module(source.module)
        else:
            spec = importlib.util.spec_from_file_location(
                f"pipeline_user_model_{Path(source.file).stem}", source.file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - importing the user's code may raise anything
        raise TrainError(f"{source.reference}: importing {source.module or source.file} "
                         f"failed: {_one_line(exc)}") from None
    function = getattr(module, source.function, None)
    if not callable(function):
        import inspect

        defined = sorted(name for name, value in vars(module).items()
                         if inspect.isfunction(value) and not name.startswith("_")
                         and value.__module__ == module.__name__)
        raise TrainError(f"{source.reference}: {source.module or source.file} has no function "
                         f"{source.function!r}" + (f" (it defines: {', '.join(defined)})"
                                                   if defined else ""))
    return function


def check_model(model: Any, source: ModelSource, input_shape: tuple[int, ...],
                num_classes: int, max_parameters: int) -> Any:
    """`model` if the later stages can use it for this dataset; else TrainError saying why."""
    import keras

    where = source.reference
    if not isinstance(model, keras.Model):
        raise TrainError(f"{where}: returned {type(model).__name__}, not a keras.Model "
                         "(return the model, uncompiled)")
    want = (*input_shape, 1)
    inputs = model.inputs or []
    if len(inputs) != 1:
        raise TrainError(f"{where}: the model has {len(inputs)} inputs; it needs one image "
                         f"input of shape {want}")
    got = tuple(inputs[0].shape[1:])
    if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
        raise TrainError(f"{where}: input shape {got} does not match the dataset's images "
                         f"{want} (height, width, one grey channel)")
    outputs = model.outputs or []
    out = tuple(outputs[0].shape[1:]) if len(outputs) == 1 else ()
    if out != (num_classes,):
        raise TrainError(f"{where}: output shape {out if outputs else 'none'} does not match "
                         f"the dataset's {num_classes} classes (one output of shape "
                         f"({num_classes},), softmax probabilities)")
    probs = np.asarray(model(np.zeros((2, *want), np.float32), training=False))
    if not (np.all(probs >= -1e-6) and np.allclose(probs.sum(axis=-1), 1.0, atol=1e-3)):
        raise TrainError(f"{where}: the outputs are not probabilities (they do not sum to 1): "
                         "end the model with a softmax (Dense(..., activation='softmax'))")
    foreign = sorted({f"{layer.name} ({type(layer).__module__}.{type(layer).__name__})"
                      for layer in _all_layers(model)
                      if not type(layer).__module__.startswith("keras.")})
    if foreign:
        raise TrainError(f"{where}: layer(s) {', '.join(foreign)} are not built-in Keras layers; "
                         "the later stages reload the .h5 without your code, so use built-in "
                         "layers only")
    count = int(model.count_params())
    if count > max_parameters:
        raise TrainError(f"{where}: {count:,} parameters, more than this build's limit "
                         f"max_parameters = {max_parameters:,}; shrink the model or raise "
                         "max_parameters in its [[builds]] entry")
    return model


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):  # a nested model
            layers.extend(_all_layers(layer))
    return layers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


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


def train_model(model_ref: str | ModelSource, arrays: dict[str, np.ndarray],
                params: TrainParams, verbose: int | str = "auto", log_dir: Path | None = None,
                fine_tune: bool = True, max_parameters: int = DEFAULT_MAX_PARAMETERS,
                num_classes: int | None = None) -> tuple[Any, dict[str, list[float]], bool]:
    """Train a fresh model on `arrays` (uint8 images); return it with its per-epoch history
    and whether its layer names are stable (see `make_model`).

    `model_ref`: a ModelSource, or a built-in name. A saved model is fine-tuned, or with
    `fine_tune=False` returned as it is (an empty history). `log_dir`: write TensorBoard logs
    there (the caller decides, from `params.tensorboard`). The callback only reads metrics,
    so the weights are the same with or without it. `num_classes`: the dataset's class count
    (default: the largest label + 1).
    """
    import keras
    import tensorflow as tf

    source = model_ref if isinstance(model_ref, ModelSource) else resolve(model_ref, Path("."))
    x, y = arrays["x_train"], arrays["y_train"]
    if num_classes is None:
        num_classes = int(max(y.max(), arrays["y_test"].max())) + 1
    model, stable = make_model(source, x.shape[1:], num_classes, max_parameters)
    if source.kind != "saved":
        # Made again in a fresh session after seeding: the seed fixes the initial weights,
        # and Keras' default names restart from zero whatever this process built before.
        keras.backend.clear_session()
    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    if source.kind == "builtin":
        model = build_model(source.builtin, x.shape[1:], num_classes)
    elif source.kind == "callable":
        model = load_callable(source)((*x.shape[1:], 1), num_classes)
    if source.kind == "saved" and not fine_tune:
        return model, {}, stable
    train_idx, val_idx = split_train_validation(len(x), params.validation_fraction,
                                                params.max_train_samples, params.seed)
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
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}, stable


def save_model(model: Any, path: Path) -> None:
    """The model as HDF5 (Keras's legacy .h5, what `model.save("x.h5")` writes), built in
    memory and written through pipeline.core.files.

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


def run(model_ref: str | ModelSource, data_path: Path, params: TrainParams, model_path: Path,
        history_path: Path, log_dir: Path | None = None, fine_tune: bool = True,
        max_parameters: int = DEFAULT_MAX_PARAMETERS,
        num_classes: int | None = None) -> dict[str, Any]:
    """The doit action: train, then write the history (with params and timing) and the `.h5`.

    `model_ref`, `fine_tune`, `max_parameters`, `num_classes`: as in `train_model`. With
    `params.tensorboard`, TensorBoard logs go to `log_dir` (emptied first, so the logs show
    this training only). A user's own function runs in a child process (`run_isolated`).
    """
    source = model_ref if isinstance(model_ref, ModelSource) else resolve(model_ref, Path("."))
    args = (source, data_path, params, model_path, history_path, log_dir, fine_tune,
            max_parameters, num_classes)
    return run_isolated(*args) if source.kind == "callable" else _run_here(*args)


def run_isolated(source: ModelSource, *args: Any) -> dict[str, Any]:
    """`_run_here(source, *args)` in a child process, because the user's code can end the
    process it runs in (`sys.exit`, `os._exit`): in doit's own process that would end the
    build with status 0, nothing built and every later task silently skipped. Here it fails
    this task with one line naming the user's file; a PipelineError keeps its message."""
    import multiprocessing

    # spawn, not fork: TensorFlow's threads may already run in this process.
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(send, source, args), daemon=True)
    child.start()
    send.close()
    try:
        kind, value = receive.recv()
    except EOFError:  # the child ended without a word: os._exit, a signal, a crash
        kind, value = "gone", None
    finally:
        child.join(60)  # it has answered (or is gone); bounded, then ended for sure
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if kind == "done":
        return value
    if kind == "error":
        raise TrainError(value)
    if kind == "raised":  # not the user's exit: an unexpected error, shown whole
        raise RuntimeError(f"training {source.reference} failed in its child process:\n{value}")
    how = (f"called sys.exit({value!r})" if kind == "exit"
           else f"ended its process (exit status {child.exitcode})")
    raise TrainError(f"{source.file}: importing it or calling {source.function}() {how} "
                     f"instead of returning a keras.Model; nothing was trained (a model file "
                     "must not exit the process)")


def _child_main(send: Any, source: ModelSource, args: tuple) -> None:
    """The child of `run_isolated`: one message, (kind, value), then exit."""
    import traceback

    quiet_third_party(verbose_requested(os.environ))
    try:
        message: tuple[str, Any] = ("done", _run_here(source, *args))
    except PipelineError as exc:
        message = ("error", str(exc))
    except SystemExit as exc:
        message = ("exit", exc.code)
    except KeyboardInterrupt:
        return  # Ctrl-C reached the whole process group: the parent reports it
    except BaseException:  # noqa: BLE001 - anything else is passed on whole
        message = ("raised", traceback.format_exc())
    send.send(message)
    send.close()


def _run_here(source: ModelSource, data_path: Path, params: TrainParams, model_path: Path,
              history_path: Path, log_dir: Path | None = None, fine_tune: bool = True,
              max_parameters: int = DEFAULT_MAX_PARAMETERS,
              num_classes: int | None = None) -> dict[str, Any]:
    """`run` in this process."""
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
    model, history, stable = train_model(source, arrays, params, verbose=verbose,
                                         log_dir=log_dir, fine_tune=fine_tune,
                                         max_parameters=max_parameters, num_classes=num_classes)
    seconds = time.perf_counter() - started
    record = {"model": source.reference, "parameters": int(model.count_params()),
              "train_seconds": seconds, "params": section_dict(params),
              "trained": bool(history), "layer_names_stable": stable, "history": history}
    with outputs_together():  # history.json never without its .h5
        write_json(history_path, record)
        save_model(model, model_path)
    if not stable:
        # Not an error: the model is fine, only its bytes are not reproducible.
        print(f"warning: {source.reference}: layer names differ between two calls in one "
              "process, so the .h5 and .tflite bytes depend on what the process built before; "
              "give every layer an explicit name= (docs/own-model-and-data.md)")
    done = (f"trained in {seconds:.1f} s" if history
            else f"converted as it is ({source.file}, fine_tune = false)")
    print(f"{model_path}: {record['parameters']:,} parameters, {done}"
          + (f"; TensorBoard logs in {log_dir}" if log_dir else ""))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="cnn, mlp, <file.py>:<function>, <module>:<function> "
                        "or a saved .keras/.h5 (paths relative to the current directory)")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("out", type=Path, help="model .h5 (history.json is written beside it)")
    parser.add_argument("--params", type=Path, default=Path("params.toml"))
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="TensorBoard logs (used when train.tensorboard = true; "
                             "default: logs/ beside the model)")
    args = parser.parse_args(argv)
    quiet_third_party(verbose_requested(os.environ))
    try:
        source = resolve(args.model, Path("."))
    except PipelineError as exc:
        sys.exit(f"error: {exc}")
    params = load_params(args.params, os.environ.get("PIPELINE_SET", ""))
    record = run(source, args.data, params.train, args.out,
                 args.out.with_name(HISTORY_JSON), args.log_dir or args.out.parent / "logs")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))


if __name__ == "__main__":
    main()
