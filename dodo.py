"""The TFLite pipeline's build graph: download, preprocess, train, convert, evaluate, bench.

Run `doit` for the whole build, `doit list` for the tasks. Environment:
PIPELINE_PARAMS (params file, default params.toml), PIPELINE_ARTIFACTS (artifact tree and
doit's database, default artifacts/), PIPELINE_MIRROR (dataset mirror tried first),
PIPELINE_OFFLINE=1 (never try the public mirrors),
PIPELINE_BOARDS (board inventory, default board/boards.toml).

This file only declares tasks. Stage modules import TensorFlow inside their functions, so
loading this file (every `doit` call, including no-op runs) stays fast.
"""

import os
from pathlib import Path

# TensorFlow's logger (absl) binds sys.stderr when first imported. Importing it here (13 ms,
# no TensorFlow) binds the real stream; otherwise it binds doit's capture object, which
# cannot be closed, and every build ends with a traceback at exit.
import absl.logging  # noqa: F401
from doit.exceptions import TaskFailed
from doit.tools import config_changed

from pipeline import PipelineError
from pipeline.datasets import DATASETS
from pipeline.boards import load_boards
from pipeline.params import ParamsError, load_params, section_dict

PARAMS_PATH = Path(os.environ.get("PIPELINE_PARAMS", "params.toml"))
ARTIFACTS = Path(os.environ.get("PIPELINE_ARTIFACTS", "artifacts"))
MIRROR = os.environ.get("PIPELINE_MIRROR") or None
OFFLINE = os.environ.get("PIPELINE_OFFLINE") == "1"
BOARDS_PATH = Path(os.environ.get("PIPELINE_BOARDS", "board/boards.toml"))

try:
    PARAMS = load_params(PARAMS_PATH)
except ParamsError as exc:
    raise SystemExit(f"error: bad params: {exc}") from None
try:
    BOARDS = load_boards(BOARDS_PATH)
except ParamsError as exc:
    raise SystemExit(f"error: bad board inventory: {exc}") from None
_missing = set(PARAMS.bench.default_boards) - {board.name for board in BOARDS}
if _missing:
    raise SystemExit(f"error: bad params: bench.default_boards names {sorted(_missing)}, "
                     f"which {BOARDS_PATH} does not declare")

STAGES = Path("pipeline")
RUNNER = Path("board") / "runner.py"  # relative, like STAGES: a moved checkout is not a change
DOIT_CONFIG = {
    "dep_file": str(ARTIFACTS / ".doit.db"),
    "backend": "json",
    "verbosity": 2,
    "default_tasks": ["download", "preprocess", "train", "convert", "evaluate", "peak",
                      *(f"bench:{board}" for board in PARAMS.bench.default_boards)],
}


def raw_dir(dataset):
    return ARTIFACTS / "data" / dataset / "raw"


def dataset_npz(dataset):
    return ARTIFACTS / "data" / dataset / f"{dataset}.npz"


def model_dir(build):
    return ARTIFACTS / "models" / build


def keras_model(build):
    return model_dir(build) / f"{build}.h5"


def tflite_models(build):
    from pipeline.convert import variant_names, variant_path

    return {v: variant_path(model_dir(build), build, v) for v in variant_names(PARAMS.convert)}


def _guarded(fn, *args):
    """Run a stage; a PipelineError fails the task with its message instead of a traceback."""
    try:
        fn(*args)
    except PipelineError as exc:
        return TaskFailed(str(exc))
    return None


def task_download():
    """Fetch and verify each dataset's IDX archives (PIPELINE_MIRROR first, then public mirrors)."""
    from pipeline import download

    for name in PARAMS.datasets:
        spec = DATASETS[name]
        yield {
            "name": name,
            "actions": [(_guarded, [download.download_dataset, spec, raw_dir(name),
                                    download.mirrors_for(spec, MIRROR, OFFLINE),
                                    PARAMS.download.timeout_s, download.terminal_progress()])],
            "file_dep": [STAGES / "download.py"],
            "targets": [raw_dir(name) / f.name for f in spec.files],
            "uptodate": [config_changed(section_dict(spec))],
            "clean": True,
        }


def task_preprocess():
    """Validate the IDX files and pack each dataset into one uint8 .npz."""
    from pipeline import preprocess

    for name in PARAMS.datasets:
        spec = DATASETS[name]
        yield {
            "name": name,
            "actions": [(_guarded, [lambda s=spec, n=name: preprocess.save_arrays(
                dataset_npz(n), preprocess.preprocess(s, raw_dir(n)))])],
            "file_dep": [STAGES / "preprocess.py", *(raw_dir(name) / f.name for f in spec.files)],
            "targets": [dataset_npz(name)],
            "clean": True,
        }


def task_train():
    """Train each build's Keras model (seeded, deterministic) and save it as .h5."""
    from pipeline import train

    for build in PARAMS.builds:
        yield {
            "name": build.name,
            "actions": [(_guarded, [train.run, build.model, dataset_npz(build.dataset),
                                    PARAMS.train, keras_model(build.name),
                                    model_dir(build.name) / "history.json"])],
            "file_dep": [STAGES / "train.py", dataset_npz(build.dataset)],
            "targets": [keras_model(build.name), model_dir(build.name) / "history.json"],
            "uptodate": [config_changed({"model": build.model, **section_dict(PARAMS.train)})],
            "clean": True,
        }


def task_convert():
    """Convert each saved .h5 to float32 and full-integer int8 .tflite (plus extra variants)."""
    from pipeline import convert

    for build in PARAMS.builds:
        yield {
            "name": build.name,
            "actions": [(_guarded, [convert.run, keras_model(build.name),
                                    dataset_npz(build.dataset), PARAMS.convert, build.name,
                                    model_dir(build.name)])],
            "file_dep": [STAGES / "convert.py", keras_model(build.name),
                         dataset_npz(build.dataset)],
            "targets": list(tflite_models(build.name).values()),
            "uptodate": [config_changed(section_dict(PARAMS.convert))],
            "clean": True,
        }


def task_evaluate():
    """Score Keras and every .tflite variant on the full test set; gate on int8 drift."""
    from pipeline import evaluate

    for build in PARAMS.builds:
        report_dir = ARTIFACTS / "reports" / build.name
        models = tflite_models(build.name)
        yield {
            "name": build.name,
            "actions": [(_guarded, [evaluate.run, build.name, build.dataset,
                                    DATASETS[build.dataset].class_names, keras_model(build.name),
                                    models, dataset_npz(build.dataset),
                                    PARAMS.evaluate.batch_size, PARAMS.evaluate.max_drift_pt,
                                    report_dir])],
            "file_dep": [STAGES / "evaluate.py", RUNNER, keras_model(build.name),
                         dataset_npz(build.dataset), *models.values()],
            "targets": [report_dir / "accuracy.json", report_dir / "accuracy.md"],
            "uptodate": [config_changed(section_dict(PARAMS.evaluate))],
            "clean": True,
        }


def peak_models():
    from pipeline.convert import variant_names
    from pipeline.floor import PEAK_VARIANTS, peak_path

    return {v: peak_path(ARTIFACTS / "peak", v) for v in variant_names(PARAMS.convert)
            if v in PEAK_VARIANTS}


def task_peak():
    """Build the synthetic GEMM models with which each board measures its peak MAC rate."""
    from pipeline import floor

    return {
        "actions": [(_guarded, [floor.build_peak_models, list(peak_models()), ARTIFACTS / "peak"])],
        "file_dep": [STAGES / "floor.py", STAGES / "convert.py"],
        "targets": list(peak_models().values()),
        "uptodate": [config_changed({"variants": list(peak_models())})],
        "clean": True,
    }


def task_bench():
    """Time every .tflite variant on each board (bench:local runs by default; see boards.toml)."""
    from pipeline import bench
    from pipeline.boards import measured_within

    models = {f"{b.name}/{v}": p for b in PARAMS.builds for v, p in tflite_models(b.name).items()}
    datasets = {b.name: dataset_npz(b.dataset) for b in PARAMS.builds}
    reports = ARTIFACTS / "reports"
    for board in BOARDS:
        result = reports / "latency" / f"{board.name}.json"
        yield {
            "name": board.name,
            "actions": [(_guarded, [bench.run, board, models, datasets,
                                    PARAMS.bench.correctness_samples, ARTIFACTS / "bench",
                                    reports, BOARDS, peak_models(),
                                    PARAMS.bench.max_age_hours])],
            "file_dep": [STAGES / "bench.py", STAGES / "report.py", STAGES / "floor.py",
                         STAGES / "boards.py", RUNNER, *models.values(),
                         *peak_models().values(), *set(datasets.values())],
            "targets": [result],
            # Out of date when the board's last figures are older than max_age_hours, so a
            # board that died since it was last timed is noticed.
            "uptodate": [config_changed({**board.settings(), **section_dict(PARAMS.bench)}),
                         (measured_within, [result, PARAMS.bench.max_age_hours])],
            "clean": [(_remove, [[reports / "latency" / f"{board.name}.json",
                                  *(reports / f"latency.{ext}" for ext in ("json", "md", "png"))
                                  ]])],
        }


def _remove(paths):
    for path in paths:
        Path(path).unlink(missing_ok=True)
