import gzip

import numpy as np
import pytest

from pipeline.core.datasets import MNIST
from pipeline.stages.preprocess import (IdxError, load_arrays, parse_idx, preprocess, read_idx_gz,
                                 save_arrays)
from tests.conftest import idx_bytes, write_idx_gz


def test_parse_round_trip():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(images), 3, "x"), images)


@pytest.mark.parametrize("raw, message", [
    (b"\0\0", "too short for an IDX header"),
    (b"\x1f\x8b\x08\x03" + b"\0" * 12, "wrong magic number 0x1f8b0803, expected 0x00000803"),
    (b"\0\0\x08\x01" + (5).to_bytes(4, "big") + b"\0" * 5, "wrong magic number 0x00000801"),
    (b"\0\0\x08\x03" + b"\0\0\0\x02", "header truncated"),
    (idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "file holds 17"),
])
def test_bad_idx_is_named(raw, message):
    with pytest.raises(IdxError) as err:
        parse_idx(raw, 3, "images.gz")
    assert "images.gz" in str(err.value) and message in str(err.value)


def _dataset(directory, n_train=20, n_test=10, labels=None, n_labels=None):
    rng = np.random.default_rng(0)
    write_idx_gz(directory / "train-images-idx3-ubyte.gz",
                 rng.integers(0, 256, (n_train, 28, 28)))
    write_idx_gz(directory / "train-labels-idx1-ubyte.gz",
                 labels if labels is not None else rng.integers(0, 10, n_labels or n_train))
    write_idx_gz(directory / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx_gz(directory / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_preprocess_and_npz_round_trip(tmp_path):
    _dataset(tmp_path)
    arrays = preprocess(MNIST, tmp_path)
    assert arrays["x_train"].shape == (20, 28, 28) and arrays["x_train"].dtype == np.uint8
    save_arrays(tmp_path / "out" / "d.npz", arrays)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d.npz"]
    loaded = load_arrays(tmp_path / "out" / "d.npz")
    assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays)


def test_count_mismatch(tmp_path):
    _dataset(tmp_path, n_labels=19)
    with pytest.raises(IdxError, match="has 20 images but .*train-labels.* has 19 labels"):
        preprocess(MNIST, tmp_path)


def test_label_out_of_range(tmp_path):
    labels = np.zeros(20, np.uint8)
    labels[7] = 12
    _dataset(tmp_path, labels=labels)
    with pytest.raises(IdxError, match=r"label 12 at index 7 is outside 0..9"):
        preprocess(MNIST, tmp_path)


def test_idx_with_one_trailing_byte_is_refused():
    # The boundary of the size check: one byte more than the header declares.
    raw = idx_bytes(np.zeros((2, 3, 3), np.uint8)) + b"\0"
    with pytest.raises(IdxError, match=r"images.gz: header says \(2, 3, 3\) = 18 bytes of data, "
                                       r"file holds 19"):
        parse_idx(raw, 3, "images.gz")


def test_a_label_equal_to_the_class_count_is_refused_and_one_below_accepted(tmp_path):
    labels = np.full(20, 9, np.uint8)  # 9 = the last of 10 classes: accepted
    _dataset(tmp_path, labels=labels)
    assert preprocess(MNIST, tmp_path)["y_train"].max() == 9
    labels[4] = 10  # == len(class_names): outside
    _dataset(tmp_path, labels=labels)
    with pytest.raises(IdxError, match=r"label 10 at index 4 is outside 0..9"):
        preprocess(MNIST, tmp_path)


def test_corrupt_gzip_is_named(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(1000))[:500])
    with pytest.raises(IdxError, match=f"{path}: cannot decompress"):
        read_idx_gz(path, 3)


def test_real_mnist_matches_its_published_facts(mnist_dir):
    arrays = preprocess(MNIST, mnist_dir)
    assert arrays["x_train"].shape == (60000, 28, 28)
    assert arrays["x_test"].shape == (10000, 28, 28)
    assert list(arrays["y_train"][:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(arrays["y_test"][:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert arrays["x_train"].mean() / 255 == pytest.approx(0.1306604762738429, abs=1e-9)


def test_user_npz_dataset_is_validated_like_idx(tmp_path):
    from pipeline.core.declared import DatasetDecl
    from pipeline.stages.preprocess import IdxError, preprocess

    spec = DatasetDecl("bars", "npz", ("bars.npz",), ("0" * 64,), ("a", "b", "c"),
                       "object").spec(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    good = {"x_train": rng.integers(0, 255, (20, 8, 6, 1), dtype=np.uint8),
            "y_train": np.arange(20) % 3, "x_test": rng.integers(0, 255, (5, 8, 6), np.uint8),
            "y_test": np.array([0, 1, 2, 2, 1])}
    np.savez(raw / "bars.npz", **good)
    arrays = preprocess(spec, raw)
    assert arrays["x_train"].shape == (20, 8, 6) and arrays["x_train"].dtype == np.uint8
    assert np.array_equal(arrays["x_train"], good["x_train"][..., 0])
    assert np.array_equal(arrays["y_test"], good["y_test"])
    for change, message in [
        ({"y_test": np.array([0, 1, 2, 3, 1])}, "y_test: label 3 at index 3 is outside 0..2"),
        ({"x_train": good["x_train"].astype(np.float32)}, "x_train is float32"),
        ({"y_train": np.arange(19) % 3}, "x_train has 20 images but y_train has 19 labels"),
        ({"x_test": rng.integers(0, 255, (5, 8, 7), np.uint8)}, "train images are"),
        ({"x_test": rng.integers(0, 255, (0, 8, 6), np.uint8), "y_test": np.array([], int)},
         "x_test holds no images"),
    ]:
        np.savez(raw / "bars.npz", **{**good, **change})
        with pytest.raises(IdxError, match=message):
            preprocess(spec, raw)
    np.savez(raw / "bars.npz", x=good["x_train"], y=good["y_train"])
    with pytest.raises(IdxError, match=r"no array x_train, y_train, x_test, y_test \(it has"):
        preprocess(spec, raw)
