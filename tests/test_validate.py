"""validate.py: the runner's document against the plan, on hand-made documents whose every
expected outcome (good rows, problems, missing rows, a dropped pair) is written out by hand."""

import copy

import pytest

from pipeline import load_runner
from pipeline.bench.transport import BoardError
from pipeline.bench.validate import CASE_FIELDS, SAMPLE_FIELDS, check_document

PLAN = {"models": [{"file": "a.tflite"}, {"file": "b.onnx"}], "peak": [{"file": "p.tflite"}],
        "threads": [1, 2]}


def case(model: str, threads: int, sampled: bool = True, **extra) -> dict:
    """A good case as the runner writes it: every float field a float, counts ints."""
    row = {"model": model, "threads": threads, "init_ms": 1.5, "first_us": 10.0,
           "mean_us": 5.0, "std_us": 0.5, "min_us": 4.0, "max_us": 9.0, "p10_us": 4.5,
           "p50_us": 5.0, "p90_us": 6.0, "p99_us": 8.0, "runs": 10, "peak_rss_mb": 100.0,
           "model_rss_mb": 1.0, "cpus": [0, 1]}
    if sampled:
        row.update(samples=20, accuracy=0.9, agreement=1.0, disagreements=[])
    row.update(extra)
    return row


def document(results=None, peak=None) -> dict:
    return {"machine": {}, "runtimes": {},
            "results": results if results is not None else [
                case(f, t) for f in ("a.tflite", "b.onnx") for t in (1, 2)],
            "peak": peak if peak is not None else [case("p.tflite", t, sampled=False)
                                                  for t in (1, 2)]}


def test_a_complete_document_is_all_good_and_nothing_else():
    doc = document()
    good, peak, problems, missing = check_document(copy.deepcopy(doc), PLAN)
    assert good == doc["results"] and peak == doc["peak"]
    assert problems == [] and missing == []


def test_the_fields_a_case_must_carry_are_the_runners_figures():
    assert set(CASE_FIELDS) == {"init_ms", "first_us", "mean_us", "std_us", "min_us", "max_us",
                                "p10_us", "p50_us", "p90_us", "p99_us", "runs", "peak_rss_mb",
                                "model_rss_mb", "cpus"}
    assert CASE_FIELDS["runs"] is int and CASE_FIELDS["cpus"] is list
    assert SAMPLE_FIELDS == {"samples": int, "accuracy": float, "agreement": float,
                             "disagreements": list}


@pytest.mark.parametrize("field", sorted({**CASE_FIELDS, **SAMPLE_FIELDS}))
def test_each_field_missing_or_mistyped_fails_that_case_naming_it(field):
    kinds = {**CASE_FIELDS, **SAMPLE_FIELDS}
    wrong = {float: "5", int: 5.0, list: "0,1"}[kinds[field]]
    for broken in ("missing", "mistyped", "a bool"):
        rows = document()["results"]
        if broken == "missing":
            del rows[2][field]
        else:
            rows[2][field] = wrong if broken == "mistyped" else True
        good, _, problems, _ = check_document(document(rows), PLAN)
        assert problems == [f"b.onnx x1: missing or mistyped {field}"], broken
        assert [(r["model"], r["threads"]) for r in good] == [
            ("a.tflite", 1), ("a.tflite", 2), ("b.onnx", 2)]


def test_an_int_is_a_float_but_a_float_is_no_int():
    rows = document()["results"]
    rows[0]["p50_us"], rows[0]["accuracy"] = 5, 1  # whole numbers as JSON may write them
    good, _, problems, _ = check_document(document(rows), PLAN)
    assert problems == [] and len(good) == 4


def test_the_peak_needs_no_samples_but_every_timing_field():
    peak = [case("p.tflite", 1, sampled=False), case("p.tflite", 2, sampled=False)]
    del peak[1]["p50_us"]
    _, good_peak, problems, _ = check_document(document(peak=peak), PLAN)
    assert good_peak == [peak[0]] and problems == ["p.tflite x2: missing or mistyped p50_us"]


def test_extra_missing_and_twice_reported_cases_are_each_named():
    rows = document()["results"]
    extra = case("c.tflite", 1)
    twice = copy.deepcopy(rows[0])
    unknown_threads = case("a.tflite", 4)
    rows = [rows[0], twice, extra, unknown_threads, "not a case", rows[3]]
    good, _, problems, missing = check_document(document(rows), PLAN)
    assert good == [rows[0], rows[5]] and missing == []
    assert problems == ["a.tflite x1: reported twice", "c.tflite x1: not in the plan",
                        "a.tflite x4: not in the plan", "None xNone: not in the plan",
                        "a.tflite x2: missing from the runner's results",
                        "b.onnx x1: missing from the runner's results"]


def test_missing_peak_cases_are_named_and_a_peak_list_that_is_no_list_is_empty():
    doc = document(peak=[case("p.tflite", 2, sampled=False)])
    _, peak, problems, _ = check_document(doc, PLAN)
    assert len(peak) == 1 and problems == ["p.tflite x1: missing from the runner's results"]
    doc = document()
    doc["peak"] = {"p.tflite": 1}
    _, peak, problems, _ = check_document(doc, PLAN)
    assert peak == [] and problems == ["p.tflite x1: missing from the runner's results",
                                       "p.tflite x2: missing from the runner's results"]
    del doc["peak"]
    assert check_document(doc, PLAN)[2] == problems


def test_an_error_fails_its_case_and_no_runtime_sets_the_row_apart():
    mark = load_runner().NO_RUNTIME_MARK
    rows = document()["results"]
    rows[0] = {"model": "a.tflite", "threads": 1, "error": "boom\x1b[31m red"}
    rows[2] = {"model": "b.onnx", "threads": 1, "error": mark + "pip install onnxruntime"}
    peak = [case("p.tflite", 1, sampled=False), {"model": "p.tflite", "threads": 2,
                                                  "error": mark + "no tflite"}]
    good, good_peak, problems, missing = check_document(document(rows, peak), PLAN)
    assert [(r["model"], r["threads"]) for r in good] == [("a.tflite", 2), ("b.onnx", 2)]
    assert problems == ["a.tflite x1: boom red"]  # the escape sequence is removed
    assert missing == [{"model": "b.onnx", "threads": 1,
                        "error": mark + "pip install onnxruntime"}]
    assert good_peak == [peak[0]]  # a peak twin without a runtime: no floor, no problem


@pytest.mark.parametrize("pair", [
    {"candidate_us": [1.0, 2.0], "reference_us": []},
    {"candidate_us": [1.0, "2"], "reference_us": [1.0]},
    {"candidate_us": [1.0, True], "reference_us": [1.0]},
    {"candidate_us": [1.0]},
    {"reference_us": [1.0], "candidate_us": "1.0"},
    [1.0, 2.0],
])
def test_a_pair_without_numeric_round_medians_is_dropped_and_the_timing_kept(pair):
    rows = document()["results"]
    rows[1]["pair"] = pair
    good, _, problems, _ = check_document(document(rows), PLAN)
    assert problems == [] and len(good) == 4
    assert "pair" not in good[1]
    assert good[1]["pair_skipped"] == ("reference not compared: the runner's round medians "
                                       "are missing or not numbers")


def test_a_good_pair_stays_with_ints_and_floats():
    rows = document()["results"]
    rows[1]["pair"] = {"candidate_us": [1, 2.5], "reference_us": [3.0], "rounds": 2}
    good, _, _, _ = check_document(document(rows), PLAN)
    assert good[1]["pair"] == {"candidate_us": [1, 2.5], "reference_us": [3.0], "rounds": 2}
    assert "pair_skipped" not in good[1]


@pytest.mark.parametrize("doc, says", [
    ([], "the runner's document is a list, not an object"),
    ({"runtimes": {}, "results": []}, "the runner's document has no 'machine' dict"),
    ({"machine": {}, "results": []}, "the runner's document has no 'runtimes' dict"),
    ({"machine": {}, "runtimes": {}}, "the runner's document has no 'results' list"),
    ({"machine": [], "runtimes": {}, "results": []},
     "the runner's document has no 'machine' dict"),
    ({"machine": {}, "runtimes": {}, "results": {}},
     "the runner's document has no 'results' list"),
])
def test_a_document_without_its_shape_is_a_board_error(doc, says):
    with pytest.raises(BoardError) as exc:
        check_document(doc, PLAN)
    assert str(exc.value) == says


def test_every_bad_field_of_a_case_is_named_in_the_schemas_order():
    rows = document()["results"]
    del rows[0]["runs"]
    rows[0]["p50_us"], rows[0]["agreement"] = None, "1"
    _, _, problems, _ = check_document(document(rows), PLAN)
    assert problems == ["a.tflite x1: missing or mistyped p50_us, runs, agreement"]
