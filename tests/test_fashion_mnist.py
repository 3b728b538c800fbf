"""Fashion-MNIST through every stage, on small IDX files this test writes.

Its real archives are not available offline; the download stage's registry entry is tested
in test_download.py (it refuses these look-alike files). Here the same stage functions the
doit tasks call run from preprocess to evaluate with dataset "fashion_mnist"."""

import dataclasses
import json

from pipeline.stages import analysis
from pipeline.stages import card
from pipeline.stages import convert
from pipeline.stages import evaluate
from pipeline.stages import train
from pipeline.core.datasets import FASHION_MNIST
from pipeline.core.params import load_params, parse_params
from pipeline.stages.preprocess import preprocess, save_arrays
from tests.conftest import REPO


def test_fashion_mnist_build_from_idx_to_drift_report(tiny_dataset_dir, tmp_path):
    doc = load_params(REPO / "params" / "smoke.toml")
    params = dataclasses.replace(
        doc, train=dataclasses.replace(doc.train, max_train_samples=0, epochs=4, batch_size=32),
        convert=dataclasses.replace(doc.convert, representative_samples=50, int8_io="uint8"))
    data = tmp_path / "data" / "fashion_mnist.npz"
    save_arrays(data, preprocess(FASHION_MNIST, tiny_dataset_dir))
    models = tmp_path / "models"
    train.run("cnn", data, params.train, models / "fashion_cnn.h5", models / "history.json")
    sizes = convert.run(models / "fashion_cnn.h5", data, params.convert, "fashion_cnn", models)
    variants = {v: convert.variant_path(models, "fashion_cnn", v) for v in sizes}
    report = evaluate.run("fashion_cnn", "fashion_mnist", FASHION_MNIST.class_names,
                          models / "fashion_cnn.h5", variants, data, 100, 5.0,
                          tmp_path / "reports")
    assert report["dataset"] == "fashion_mnist" and report["test_samples"] == 200
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["keras"]["accuracy"] > 0.9  # the synthetic classes are learnable
    assert by_name["float32"]["agreement"] == 1.0
    assert by_name["int8"]["agreement"] >= 0.95
    assert set(by_name["int8"]["per_class_accuracy"]) == set(FASHION_MNIST.class_names)
    saved = json.loads((tmp_path / "reports" / "accuracy.json").read_text())
    assert saved == json.loads(json.dumps(report))

    # Error analysis and the model card speak Fashion-MNIST: its class names, its framing.
    analysis.run("fashion_cnn", FASHION_MNIST.class_names, models / "fashion_cnn.h5",
                 variants["int8"], data, 100, 4, tmp_path / "reports")
    confusion = json.loads((tmp_path / "reports" / "confusion.json").read_text())
    assert confusion["class_names"] == list(FASHION_MNIST.class_names)
    assert "Ankle boot" in (tmp_path / "reports" / "analysis.md").read_text()
    written = card.run("fashion_cnn", "fashion_mnist", FASHION_MNIST.class_names,
                       models / "fashion_cnn.h5", variants, tmp_path / "reports" / "accuracy.json",
                       models / "history.json", models)
    assert written["output"]["class_names"] == list(FASHION_MNIST.class_names)
    assert written["input"]["framing"]["fit_box"] == 28
    assert not written["input"]["framing"]["center_of_mass"]
    int8 = next(v for v in written["variants"] if v["name"] == "int8")
    assert int8["input"]["dtype"] == "uint8" and int8["input"]["zero_point"] == 0


def test_fashion_build_declares_its_own_download_and_preprocess_tasks(tmp_path):
    import tomllib

    from tests.conftest import copy_project, run_doit

    project = copy_project(tmp_path / "p")
    smoke = project / "params" / "smoke.toml"
    from tests.project import edit_params

    edit_params(smoke, builds=[{"name": "mnist_cnn", "dataset": "mnist", "model": "cnn"},
                               {"name": "fashion_cnn", "dataset": "fashion_mnist",
                                "model": "cnn"}])
    parse_params(tomllib.loads(smoke.read_text()))
    listing = run_doit(project, "list", "--all")
    names = {line.split()[0] for line in listing.stdout.splitlines()}
    assert {"download:fashion_mnist", "preprocess:fashion_mnist", "train:fashion_cnn",
            "convert:fashion_cnn", "evaluate:fashion_cnn", "analysis:fashion_cnn",
            "layers:fashion_cnn", "card:fashion_cnn"} <= names
