import json

import pytest
from PIL import Image

from pipeline.stages import curves

HISTORY = {"loss": [1.2, 0.5, 0.3], "accuracy": [0.6, 0.85, 0.9],
           "val_loss": [0.6, 0.4, 0.35], "val_accuracy": [0.82, 0.88, 0.9]}


def write_inputs(tmp_path, history=HISTORY, keras_accuracy=0.87):
    history_path = tmp_path / "history.json"
    history_path.write_text(json.dumps({"model": "mlp", "history": history}))
    accuracy_path = tmp_path / "accuracy.json"
    accuracy_path.write_text(json.dumps({"variants": [
        {"name": "keras", "accuracy": keras_accuracy}, {"name": "int8", "accuracy": 0.5}]}))
    return history_path, accuracy_path


def test_training_png_is_drawn_from_history_and_test_accuracy(tmp_path, capsys):
    history_path, accuracy_path = write_inputs(tmp_path)
    out = tmp_path / "reports" / "training.png"
    curves.run("b", history_path, accuracy_path, out)
    assert capsys.readouterr().out.strip() == f"{out}: 3 epoch(s), test accuracy 87.00 %"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1000, 400)
        drawn = png.convert("L").getextrema()
    assert drawn[0] < 100  # not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["training.png"]  # no partials


def test_the_chart_shows_the_data(tmp_path):
    # Different histories draw different pictures: the PNG depends on the numbers.
    first = tmp_path / "a.png"
    second = tmp_path / "b.png"
    curves.run("b", *write_inputs(tmp_path), first)
    curves.run("b", *write_inputs(tmp_path, keras_accuracy=0.7), second)
    assert first.read_bytes() != second.read_bytes()


def test_keras_test_accuracy_reads_the_keras_row():
    assert curves.keras_test_accuracy({"variants": [{"name": "float32", "accuracy": 0.1},
                                                    {"name": "keras", "accuracy": 0.9}]}) == 0.9
    with pytest.raises(StopIteration):
        curves.keras_test_accuracy({"variants": []})
