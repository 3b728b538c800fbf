"""Realistic breaks of the model stages (analysis, layers, card, download, preprocess,
evaluate, runtimes' dequantization, predict, photo), for benchmarks/mutate.py:

    python benchmarks/mutate.py --cases benchmarks/mutations_stages.py

Each case names the fast tests of its module: those that need no smoke build and no trained
model (tests marked by the fixtures smoke_project / predict's `build` are left out, because each
mutant would rebuild the project: minutes per case on this host). A survival here is therefore
an upper bound for the module's whole test file.

Keep a case when its snippet changes: update the snippet, never drop a killed case.
"""

from pathlib import Path

_TREE = Path(__file__).resolve().parent.parent


def _present(*tests: str) -> tuple[str, ...]:
    """The selections that exist in this tree (so the same file measures a tree from before
    the value tests were added: a module left with none is not run at all, see --only)."""
    return tuple(t for t in tests if (_TREE / t.split("::")[0]).exists())


AN = _present("tests/test_analysis.py::test_confusion_matrix_counts_true_rows_predicted_columns",
      "tests/test_analysis.py::test_damage_is_int8_wrong_keras_right_and_fixes_the_reverse",
      "tests/test_analysis.py::test_by_true_class_caps_but_counts_all",
      "tests/test_analysis.py::test_grid_tiles_are_upscaled_and_long_names_fit",
      "tests/test_analysis_values.py")
LY = _present("tests/test_layers_values.py",)
CD = _present("tests/test_card_values.py",)
DL = ("tests/test_download.py",)
PP = ("tests/test_preprocess.py",)
EV = ("tests/test_evaluate.py",)
RT = ("tests/test_runtimes.py::test_probabilities_equal_litert_driven_by_hand",
      "tests/test_runtimes.py::test_an_int8_output_is_dequantized_with_its_zero_point",
      "tests/test_runtimes.py::test_io_contract_states_what_an_application_feeds")
PR = _present("tests/test_predict.py::test_doubts_at_their_thresholds",
      "tests/test_predict.py::test_photo_generator_shares_no_code_with_predict",
      "tests/test_predict_units.py")
PH = ("tests/test_photo.py",)

CASES = [
    # --- pipeline/analysis.py
    Case("pipeline/analysis.py", "        wrong = np.flatnonzero(preds[name] != labels)",
         "        wrong = np.flatnonzero(preds[KERAS] != labels)", AN,
         "misclassified grids built from Keras's errors for both models"),
    Case("pipeline/analysis.py", "np.add.at(counts, (labels, predictions), 1)",
         "np.add.at(counts, (predictions, labels), 1)", AN, "confusion matrix transposed"),
    Case("pipeline/analysis.py", "return np.flatnonzero(keras_ok & ~int8_ok), np.flatnonzero(~keras_ok & int8_ok)",
         "return np.flatnonzero(~int8_ok), np.flatnonzero(int8_ok & ~keras_ok)", AN,
         "damage = every int8 error"),
    Case("pipeline/analysis.py", "        out[c] = (mine[:max_per_class], len(mine))",
         "        out[c] = (mine[:max_per_class], len(mine[:max_per_class]))", AN,
         "class count capped like the tiles"),
    Case("pipeline/analysis.py", "KERAS: top(keras_probs[index]), reference_int8_variant(): top(int8_probs[index])}",
         "KERAS: top(keras_probs[index]), reference_int8_variant(): top(keras_probs[index])}",
         AN, "damage entry shows Keras's answer as int8's"),
    Case("pipeline/analysis.py",
         "hurt, helped = damage_and_fixes(labels, preds[KERAS], np.argmax(other_probs, axis=1))",
         "hurt, helped = damage_and_fixes(labels, preds[KERAS], preds[int8])", AN,
         "other int8 model's damage is the int8 .tflite's"),
    Case("pipeline/analysis.py", '"damage_shared_with_int8": int(len(np.intersect1d(hurt, damage)))}',
         '"damage_shared_with_int8": int(len(hurt))}', AN, "shared damage = all damage"),
    Case("pipeline/analysis.py", '"build": build, "test_samples": int(len(labels)), "class_names"',
         '"build": build, "test_samples": int(labels.max() + 1), "class_names"', AN,
         "confusion.json test_samples wrong"),
    # --- pipeline/layers.py
    Case("pipeline/layers.py", '"rmse_over_scale": math.sqrt(mse) / scale, "rmse": math.sqrt(mse),',
         '"rmse_over_scale": mse / scale, "rmse": math.sqrt(mse),', LY,
         "per-layer RMSE without the square root"),
    Case("pipeline/layers.py", '"rmse_over_scale": math.sqrt(mse) / scale, "rmse": math.sqrt(mse),',
         '"rmse_over_scale": math.sqrt(mse) / scale, "rmse": mse,', LY, "rmse column is the MSE"),
    Case("pipeline/layers.py", 'rows.sort(key=lambda row: row["rmse_over_scale"], reverse=True)',
         'rows.sort(key=lambda row: row["rmse"], reverse=True)', LY,
         "ranked by raw RMSE, not in steps"),
    Case("pipeline/layers.py", 'rows.sort(key=lambda row: row["rmse_over_scale"], reverse=True)',
         'rows.sort(key=lambda row: row["rmse_over_scale"])', LY, "best first"),
    Case("pipeline/layers.py", '"max_abs_error": float(r["max_abs_error"]), "scale": scale,',
         '"max_abs_error": float(r["mean_error"]), "scale": scale,', LY,
         "max abs error from the mean column"),
    Case("pipeline/layers.py", "debug_dataset=representative_dataset(debug_images))",
         "debug_dataset=representative_dataset(representative))", LY,
         "compared on the calibration images"),
    Case("pipeline/layers.py", 'return [{"rank": i + 1, **row} for i, row in enumerate(rows)]',
         'return [{"rank": i, **row} for i, row in enumerate(rows)]', LY, "ranks from 0"),
    # --- pipeline/card.py
    Case("pipeline/card.py", '"final": {k: v[-1] for k, v in history.get("history", {}).items() if v}}',
         '"final": {k: v[0] for k, v in history.get("history", {}).items() if v}}', CD,
         "final metrics from the first epoch"),
    Case("pipeline/card.py", "               else FRAMING.get(dataset, FRAMING[\"mnist\"]))",
         "               else FRAMING[\"mnist\"])", CD, "Fashion-MNIST framed like MNIST"),
    Case("pipeline/card.py", 'scores = {v["name"]: v["accuracy"] for v in accuracy["variants"]}',
         'scores = {v["name"]: v["agreement"] for v in accuracy["variants"]}', CD,
         "card accuracy is the agreement"),
    Case("pipeline/card.py", "    return [(info.min - tensor[\"zero_point\"]) * tensor[\"scale\"],",
         "    return [info.min * tensor[\"scale\"],", CD, "value range without the zero point"),
    Case("pipeline/card.py", "    lo, hi = PIXEL_RANGE[0] + zero_point, PIXEL_RANGE[1] + zero_point",
         "    lo, hi = PIXEL_RANGE[0] - zero_point, PIXEL_RANGE[1] - zero_point", CD,
         "formula range with the zero point's sign flipped"),
    Case("pipeline/card.py", '    sign = "+" if zero_point >= 0 else "-"', '    sign = "+"', CD,
         "negative zero point written as +"),
    Case("pipeline/card.py", '"bytes": Path(path).stat().st_size, "sha256": sha256_file(path),',
         '"bytes": Path(keras_path).stat().st_size, "sha256": sha256_file(path),', CD,
         "variant size from the Keras file"),
    # --- pipeline/download.py
    Case("pipeline/download.py", "    if payload_sha not in wanted:", "    if False:", DL,
         "decompressed content never checked"),
    Case("pipeline/download.py",
         "    if expected.archive_md5 is not None and archive_md5.hexdigest() == expected.archive_md5:",
         "    if expected.archive_md5 is not None:", DL, "any archive passes the MD5 check"),
    Case("pipeline/download.py", "                dest.unlink()\n", "                pass\n", DL,
         "bad cached file kept"),
    Case("pipeline/download.py", "                _fetch(mirror, remote, dest, timeout_s, progress, known)\n                break",
         "                _fetch(mirror, remote, dest, timeout_s, progress, known)\n                pass",
         DL, "every mirror fetched even after success"),
    Case("pipeline/download.py", 'if not str(exc).startswith(("HTTP 404", "No such file")):',
         "if False:", DL, "a mirror's real failure not logged"),
    Case("pipeline/download.py", "    for mirror in [*mirrors, *([remote.location] if remote.location else [])]:",
         "    for mirror in [*mirrors]:", DL, "declared location never tried"),
    # --- pipeline/preprocess.py
    Case("pipeline/preprocess.py", "    if len(raw) - header != expected_bytes:",
         "    if len(raw) - header < expected_bytes:", PP, "IDX with trailing bytes accepted"),
    Case("pipeline/preprocess.py", "    if labels.max() >= num_classes:",
         "    if labels.max() > num_classes:", PP, "label equal to the class count accepted"),
    Case("pipeline/preprocess.py", "    if x_train.shape[1:] != x_test.shape[1:]:",
         "    if x_train.shape[1:2] != x_test.shape[1:2]:", PP,
         "train/test shape mismatch accepted"),
    Case("pipeline/preprocess.py", "    if images.shape[0] != labels.shape[0]:",
         "    if images.shape[0] < labels.shape[0]:", PP, "more images than labels accepted"),
    Case("pipeline/preprocess.py", "        bad = np.flatnonzero((y < 0) | (y >= num_classes))",
         "        bad = np.flatnonzero((y < 0) | (y > num_classes))", PP,
         "npz label equal to the class count accepted"),
    Case("pipeline/preprocess.py", "    if zero != 0 or dtype != IDX_UBYTE or dims != ndim:",
         "    if zero != 0 or dtype != IDX_UBYTE:", PP, "IDX dimension count not checked"),
    Case("pipeline/preprocess.py", "        if len(x) == 0:\n", "        if False:\n", PP,
         "empty npz split accepted"),
    # --- pipeline/evaluate.py
    Case("pipeline/evaluate.py", 'if v["name"] in gated and -v["drift_pt"] > max_drift_pt:',
         'if v["name"] in gated and -v["drift_pt"] >= max_drift_pt:', EV,
         "drift gate at exactly its threshold"),
    Case("pipeline/evaluate.py", "        drift_pt=round(100 * (accuracy - reference_accuracy), 4),",
         "        drift_pt=round(100 * (reference_accuracy - accuracy), 4),", EV, "drift sign"),
    Case("pipeline/evaluate.py", "    agreement = float((predictions == reference).mean())",
         "    agreement = float((predictions == labels).mean())", EV, "agreement is accuracy"),
    Case("pipeline/evaluate.py", "    per_class = {class_names[c]: float(correct[labels == c].mean())",
         "    per_class = {class_names[c]: float(correct[predictions == c].mean())", EV,
         "per-class accuracy by predicted class"),
    Case("pipeline/evaluate.py", "    check_drift(report, max_drift_pt)\n    return report",
         "    return report", EV, "gate never applied"),
    Case("pipeline/evaluate.py", "        if v[\"name\"] in gated and", "        if v[\"name\"] == \"int8\" and",
         EV, "only int8 gated"),
    Case("pipeline/evaluate.py", '"test_samples": int(len(labels)),', '"test_samples": int(labels.size // 2),',
         EV, "test sample count wrong"),
    # --- pipeline/runtimes.py (dequantization, which predict/evaluate/analysis read through)
    Case("pipeline/runtimes.py", "        output = (output - zero_point) * scale",
         "        output = output * scale", RT, "dequantization without the output zero point"),
    Case("pipeline/runtimes.py", "        output = (output - zero_point) * scale",
         "        output = (output - zero_point) / scale", RT, "dequantization divides by scale"),
    # --- pipeline/predict.py
    Case("pipeline/predict.py", 'if "probability" in p and p["probability"] < MIN_PROBABILITY)',
         'if "probability" in p and p["probability"] <= MIN_PROBABILITY)', PR,
         "probability gate at its threshold"),
    Case("pipeline/predict.py", "    if limits is not None and not limits[0] <= ink <= limits[1]:",
         "    if limits is not None and not limits[0] < ink < limits[1]:", PR,
         "ink limits exclusive"),
    Case("pipeline/predict.py", "    per_image = test.reshape(len(test), -1).mean(axis=1) / 255.0",
         "    per_image = test.reshape(len(test), -1).mean(axis=1) / 256.0", PR,
         "ink limits over 256"),
    Case("pipeline/predict.py", "    return float(per_image.min()), float(per_image.max())",
         "    return float(per_image.mean()), float(per_image.max())", PR,
         "lower ink limit is the mean"),
    Case("pipeline/predict.py", '"same_as_host": label == host["class"]}',
         '"same_as_host": True}', PR, "board difference never detected"),
    Case("pipeline/predict.py", "        return EXIT_BOARD_DIFFERS\n", "        return EXIT_MISSING\n",
         PR, "board difference exit status"),
    Case("pipeline/predict.py", "    return EXIT_IMAGE_FAILED if any(\"error\" in r for r in results) else 0",
         "    return 0", PR, "failed image exits 0"),
    Case("pipeline/predict.py", '    return {"class": c, "name": class_names[c], "probability": round(float(probs[c]), 4)}',
         '    return {"class": c, "name": class_names[c], "probability": round(float(probs.max() - probs.min()), 4)}',
         PR, "top-1 probability is the margin"),
    # --- pipeline/photo.py
    Case("pipeline/photo.py", "                if width * height > limit:",
         "                if width * height >= limit:", PH, "pixel limit at the boundary refused"),
    Case("pipeline/photo.py", "    return pixels if card[\"input\"][\"polarity\"] == \"light_on_dark\" else 255 - pixels",
         "    return pixels", PH + PR, "dark-on-light card polarity ignored"),
    Case("pipeline/photo.py", "    return float(edges[int(np.argmax(between)) + 1])",
         "    return float(edges[int(np.argmax(between))])", PH, "Otsu threshold one bin low"),
    Case("pipeline/photo.py", "        cy, cx = (ys * patch).sum() / mass, (xs * patch).sum() / mass",
         "        cy, cx = (xs * patch).sum() / mass, (ys * patch).sum() / mass", PH,
         "centre of mass with its axes swapped"),
    Case("pipeline/photo.py", "                limit = MAX_JPEG_PIXELS if baseline_jpeg else MAX_PIXELS",
         "                limit = MAX_PIXELS", PH, "baseline JPEG limit not applied"),
    Case("pipeline/photo.py", "    scale = fit_box / max(h, w)", "    scale = fit_box / min(h, w)", PH,
         "fit box by the short side"),
]
