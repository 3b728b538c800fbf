"""The build graph's declarations: download, preprocess, train, convert, evaluate, analysis,
layers, card, bench, each a doit task creator.

dodo.py gets these creators through pipeline/graph/cache.py, which imports this module
only when the graph must be declared again (a file it read changed, or the environment)
or when a task runs; otherwise a no-op `doit` builds the same tasks from the cached graph.
The environment variables are listed in dodo.py.

Declaring never imports a stage module: actions name their stage function (`_stage`) and it
is imported when the task runs. Declaring pays for the pipeline's light core modules only
(params, boards, datasets, mirrors, variants, layout, codedeps, uptodate); without bytecode
(PYTHONDONTWRITEBYTECODE=1) each is compiled whenever the graph is declared, so what only
runs when a task runs or something is wrong lives elsewhere. absl is imported when a stage
first runs.
"""

import functools
import os
import shutil
import sys
from pathlib import Path

from pipeline import PipelineError, artifact_root
from pipeline.core.boards import load_boards
from pipeline.core.codedeps import CodeDeps
from pipeline.core.console import quiet_third_party, verbose_requested
from pipeline.core.formats import FORMATS
from pipeline.core.layout import Layout
from pipeline.core.mirrors import mirrors_for, unavailable_here, user_mirror
from pipeline.core.params import (
    OVERRIDE_ENV,
    ParamsError,
    load_params,
    resolved,
    section_dict,
    write_resolved,
)
from pipeline.core.uptodate import CodeAndSettings
from pipeline.core.variants import (
    ONNX_FLOAT32,
    ONNX_INT8,
    VARIANTS,
    other_int8_variants,
    reference_int8_variant,
    variant_names,
)

PARAMS_PATH = Path(os.environ.get("PIPELINE_PARAMS", "params.toml"))
OVERRIDES = os.environ.get(OVERRIDE_ENV, "")
LAYOUT = Layout(artifact_root(os.environ))
OFFLINE = os.environ.get("PIPELINE_OFFLINE") == "1"
BOARDS_PATH = Path(os.environ.get("PIPELINE_BOARDS", "board/boards.toml"))
# Before any stage imports TensorFlow: its C++ logger reads the environment once. absl's
# logger is set up when a stage first runs (_guarded): a no-op `doit` never imports it.
quiet_third_party(verbose_requested(os.environ), absl=False)

try:
    PARAMS = load_params(PARAMS_PATH, OVERRIDES)
except ParamsError as exc:
    raise SystemExit(f"error: bad params: {exc}") from None
# The built-in datasets and those the params file declares ([[datasets]]).
DATASETS = PARAMS.dataset_specs()
MIRRORS = {name: user_mirror(name, os.environ) for name in DATASETS}
try:
    BOARDS = load_boards(BOARDS_PATH)
except ParamsError as exc:
    raise SystemExit(f"error: bad board inventory: {exc}") from None
_missing = set(PARAMS.bench.default_boards) - {board.name for board in BOARDS}
if _missing:
    raise SystemExit(f"error: bad params: bench.default_boards names {sorted(_missing)}, "
                     f"which {BOARDS_PATH} does not declare")

# A dataset that is not cached and that no place has, as far as local directories tell (no
# network at load time: a URL mirror counts as available and its download task finds out):
# its builds leave the default tasks and the boards' benchmarks, so the other builds are
# still built and timed. `doit` still runs its download, which fails saying why, once.
MISSING = {}
for _name in PARAMS.datasets:
    _why = unavailable_here(DATASETS[_name], LAYOUT.raw_dir(_name),
                            mirrors_for(DATASETS[_name], MIRRORS[_name], OFFLINE))
    if _why:
        MISSING[_name] = _why
BLOCKED = {b.name: b.dataset for b in PARAMS.builds if b.dataset in MISSING}
# Each task's code: its action's module and every project module that one imports,
# transitively (pipeline/core/codedeps.py: an AST walk cached by mtime, relative paths so a
# moved checkout is not a change). Computed here, once per module, so the cache is written
# once per load. A task depends on these files' bytes through one check with its settings
# (_changed, pipeline/core/uptodate.py), not through one file_dep per file.
CODE_DEPS = CodeDeps(Path("."), LAYOUT.root / ".code-deps.json")
CODE = {task: CODE_DEPS.of(*(f"pipeline.{m}" for m in modules)) for task, modules in {
    "download": ["stages.download"], "params": ["core.params"],
    "preprocess": ["stages.preprocess"], "train": ["stages.train"],
    "convert": ["stages.convert"], "convert_onnx": ["stages.convert_onnx"],
    "evaluate": ["stages.evaluate"], "peak": ["bench.floor"], "curves": ["stages.curves"],
    "analysis": ["stages.analysis"], "layers": ["stages.layers", "stages.layers_onnx"],
    "card": ["stages.card"],
    "bench": ["bench.session", "bench.report"]}.items()}
CODE_HASHES = {task: CODE_DEPS.hashes(files) for task, files in CODE.items()}
CODE_DEPS.save()
# The task families that write some build's models (variants.py's producer): convert, and,
# with convert.onnx, convert_onnx and translate_onnx. Only these tasks exist.
PRODUCERS = list(dict.fromkeys(VARIANTS[v].producer for b in PARAMS.builds
                               for v in variant_names(PARAMS.convert, b.float_layers)))
# Loaded by path, not imported (so not in CODE); relative: a moved checkout is not a change.
RUNNER = Path("board") / "runner.py"


def _default_tasks():
    """What a plain `doit` runs: every stage of every build, minus the builds whose dataset
    no mirror has (their download still runs, to say why)."""
    stages = ["train", *PRODUCERS, "evaluate", "curves", "analysis", "layers", "card"]
    boards = [f"bench:{board}" for board in PARAMS.bench.default_boards]
    # Nothing to build without the missing data (a first run offline): the download runs
    # first, so the first thing said is that the dataset is missing and how to give one.
    if not BLOCKED or len(BLOCKED) == len(PARAMS.builds):
        return ["download", "params", "preprocess", *stages, "peak", *boards]
    # The missing downloads last: without --continue doit stops at the first failure.
    ready = [d for d in PARAMS.datasets if d not in MISSING]
    return [*(f"{stage}:{d}" for stage in ("download", "preprocess") for d in ready),
            *(f"{stage}:{b.name}" for stage in stages for b in PARAMS.builds
              if b.name not in BLOCKED), "params", "peak", *boards,
            *(f"download:{d}" for d in MISSING)]


DOIT_CONFIG = {
    "dep_file": str(LAYOUT.doit_db()),
    "backend": "json",
    "verbosity": 2,
    "default_tasks": _default_tasks(),
}

raw_dir, dataset_npz = LAYOUT.raw_dir, LAYOUT.dataset_npz
model_dir, keras_model = LAYOUT.model_dir, LAYOUT.keras_model


def variant_models(build, producer=None):
    """Variant -> model file of every variant the build ships (only `producer`'s, if given)."""
    names = variant_names(PARAMS.convert, PARAMS.build(build).float_layers, producer)
    return {v: LAYOUT.variant_path(build, v) for v in names}


class _stage:
    """The action function `pipeline.<module>.<function>`, imported when the task runs:
    stage modules import numpy (~0.2 s), which a no-op `doit` must not pay."""

    def __init__(self, name):
        self.module, self.function = name.rsplit(".", 1)

    def __call__(self, *args):
        import importlib

        return getattr(importlib.import_module(f"pipeline.{self.module}"), self.function)(*args)

    def __repr__(self):
        return f"pipeline.{self.module}.{self.function}"


def _guarded(fn, *args):
    """Run a stage: a PipelineError fails the task in one line, Ctrl-C ends the build in
    one line (pipeline/core/guard.py, imported when a task runs: a no-op `doit` does not
    compile it)."""
    from pipeline.core.guard import guarded

    return guarded(fn, *args)


def in_file_order(task_creator):
    """doit orders task creators by the line `inspect.getsourcelines` finds for each, and
    that tokenizes the creator's source (compiling tokenize's regular expressions first):
    ~5 ms of every no-op `doit`. getsourcelines follows `__wrapped__`, and for a module
    it returns line 0 without tokenizing: every creator gets line 0 and doit's stable sort
    keeps this file's order (the order its task_* names are bound in). Nothing else reads
    a creator's `__wrapped__` (doit calls inspect.signature on actions only)."""
    task_creator.__wrapped__ = sys.modules[__name__]
    return task_creator


@in_file_order
def task_download():
    """Fetch and verify each dataset's IDX archives (PIPELINE_MIRROR first, then public mirrors)."""
    for name in PARAMS.datasets:
        spec = DATASETS[name]
        yield {
            "name": name,
            "doc": f"fetch and verify the {name} archives",
            "actions": [(_guarded, [_stage("stages.download.download_with_progress"), spec,
                                    raw_dir(name),
                                    mirrors_for(spec, MIRRORS[name], OFFLINE),
                                    PARAMS.download.timeout_s, sys.stderr, print, DATASETS])],
            "targets": [raw_dir(name) / f.name for f in spec.files],
            "uptodate": [_changed("download", section_dict(spec))],
            "clean": True,
        }


@in_file_order
def task_params():
    """Save the resolved params (defaults, params file, PIPELINE_SET) to artifacts/params.json."""
    out = LAYOUT.resolved_params()
    made_with = resolved(PARAMS, PARAMS_PATH, OVERRIDES)
    return {
        "actions": [(_guarded, [write_resolved, out, PARAMS, PARAMS_PATH, OVERRIDES])],
        "targets": [out],
        "uptodate": [_changed("params", made_with)],
        "clean": True,
    }


@in_file_order
def task_preprocess():
    """Validate the IDX files and pack each dataset into one uint8 .npz."""
    for name in PARAMS.datasets:
        spec = DATASETS[name]
        yield {
            "name": name,
            "doc": f"pack {name} into {dataset_npz(name)}",
            "actions": [(_guarded, [_stage("stages.preprocess.run"), spec, raw_dir(name),
                                    dataset_npz(name)])],
            "file_dep": [raw_dir(name) / f.name for f in spec.files],
            "uptodate": [_changed("preprocess")],
            "targets": [dataset_npz(name)],
            "clean": True,
        }


@in_file_order
def task_train():
    """Train each build's Keras model (seeded, deterministic) and save it as .h5."""
    for build in PARAMS.builds:
        source = PARAMS.model_source(build.name)
        yield {
            "name": build.name,
            "doc": f"train the {build.model} on {build.dataset} -> {keras_model(build.name)}",
            "actions": [(_guarded, [_stage("stages.train.run"), source, dataset_npz(build.dataset),
                                    PARAMS.train, keras_model(build.name),
                                    LAYOUT.history_json(build.name),
                                    LAYOUT.logs_dir(build.name), build.fine_tune,
                                    build.max_parameters,
                                    len(DATASETS[build.dataset].class_names)])],
            # The user's model file (their .py, module or saved model): editing it retrains
            # this build and no other.
            "file_dep": [dataset_npz(build.dataset),
                         *([source.file] if source.file else [])],
            "targets": [keras_model(build.name), LAYOUT.history_json(build.name)],
            "uptodate": [_changed("train", {"model": build.model, "fine_tune": build.fine_tune,
                                            "max_parameters": build.max_parameters,
                                            **section_dict(PARAMS.train)})],
            "clean": True,
        }


@in_file_order
def task_convert():
    """Convert each saved .h5 to float32 and full-integer int8 .tflite (plus extra variants)."""
    for build in PARAMS.builds:
        # Every variant the build ships, whichever task makes it: convert also removes the
        # files of variants switched off, so it reruns when that list changes. Not the
        # other ONNX keys: they never change a .tflite.
        yield _models_from_h5(build, "convert", build.float_layers, {
            **_without(section_dict(PARAMS.convert), "onnx", "onnx_tflite_max_steps",
                       "onnx_calibration", "onnx_preprocess"),
            "float_layers": list(build.float_layers),
            "variants": list(variant_models(build.name))})


def _models_from_h5(build, producer, build_setting, settings):
    """The task of `producer` (convert, convert_onnx: its stage module's `run`) that makes
    the build's models of that producer from its .h5 and dataset (the calibration draw);
    `build_setting` is the build's own key the stage takes last."""
    models = variant_models(build.name, producer=producer)
    return {
        "name": build.name,
        "doc": f"{build.name}.h5 -> {', '.join(p.name for p in models.values())}",
        "actions": [(_guarded, [_stage(f"stages.{producer}.run"), keras_model(build.name),
                                dataset_npz(build.dataset), PARAMS.convert, build.name,
                                model_dir(build.name), build_setting])],
        "file_dep": [keras_model(build.name), dataset_npz(build.dataset)],
        "targets": list(models.values()),
        "uptodate": [_changed(producer, settings)],
        "clean": True,
    }


def _changed(family, settings=None):
    """Out of date when the task's settings or the bytes of its family's code change."""
    return CodeAndSettings(CODE_HASHES[family], settings)


def _without(section, *keys):
    return {k: v for k, v in section.items() if k not in keys}


def _task_convert_onnx():
    """Export each build's .h5 to ONNX float32 and quantize it with ONNX Runtime (QDQ int8)."""
    for build in PARAMS.builds:
        # The calibration draw and method are all of [convert] these models depend on; the
        # build's nodes_to_exclude changes onnx_int8.
        yield _models_from_h5(build, "convert_onnx", build.nodes_to_exclude, {
            **{key: getattr(PARAMS.convert, key) for key in (
                "representative_samples", "seed", "onnx_calibration", "onnx_preprocess")},
            "nodes_to_exclude": list(build.nodes_to_exclude)})


def _task_translate_onnx():
    """Translate each build's int8 .tflite to ONNX; fail unless it answers as LiteRT does."""
    for build in PARAMS.builds:
        models = variant_models(build.name, producer="translate_onnx")
        int8 = variant_models(build.name)[reference_int8_variant()]
        yield {
            "name": build.name,
            "doc": f"{int8.name} -> {', '.join(p.name for p in models.values())}",
            "actions": [(_guarded, [_stage("stages.convert_onnx.run_translate"), int8,
                                    dataset_npz(build.dataset), build.name,
                                    model_dir(build.name),
                                    PARAMS.convert.onnx_tflite_max_steps])],
            # The int8 .tflite necessarily (it is the input), not the .h5: when convert
            # rewrites the same int8 bytes, nothing is translated again. The runner (loaded
            # by path, not imported): the bit-for-bit check runs both models through it.
            "file_dep": [RUNNER, int8, dataset_npz(build.dataset)],
            "targets": list(models.values()),
            "uptodate": [_changed("convert_onnx", {"onnx_tflite_max_steps":
                                                   PARAMS.convert.onnx_tflite_max_steps})],
            "clean": True,
        }


# With convert.onnx = false these tasks do not exist (`doit list` shows none).
if "convert_onnx" in PRODUCERS:
    task_convert_onnx = in_file_order(_task_convert_onnx)
if "translate_onnx" in PRODUCERS:
    task_translate_onnx = in_file_order(_task_translate_onnx)


@in_file_order
def task_evaluate():
    """Score Keras and every variant on the full test set; gate on int8 drift."""
    for build in PARAMS.builds:
        report_dir = LAYOUT.report_dir(build.name)
        models = variant_models(build.name)
        yield {
            "name": build.name,
            "doc": f"accuracy drift of {build.name} -> {LAYOUT.accuracy_md(build.name)}",
            "actions": [(_guarded, [_stage("stages.evaluate.run"), build.name, build.dataset,
                                    DATASETS[build.dataset].class_names, keras_model(build.name),
                                    models, dataset_npz(build.dataset),
                                    PARAMS.evaluate.batch_size, PARAMS.evaluate.max_drift_pt,
                                    report_dir])],
            "file_dep": [RUNNER, keras_model(build.name),
                         dataset_npz(build.dataset), *models.values()],
            "targets": [LAYOUT.accuracy_json(build.name), LAYOUT.accuracy_md(build.name)],
            "uptodate": [_changed("evaluate", section_dict(PARAMS.evaluate))],
            "clean": True,
        }


def peak_models():
    return {v: LAYOUT.peak_model(v) for v in variant_names(PARAMS.convert) if VARIANTS[v].peak}


@in_file_order
def task_peak():
    """Build the synthetic GEMM models with which each board measures its peak MAC rate."""
    return {
        "actions": [(_guarded, [_stage("bench.floor.build_peak_models"), list(peak_models()),
                                LAYOUT])],
        "targets": list(peak_models().values()),
        "uptodate": [_changed("peak", {"variants": list(peak_models())})],
        "clean": True,
    }


@in_file_order
def task_curves():
    """Draw each build's training curves (train/validation per epoch, test accuracy) to a PNG."""
    for build in PARAMS.builds:
        history = LAYOUT.history_json(build.name)
        accuracy, png = LAYOUT.accuracy_json(build.name), LAYOUT.training_png(build.name)
        yield {
            "name": build.name,
            "doc": f"{build.name} training curves -> {png}",
            "actions": [(_guarded, [_stage("stages.curves.run"), build.name, history, accuracy,
                                    png])],
            "file_dep": [history, accuracy],
            "uptodate": [_changed("curves")],
            "targets": [png],
            "clean": True,
        }


@in_file_order
def task_analysis():
    """Confusion matrices, misclassified-image grids and the int8 damage list per build."""
    for build in PARAMS.builds:
        report_dir = LAYOUT.report_dir(build.name)
        int8 = variant_models(build.name)[reference_int8_variant()]
        # The build's other drift-gated int8 models (onnx_int8): their damage too.
        others = {v: p for v, p in variant_models(build.name).items()
                  if v in other_int8_variants()}
        outputs = LAYOUT.analysis_outputs(build.name)
        yield {
            "name": build.name,
            "doc": f"{build.name} errors, Keras and int8 -> {report_dir / 'analysis.md'}",
            "actions": [(_guarded, [_stage("stages.analysis.run"), build.name,
                                    DATASETS[build.dataset].class_names, keras_model(build.name),
                                    int8, dataset_npz(build.dataset),
                                    PARAMS.evaluate.batch_size,
                                    PARAMS.analysis.max_per_class, report_dir, others])],
            "file_dep": [RUNNER, keras_model(build.name), int8,
                         *others.values(), dataset_npz(build.dataset)],
            "targets": outputs,
            "uptodate": [_changed("analysis", {**section_dict(PARAMS.analysis),
                                               "batch_size": PARAMS.evaluate.batch_size})],
            "clean": [(_remove, [outputs])],
        }


@in_file_order
def task_layers():
    """Per-layer int8 quantization error against the float graph (QuantizationDebugger)."""
    for build in PARAMS.builds:
        report_dir = LAYOUT.report_dir(build.name)
        outputs = LAYOUT.layers_outputs(build.name)
        # With onnx_int8 (convert.onnx): layers_onnx.* too, from onnx_float32 and onnx_int8.
        onnx = (tuple(LAYOUT.variant_path(build.name, v) for v in (ONNX_FLOAT32, ONNX_INT8))
                if ONNX_INT8 in variant_names(PARAMS.convert, build.float_layers) else None)
        if onnx:
            outputs = [*outputs, *LAYOUT.layers_onnx_outputs(build.name)]
        yield {
            "name": build.name,
            "doc": f"{build.name} int8 error per tensor -> {report_dir / 'layers.md'}",
            "actions": [(_guarded, [_stage("stages.layers.run"), build.name, keras_model(build.name),
                                    dataset_npz(build.dataset), PARAMS.convert, PARAMS.layers,
                                    report_dir, onnx])],
            "file_dep": [keras_model(build.name), dataset_npz(build.dataset),
                         *(onnx or ())],
            "targets": outputs,
            # The debugger calibrates as convert does: those three keys, not extra_variants.
            "uptodate": [_changed("layers", {"layers": section_dict(PARAMS.layers), "convert": {
                key: getattr(PARAMS.convert, key)
                for key in ("representative_samples", "seed", "int8_io")}})],
            "clean": [(_remove, [outputs])],
        }


@in_file_order
def task_card():
    """Model card per build: input contract, outputs, each variant's bytes, SHA-256, accuracy."""
    for build in PARAMS.builds:
        models = variant_models(build.name)
        accuracy = LAYOUT.accuracy_json(build.name)
        history = LAYOUT.history_json(build.name)
        outputs = [LAYOUT.card_json(build.name), LAYOUT.card_md(build.name)]
        yield {
            "name": build.name,
            "doc": f"{build.name} model card -> {outputs[1]}",
            "actions": [(_guarded, [_stage("stages.card.run"), build.name, build.dataset,
                                    DATASETS[build.dataset].class_names, keras_model(build.name),
                                    models, accuracy, history, model_dir(build.name),
                                    DATASETS[build.dataset].framing])],
            "file_dep": [keras_model(build.name), history, accuracy, *models.values()],
            "targets": outputs,
            "uptodate": [_changed("card")],
            "clean": [(_remove, [outputs])],
        }


# The model formats board/runner.py runs (.tflite under a TFLite runtime, .onnx under ONNX
# Runtime; a board without one of them reports those rows as NO RUNTIME).
BOARD_FORMATS = tuple(FORMATS)


@in_file_order
def task_bench():
    """Time every model variant on each board (bench:local runs by default; see boards.toml)."""
    from pipeline.core.uptodate import measured_within

    # The builds whose dataset no mirror has are left out (and named once), not waited for.
    built = [b for b in PARAMS.builds if b.name not in BLOCKED]
    models = {f"{b.name}/{v}": p for b in built
              for v, p in variant_models(b.name).items() if VARIANTS[v].format in BOARD_FORMATS}
    datasets = {b.name: dataset_npz(b.dataset) for b in built}
    for board in BOARDS:
        result = LAYOUT.board_result(board.name)
        yield {
            "name": board.name,
            "doc": f"time every model on {board.label}",
            "actions": [(_say_blocked, [board.name]),
                        (_guarded, [_stage("bench.session.run"), board, models, datasets,
                                    PARAMS.bench.correctness_samples, LAYOUT, BOARDS,
                                    peak_models(), PARAMS.bench.max_age_hours])],
            "file_dep": [RUNNER, *models.values(), *peak_models().values(),
                         *set(datasets.values())],
            "targets": [result, LAYOUT.board_samples(board.name)],
            # Out of date when the board's last figures are older than max_age_hours, so a
            # board that died since it was last timed is noticed.
            "uptodate": [_changed("bench", {**board.settings(), **section_dict(PARAMS.bench)}),
                         (measured_within, [result, PARAMS.bench.max_age_hours])],
            # The board's result and its staged plan go; the shared report is rebuilt from
            # the other boards' results (it is not this task's alone).
            "clean": [(_clean_board, [[result, LAYOUT.board_samples(board.name),
                                       LAYOUT.bench_dir(board.name)],
                                      (LAYOUT, BOARDS, models, PARAMS.bench.max_age_hours)])],
        }


def _say_blocked(board):
    """One line naming the builds a board is not timing, and why."""
    if BLOCKED:
        print(f"bench:{board}: not timing {', '.join(sorted(BLOCKED))}: "
              + "; ".join(f"dataset {d}: {MISSING[d]}" for d in sorted(set(BLOCKED.values()))))


def _clean_board(paths, report_args, dryrun=False):
    """Remove one board's files, then rebuild latency.{json,md,png} from the boards left
    (or remove them when no board has a result)."""
    from pipeline.core.layout import LATENCY_FORMATS

    _remove(paths, dryrun)
    layout = report_args[0]
    left = set(layout.latency_dir().glob("*.json")) - set(map(Path, paths))
    if left:
        print(f"{'would rebuild' if dryrun else 'rebuilding'} {layout.latency_report('md')} "
              "from the other boards' results")
        if not dryrun:
            _stage("bench.report.write_latency_report")(*report_args)
    else:
        _remove([layout.latency_report(ext) for ext in LATENCY_FORMATS], dryrun)


def _remove(paths, dryrun=False):
    """A clean action: remove files and directory trees, saying what goes. doit passes
    `dryrun` (`doit clean -n`) to clean actions that accept it; then only say it."""
    verb = "would remove" if dryrun else "removing"
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            print(f"{verb} directory '{path}'")
            if not dryrun:
                shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            print(f"{verb} file '{path}'")
            if not dryrun:
                path.unlink()


def namespace():
    """What dodo.py's namespace gets: DOIT_CONFIG and the task creators, in file order."""
    return {name: value for name, value in globals().items()
            if name == "DOIT_CONFIG" or (name.startswith("task_") and callable(value))}


def cacheable():
    """Whether the graph may be cached (pipeline/graph/cache.py). Not with a dataset missing:
    which builds then leave the default tasks depends on the mirror directories there are,
    which no file's stamp tells."""
    return not MISSING


def inputs():
    """Every file that declaring the tasks read or probed, besides the modules it imported:
    the params file, the board inventory, user model files, each dataset's cached archives
    (present, they make the dataset available) and the code whose hashes the tasks carry.
    The cached graph is valid while none of them changes."""
    sources = (PARAMS.model_source(build.name).file for build in PARAMS.builds)
    return sorted({str(PARAMS_PATH), str(BOARDS_PATH), *(str(f) for f in sources if f),
                   *(str(raw_dir(name) / f.name) for name in PARAMS.datasets
                     for f in DATASETS[name].files),
                   *(f for files in CODE.values() for f in files)})


@functools.cache
def _declared_family(basename):
    made = globals()[f"task_{basename}"]()
    return {task.get("name"): task for task in ([made] if isinstance(made, dict) else made)}


def declared(basename, name):
    """The task dict this module declares for `basename:name` (name None: a single task);
    the cached graph's stand-in actions run its actions."""
    try:
        return _declared_family(basename)[name]
    except KeyError:
        raise PipelineError(f"task {basename}{':' + name if name else ''} is no longer "
                            "declared (a file changed during the build?); run doit again"
                            ) from None
