"""Preprocess stage: parse and validate a dataset's files (IDX, or the user's own .npz),
write one compact `.npz` per dataset.

Pixels stay uint8: the 1/255 scaling is the model's first layer, so the int8 model's input
quantization maps straight onto camera bytes on the board.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline import PipelineError
from pipeline.core.datasets import DATASETS, DatasetSpec
from pipeline.core.files import atomic_path

IDX_UBYTE = 0x08


class IdxError(PipelineError):
    pass


def parse_idx(raw: bytes, ndim: int, source: str) -> np.ndarray:
    """Decode an unsigned-byte IDX buffer with `ndim` dimensions; `source` names it in errors."""
    if len(raw) < 4:
        raise IdxError(f"{source}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    magic = f"0x{int.from_bytes(raw[:4], 'big'):08x}"
    expected = f"0x{IDX_UBYTE << 8 | ndim:08x}"
    if zero != 0 or dtype != IDX_UBYTE or dims != ndim:
        raise IdxError(f"{source}: wrong magic number {magic}, expected {expected} "
                       f"(unsigned-byte IDX with {ndim} dimension(s))")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{source}: header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected_bytes = int(np.prod(shape))
    if len(raw) - header != expected_bytes:
        raise IdxError(f"{source}: header says {shape} = {expected_bytes:,} bytes of data, "
                       f"file holds {len(raw) - header:,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_gz(path: Path, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: cannot decompress ({exc})") from None
    return parse_idx(raw, ndim, str(path))


def load_split(images_path: Path, labels_path: Path,
               num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx_gz(images_path, 3)
    labels = read_idx_gz(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{images_path} has {images.shape[0]:,} images but {labels_path} "
                       f"has {labels.shape[0]:,} labels")
    if images.shape[0] == 0:
        raise IdxError(f"{images_path}: holds no images")
    if labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise IdxError(f"{labels_path}: label {labels[bad]} at index {bad} is outside "
                       f"0..{num_classes - 1}")
    return images, labels


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    """A user's .npz checked like the IDX files: x_* uint8 N x H x W (or N x H x W x 1),
    y_* integer labels in 0..num_classes-1, one label per image."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            found = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise IdxError(f"{path}: not a NumPy .npz without pickles ({exc})") from None
    missing = [key for key in NPZ_KEYS if key not in found]
    if missing:
        raise IdxError(f"{path}: no array {', '.join(missing)} (it has {sorted(found)}); save it "
                       "with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    arrays = {}
    for split in ("train", "test"):
        x, y = found[f"x_{split}"], found[f"y_{split}"]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.dtype != np.uint8 or x.ndim != 3:
            raise IdxError(f"{path}: x_{split} is {x.dtype} with shape {x.shape}; it must be "
                           "uint8 images N x H x W (one grey channel; x.astype(np.uint8))")
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise IdxError(f"{path}: y_{split} is {y.dtype} with shape {y.shape}; it must be "
                           "one integer label per image")
        if len(x) != len(y):
            raise IdxError(f"{path}: x_{split} has {len(x):,} images but y_{split} has "
                           f"{len(y):,} labels")
        if len(x) == 0:
            raise IdxError(f"{path}: x_{split} holds no images")
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            raise IdxError(f"{path}: y_{split}: label {y[bad[0]]} at index {bad[0]} is outside "
                           f"0..{num_classes - 1} (the dataset declares {num_classes} "
                           "class_names)")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype(np.uint8 if num_classes <= 256
                                                                 else np.int64)
    return arrays


def preprocess(spec: DatasetSpec, raw_dir: Path) -> dict[str, np.ndarray]:
    """Arrays x_train/y_train/x_test/y_test (uint8, images N x H x W) from the cached files."""
    raw_dir = Path(raw_dir)
    n = len(spec.class_names)
    if spec.format == "npz":
        arrays = read_npz(raw_dir / spec.archive.name, n)
        _same_image_shape(spec, arrays["x_train"], arrays["x_test"])
        return arrays
    x_train, y_train = load_split(raw_dir / spec.train_images.name,
                                  raw_dir / spec.train_labels.name, n)
    x_test, y_test = load_split(raw_dir / spec.test_images.name,
                                raw_dir / spec.test_labels.name, n)
    _same_image_shape(spec, x_train, x_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _same_image_shape(spec: DatasetSpec, x_train: np.ndarray, x_test: np.ndarray) -> None:
    if x_train.shape[1:] != x_test.shape[1:]:
        raise IdxError(f"{spec.name}: train images are {x_train.shape[1:]} "
                       f"but test images are {x_test.shape[1:]}")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def run(spec: DatasetSpec, raw_dir: Path, out_path: Path) -> None:
    """The doit action: validate the IDX files in `raw_dir` and write one .npz."""
    arrays = preprocess(spec, raw_dir)
    save_arrays(out_path, arrays)
    shape = "x".join(str(d) for d in arrays["x_train"].shape[1:])
    print(f"{out_path}: {len(arrays['x_train']):,} train and {len(arrays['x_test']):,} test "
          f"images, {shape} uint8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        run(DATASETS[args.dataset], args.raw_dir, args.out)
    except IdxError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
