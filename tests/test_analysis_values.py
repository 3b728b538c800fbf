"""Error analysis run end to end on untrained models, every figure checked against a numpy
computation made here from the models' probabilities. The probabilities come from the
runtimes analysis reads (Keras predict, pipeline.core.runtimes: itself checked against LiteRT driven
by hand in tests/test_runtimes.py) with the same batch size: untrained models answer close to
uniform, and a one-step rounding difference between batched and one-image int8 invokes would
flip near-tied argmaxes. What is tested is analysis's own bookkeeping. No smoke build: seconds.

The "int8" model given to `run` is the MLP's while the Keras model is the CNN: two untrained
networks disagree on most images, so a list built from the wrong model's predictions differs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.analysis import CAPTION_H, TILE_SCALE, run
from tests.conftest import synthetic_images
from pipeline.stages.evaluate import keras_probabilities
from pipeline.core.runtimes import open_model

CLASSES = [f"c{i}" for i in range(10)]
MAX_PER_CLASS = 4
BATCH = 32


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    from pipeline.stages.convert import convert
    from pipeline.stages.train import build_model

    out = tmp_path_factory.mktemp("analysis_values")
    representative = synthetic_images(np.arange(50) % 10, 3)
    cnn, mlp = build_model("cnn", (28, 28), 10), build_model("mlp", (28, 28), 10)
    keras_path = out / "cnn.h5"
    cnn.save(keras_path)
    int8_path, other_path = out / "mlp_int8.tflite", out / "cnn_int8.tflite"
    int8_path.write_bytes(convert(mlp, "int8", representative))
    # The CNN's own int8 model: it agrees with Keras almost everywhere, the MLP almost nowhere.
    other_path.write_bytes(convert(cnn, "int8", representative))
    images = synthetic_images(np.arange(120) % 10, 5)
    keras_probs = keras_probabilities(keras_path, images, BATCH)
    # Labels: Keras is right on the first half, wrong on the second (label shifted by one),
    # so Keras has errors in several classes and a damage list exists.
    labels = np.argmax(keras_probs, axis=1).copy()
    labels[60:] = (labels[60:] + 1) % 10
    data = out / "d.npz"
    np.savez(data, x_train=images, y_train=labels.astype(np.uint8), x_test=images,
             y_test=labels.astype(np.uint8))
    report = out / "reports"
    report.mkdir()
    run("b", CLASSES, keras_path, int8_path, data, BATCH, MAX_PER_CLASS, report)
    # A second run with the roles swapped: the faithful CNN int8 as "int8" (little damage),
    # the MLP as the other int8 model (much damage), so the overlap is neither list.
    swapped = out / "swapped"
    swapped.mkdir()
    run("b", CLASSES, keras_path, other_path, data, BATCH, MAX_PER_CLASS, swapped,
        other_int8={"other": int8_path})
    ref = {"keras": keras_probs, "int8": open_model(int8_path).probabilities(images, BATCH),
           "other": open_model(other_path).probabilities(images, BATCH)}
    return report, labels, ref, swapped


def reference_confusion(labels, preds):
    m = np.zeros((10, 10), int)
    for t, p in zip(labels, preds):
        m[t, p] += 1
    return m.tolist()


def test_confusion_json_equals_a_direct_count(analysed):
    report, labels, ref, _ = analysed
    doc = json.loads((report / "confusion.json").read_text())
    assert doc["test_samples"] == len(labels) == 120
    for name in ("keras", "int8"):
        assert doc[name] == reference_confusion(labels, np.argmax(ref[name], axis=1)), name


def test_damage_entries_carry_each_models_own_answer(analysed):
    report, labels, ref, _ = analysed
    doc = json.loads((report / "int8_damage.json").read_text())
    k, q = np.argmax(ref["keras"], axis=1), np.argmax(ref["int8"], axis=1)
    damage = np.flatnonzero((k == labels) & (q != labels))
    fixes = np.flatnonzero((k != labels) & (q == labels))
    assert damage.size and [e["index"] for e in doc["damage"]] == damage.tolist()
    assert [e["index"] for e in doc["fixes"]] == fixes.tolist()
    for e in doc["damage"] + doc["fixes"]:
        i = e["index"]
        assert e["label"] == labels[i]
        assert e["keras"]["class"] == k[i] and e["int8"]["class"] == q[i]
        assert e["keras"]["probability"] == pytest.approx(ref["keras"][i, k[i]], abs=1e-4)
        assert e["int8"]["probability"] == pytest.approx(ref["int8"][i, q[i]], abs=1e-4)


def test_another_int8_models_damage_is_its_own_and_the_overlap_is_counted(analysed):
    _, labels, ref, swapped = analysed
    doc = json.loads((swapped / "int8_damage.json").read_text())
    k = np.argmax(ref["keras"], axis=1)
    q, o = np.argmax(ref["other"], axis=1), np.argmax(ref["int8"], axis=1)  # roles swapped
    damage = np.flatnonzero((k == labels) & (q != labels))
    hurt = np.flatnonzero((k == labels) & (o != labels))
    assert [e["index"] for e in doc["damage"]] == damage.tolist()
    shared = len(np.intersect1d(hurt, damage))
    assert shared != len(hurt) and hurt.size  # else this test could not tell them apart
    other = doc["others"]["other"]
    assert [e["index"] for e in other["damage"]] == hurt.tolist()
    assert [e["other"]["class"] for e in other["damage"]] == o[hurt].tolist()
    assert other["damage_shared_with_int8"] == shared
    assert other["accuracy"] == pytest.approx(float((o == labels).mean()))


def grid_rows(path) -> int:
    """Rows of tiles in a grid PNG, from its height (analysis.render_grid's layout)."""
    row_h = 28 * TILE_SCALE + CAPTION_H + 6
    return (Image.open(path).height - 40) // row_h


def test_each_misclassified_grid_shows_its_own_models_errors(analysed):
    report, labels, ref, _ = analysed
    rows = {}
    for name in ("keras", "int8"):
        wrong = np.argmax(ref[name], axis=1) != labels
        rows[name] = len(set(labels[wrong].tolist()))
        assert grid_rows(report / f"misclassified_{name}.png") == max(rows[name], 1), name
    assert rows["keras"] != rows["int8"]  # else this test could not tell them apart


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Each github table of `text` as its body rows of stripped cells (header and rule off)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current[2:])
            current = []
    return tables


def test_every_count_and_percentage_of_analysis_md_is_a_direct_count(analysed):
    """analysis.md's totals, accuracies, damage, fixes, the other model's overlap and both
    confusion tables, counted here from the models' probabilities (exact; percentages as
    printed to two decimals)."""
    report, labels, ref, swapped = analysed
    k, q, o = (np.argmax(ref[n], axis=1) for n in ("keras", "int8", "other"))
    for md, int8, other in ((report / "analysis.md", q, None),
                            (swapped / "analysis.md", o, q)):  # swapped: the CNN's int8
        text = md.read_text()
        damage = int(np.sum((k == labels) & (int8 != labels)))
        fixes = int(np.sum((k != labels) & (int8 == labels)))
        assert (f"{len(labels):,} test images. Keras {100 * np.mean(k == labels):.2f} %, "
                f"int8 {100 * np.mean(int8 == labels):.2f} %.") in text
        assert f"- **{damage}** image(s) int8 gets wrong that Keras gets right" in text
        assert f"- **{fixes}** image(s) int8 gets right that Keras gets wrong" in text
        confusion = [[[c.strip("*") for c in row] for row in table]
                     for table in markdown_tables(text)]
        expected = [[[f"c{t}", *(str(v) if v else "·" for v in row)]
                     for t, row in enumerate(reference_confusion(labels, p))]
                    for p in (k, int8)]
        assert confusion == expected
        if other is not None:
            hurt = (k == labels) & (other != labels)
            shared = int(np.sum(hurt & (k == labels) & (int8 != labels)))
            helped = int(np.sum((k != labels) & (other == labels)))
            assert f"Its own int8 quantization: {100 * np.mean(other == labels):.2f} %." in text
            assert (f"- **{int(hurt.sum())}** image(s) other gets wrong that Keras gets right "
                    f"({shared} of them int8 gets wrong too): ") in text
            assert f"- **{helped}** image(s) other gets right that Keras gets wrong." in text
    assert np.mean(k == labels) == 0.5 and damage != fixes  # as the fixture made them
