"""predict's small functions without a trained build: ink limits against numpy, top-1 and
the board's answer, the "?" mark at its threshold, exit statuses in their order."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.predict import classify as predict


def test_ink_limits_are_the_least_and_most_inked_test_images(tmp_path):
    x_test = np.zeros((3, 4, 4), np.uint8)
    x_test[0, 0, 0] = 255                  # 1 of 16 pixels full ink: 1/16
    x_test[1] = 255                        # all ink: 1.0
    x_test[2, :2] = 128                    # half the pixels at 128: 0.5 * 128 / 255
    path = tmp_path / "d.npz"
    np.savez(path, x_test=x_test)
    per_image = [1 / 16, 1.0, 0.5 * 128 / 255]
    assert predict.ink_limits(path) == pytest.approx((min(per_image), max(per_image)), abs=1e-12)
    assert predict.ink_fraction(x_test[2]) == pytest.approx(0.5 * 128 / 255, abs=1e-12)
    assert predict.ink_limits(tmp_path / "missing.npz") is None


def test_top1_is_the_argmax_and_its_own_probability():
    probs = np.array([0.1, 0.05, 0.6, 0.25], np.float32)
    assert predict.top1(probs, list("abcd")) == {"class": 2, "name": "c", "probability": 0.6}


def test_board_answer_is_compared_with_this_hosts_class():
    host = {"class": 3, "name": "3", "probability": 0.99}
    names = [str(d) for d in range(10)]
    assert predict.board_prediction(host, (3, 0.98765), names) == {
        "class": 3, "name": "3", "probability": 0.9877, "same_as_host": True}
    assert predict.board_prediction(host, (5, 0.5), names)["same_as_host"] is False
    assert predict.board_prediction(host, (10, 0.5), names)["name"] == "class 10?"


def test_question_mark_below_the_probability_threshold_only():
    at = {"name": "7", "probability": predict.MIN_PROBABILITY}
    below = {"name": "7", "probability": predict.MIN_PROBABILITY - 1e-4}
    table = predict.render_table([{"image": "a.png", "predictions": {"int8": at}},
                                  {"image": "b.png", "predictions": {"int8": below}}], ["int8"])
    a, b = [line for line in table.splitlines() if line.startswith(("a.png", "b.png"))]
    assert "?" not in a and b.rstrip().endswith("?")


def test_exit_status_board_differs_before_board_failed_before_image_failed():
    col = predict.board_column("k1")
    ok = {"image": "a", "predictions": {"int8": {"class": 1}, col: {"same_as_host": True}}}
    differs = {"image": "b", "predictions": {"int8": {"class": 1, "name": "1",
                                                      "probability": 1.0},
                                             col: {"same_as_host": False, "name": "2",
                                                   "probability": 0.5}}}
    failed = {"image": "c", "predictions": {"int8": {"class": 1}, col: {"error": "down"}}}
    bad_image = {"image": "d", "error": "d: not an image"}
    assert predict.exit_status([ok]) == 0
    assert predict.exit_status([ok, bad_image]) == predict.EXIT_IMAGE_FAILED == 1
    assert predict.exit_status([ok, failed, bad_image], "k1") == predict.EXIT_MISSING == 2
    assert predict.exit_status([differs, failed, bad_image], "k1") == \
        predict.EXIT_BOARD_DIFFERS == 3
    assert predict.problems([differs, failed, bad_image], "k1") == [
        "d: not an image", "down",
        "b: board 'k1' answers 2 (50.0 %), this host's int8 1 (100.0 %)"]
