"""Build parameters: every key's default, range and reason in one schema; a params file holds
only what it changes.

The schema is the frozen records below (pipeline/core/records.py: dataclasses that cost no
exec() when dodo.py loads): each field's default is the default, and its metadata
(`param(...)`) holds the rule it must satisfy (a range, a list of choices, distinct list
items) and why, so rules are data that the loader, the tests (tests/test_params.py generates
a boundary test per rule) and `python -m pipeline.core.params` (prints every key with its
default and reason) all read. A params file (`params.toml`, `PIPELINE_PARAMS=<file>`) may
leave out any section, any key and the [[builds]] (default: the MNIST CNN and MLP). An
unknown key, a wrong type (a bool where a number goes) or an impossible value raises
`ParamsError`, one line naming `section.key`, before any work.

A one-off override, type-checked like the file, from the environment:

    PIPELINE_SET="train.epochs=1;convert.onnx=false" doit

Each `section.key=value` item (separated by `;`) is a TOML value (`1`, `false`, `"x"`,
`["float16"]`); a bare word is a string (`convert.int8_io=uint8`). `python -m
pipeline.nightly --set ...` takes the same text. The resolved params (defaults, file and
override) are saved with every build (artifacts/params.json, written by the `params` task)
and with every nightly (its run directory's params.json and manifest.json).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from pipeline import PipelineError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pipeline.core.datasets import DATASETS, DatasetSpec
from pipeline.core.models import SAVED_SUFFIXES, ModelSource, ModelSourceError, resolve
from pipeline.core.records import record
from pipeline.core.variants import extra_variant_names

# A build's model may have at most this many parameters unless the build says otherwise
# (`max_parameters`): a guard against a model that would take hours on the build host and
# not fit a small board's cache, not a limit of the pipeline.
DEFAULT_MAX_PARAMETERS = 2_000_000
EXTRA_VARIANTS = extra_variant_names()  # the variants convert.extra_variants may name
INT8_IO_TYPES = ("int8", "uint8")  # dtypes of the int8 model's input and output
# ONNX Runtime's calibration methods for onnx_int8 (its CalibrationMethod members).
ONNX_CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
# NumPy's and TensorFlow's seeds are unsigned 32-bit: anything else fails only when the
# stage runs (after the work before it), so it is refused here.
SEED_MAX = 2**32 - 1
SEED_WHY = "the range NumPy and TensorFlow accept"
# More epochs than this is a typo for this pipeline's small models (MNIST converges in 2-5;
# 1,000 epochs of the CNN on two cores is about a day): refused before any work.
MAX_EPOCHS = 1000
# Calibration ranges settle after a few hundred images (TensorFlow suggests 100-500); more
# only costs conversion time. The cap is stated instead of clipping silently at the
# training split's size; convert refuses a draw larger than the split it draws from.
MAX_REPRESENTATIVE_SAMPLES = 10_000
# One params file's builds: each is ~10 doit tasks, and 1,000 builds already take ~1 s
# for every `doit` call to load (docs/params.md).
MAX_BUILDS = 1000
# The environment variable of a one-off override (the edges read it: dodo.py, the nightly).
OVERRIDE_ENV = "PIPELINE_SET"


class ParamsError(PipelineError):
    pass


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {why}")


@record
class Rule:
    """What a value (of a list: each item) must satisfy, as data: the loader checks it, the
    tests generate its boundary cases from it, and `python -m pipeline.core.params` shows it.
    A bound of None is no bound; an open bound refuses the bound itself."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    distinct: bool = False         # a list's items must be distinct
    why: str = ""                  # the reason, said when a value is refused

    def describe(self) -> str:
        """The rule as the error message and the reference say it ("in 1..1000", "> 0")."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        low, high = self.low, self.high
        if low is not None and high is not None:
            if isinstance(low, int) and isinstance(high, int) and not (
                    self.low_open or self.high_open):
                return f"in {low}..{high}"
            return (f"in {'(' if self.low_open else '['}{low}, {high}"
                    f"{')' if self.high_open else ']'}")
        if low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return ""

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high
                                         or (self.high_open and value == self.high))

    def refusal(self, value: Any) -> str:
        return (f"must be {self.describe()}" + (f" ({self.why})" if self.why else "")
                + f", got {value!r}")


def param(default: Any, doc: str = "", **rule: Any) -> Any:
    """A schema field: its default, what it means (`doc`) and its `Rule`."""
    return field(default=default, metadata={"rule": Rule(**rule), "doc": doc})


def rule_of(spec: dataclasses.Field) -> Rule:
    return spec.metadata.get("rule", Rule())


def check_fields(obj: Any, prefix: str) -> None:
    """Every field of dataclass `obj` against its Rule, naming `prefix.field` on refusal.
    A list's items are checked one by one; an empty string is never a list item."""
    for spec in dataclasses.fields(obj):
        rule, value, key = rule_of(spec), getattr(obj, spec.name), f"{prefix}.{spec.name}"
        if isinstance(value, (tuple, list)):
            for item in value:
                _check(item != "", key, "list items must not be empty")
                _check(rule.allows(item), key, f"item {item!r}: " + rule.refusal(item))
            repeated = sorted({str(item) for item in value if value.count(item) > 1})
            _check(not (rule.distinct and repeated), key,
                   f"items must be distinct, repeated: {repeated}")
        else:
            _check(rule.allows(value), key, rule.refusal(value))


class Section:
    """A [section] of the params file: its fields are checked against their rules."""
    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self, self.KEY)


def _seed(doc: str = "Seeds the draw; the same params give the same result.") -> Any:
    return param(1234, doc, low=0, high=SEED_MAX, why=SEED_WHY)


@record
class DownloadParams(Section):
    KEY: ClassVar[str] = "download"
    timeout_s: float = param(60.0, "Seconds to wait on a mirror's connection or read before "
                             "trying the next mirror.", low=0, low_open=True)


@record
class TrainParams(Section):
    KEY: ClassVar[str] = "train"
    # The defaults reach >= 99.0 % test accuracy on MNIST with the CNN in about a third of the
    # tutorial recipe's time (5 epochs, batch 32, constant Adam 1e-3): larger batches keep
    # both CPU cores busy and a cosine decay from a higher rate converges in two epochs.
    epochs: int = param(2, "Passes over the training images.", low=1, high=MAX_EPOCHS,
                        why="more is a day of training on two cores")
    batch_size: int = param(128, "Images per training step.", low=1)
    learning_rate: float = param(0.004, "Adam's initial learning rate.", low=0, high=1,
                                 low_open=True, high_open=True)
    lr_schedule: str = param("cosine", '"cosine" (decays to 0 over all steps) or "constant".',
                             choices=("cosine", "constant"))
    validation_fraction: float = param(
        0.1, "Held out from the training images for the validation curve in history.json.",
        low=0, high=0.5, low_open=True, high_open=True)
    max_train_samples: int = param(
        0, "Train on at most this many images (0 = all); the test set is always used in full.",
        low=0, why="0 = all")
    seed: int = _seed("Seeds Python, NumPy and TensorFlow; with op determinism the same "
                      "params give the same weights.")
    tensorboard: bool = param(
        False, "Write TensorBoard logs (epoch loss/accuracy) to artifacts/logs/<build>/ "
        "(`tensorboard --logdir artifacts/logs`). Does not change the trained weights.")


@record
class ConvertParams(Section):
    KEY: ClassVar[str] = "convert"
    representative_samples: int = param(
        500, "Images drawn from the training split, stratified by class, to calibrate int8 "
        "ranges.", low=10, high=MAX_REPRESENTATIVE_SAMPLES,
        why="fewer give useless quantization ranges; more only cost conversion time")
    seed: int = _seed("Seeds the calibration draw.")
    int8_io: str = param(
        "int8", 'Type of the int8 model\'s input and output tensors. With "uint8" the input is '
        "the raw camera byte (the 1/255 scaling lives inside the model).", choices=INT8_IO_TYPES)
    extra_variants: tuple[str, ...] = param(
        (), "Extra variants besides float32 and int8.", choices=EXTRA_VARIANTS, distinct=True)
    # The ONNX variants (variants.py: onnx_float32, onnx_int8, onnx_int8_tflite).
    onnx: bool = param(
        True, "Also build ONNX models for boards whose runtime is ONNX Runtime (the K1's): "
        "onnx_float32 (the Keras model exported), onnx_int8 (quantized by ONNX Runtime: QDQ, "
        "per-channel, calibrated on the same images as int8) and onnx_int8_tflite (the int8 "
        ".tflite translated, checked against LiteRT). false: TFLite only. Changing it never "
        "redoes the .tflite files.")
    onnx_tflite_max_steps: int = param(
        16, "translate_onnx fails unless onnx_int8_tflite answers as LiteRT does on every test "
        "image: the same top-1 class, and int8 outputs within this many output quantization "
        "steps; 0 = bit for bit. The two runtimes requantize differently (TFLite a fixed-point "
        "multiplier, ONNX a float scale rounded half to even; TFLite's integer mean against "
        "ORT's float ReduceMean), so exact equality cannot be promised for every model. "
        "Measured (benchmarks/onnx_accuracy.py, MNIST, 10,000 test images): the built-in "
        "builds, a small CNN and a depthwise-separable CNN bit for bit; a global-average-"
        "pooling head 12 steps on 33 images, no top-1 changed; the smoke models 7 steps.",
        low=0,
        why="0: bit for bit")
    onnx_calibration: str = param(
        "MinMax", "How ONNX Runtime calibrates onnx_int8's activation ranges on the "
        "representative images (benchmarks/onnx_accuracy.py measures each). \"Entropy\" "
        "gives MinMax's model: quantize_static gives the entropy search as many histogram "
        "bins as quantized bins (128), which leaves only the full range to choose.",
        choices=ONNX_CALIBRATION_METHODS)
    onnx_preprocess: bool = param(
        False, "Run ONNX Runtime's quant_pre_process (shape inference, graph optimization) "
        "before quantizing onnx_int8.")


@record
class EvaluateParams(Section):
    KEY: ClassVar[str] = "evaluate"
    max_drift_pt: float = param(
        1.0, "Fail the evaluate task when int8 accuracy drops more than this many percentage "
        "points below Keras (the report is written first).", low=0)
    batch_size: int = param(500, "Images per interpreter invocation.", low=1)


@record
class AnalysisParams(Section):
    KEY: ClassVar[str] = "analysis"
    max_per_class: int = param(
        12, "Misclassified test images drawn per true class in the error-analysis grids.",
        low=1, high=100)


@record
class LayersParams(Section):
    KEY: ClassVar[str] = "layers"
    samples: int = param(
        200, "Test images (a seeded draw) run through the float and int8 graphs to measure "
        "each quantized tensor's error.", low=1, high=10_000)
    seed: int = _seed("Seeds the draw of test images.")


@record
class BenchParams(Section):
    KEY: ClassVar[str] = "bench"
    correctness_samples: int = param(
        200, "Labelled test images pushed with the models to check on-device predictions.",
        low=1, high=10_000)
    default_boards: tuple[str, ...] = param(
        ("local",), "Boards benchmarked by a plain `doit`; `doit bench` runs every board in the "
        "inventory.", distinct=True)
    max_age_hours: float = param(
        24.0, "A board's figures older than this are marked OLD in the report, and its bench "
        "task is out of date, so `doit bench` (and the nightly) re-times it even when no model "
        "changed: a board that died since is noticed.", low=0, low_open=True)


def _fraction(default: float, doc: str) -> Any:
    return param(default, doc, low=0.0, high=1.0, why="a fraction")


@record
class NightlyParams(Section):
    """Gates and bookkeeping of `python -m pipeline.nightly`; no build task reads them, so
    changing them never reruns anything. A breach makes the nightly exit 1 after every report
    is written. Accuracy is top-1 on the full test set, as a fraction."""
    KEY: ClassVar[str] = "nightly"
    # One floor for every build, so the weakest build sets it: measured with the defaults,
    # the CNN scores 99.2 % (float32 and int8) and the MLP 96.98 % float32, 96.92 % int8.
    min_accuracy_float32: float = _fraction(
        0.965, "Every build's float32 model (and float16/dynamic_range) scores at least this.")
    min_accuracy_int8: float = _fraction(
        0.965, "Every integer variant (int8, int8_selective) scores at least this.")
    max_int8_drift_pt: float = param(
        1.0, "int8 accuracy may fall at most this many percentage points below Keras.", low=0)
    # Measured on this 2-core host with and without a CPU hog: 0 false alarms, a real 10 %
    # regression caught (docs/measured/latency_campaign.md, benchmarks/latency_campaign.py).
    max_latency_regression_pct: float = param(
        10.0, "Latency gate per build x variant x board x threads: tonight's model is timed "
        "side by side with the last accepted nightly's, interleaved in one session; the night "
        "breaches when the verdict is slower (Mann-Whitney p < 0.01, ratio of medians >= "
        "1.02) and the ratio's 99 % interval reaches 1 + this/100. Same bytes (A/A) measure "
        "the board and never breach; the cross-night p50 is a trend, not a gate.",
        low=0, low_open=True)
    mark_accuracy_change_pt: float = param(
        0.2, "nightly.md marks an accuracy change beyond this many points (a mark, not a "
        "gate).", low=0)
    history_runs: int = param(
        7, "Runs the report and the latency gate compare with (their median).", low=1)
    keep_runs: int = param(
        14, "Run directories kept under artifacts/nightly/ (the history database keeps every "
        "run's figures).", low=1, why="the run being written")


BUILD_NAME = re.compile(r"[a-z0-9_]+")


@record
class Build:
    """One [[builds]] entry: a model trained on a dataset, named in files and task names."""
    name: str
    dataset: str
    # A built-in name, "<file.py>:<function>", "<module>:<function>" or a saved .keras/.h5
    # file (pipeline/core/models.py); paths relative to the params file's directory.
    model: str
    float_layers: tuple[str, ...] = param(
        (), "Tensor names (the model's own, from reports/<build>/layers.csv) kept float in an "
        "extra variant int8_selective.", distinct=True)
    nodes_to_exclude: tuple[str, ...] = param(
        (), "ONNX node names (onnx_float32's, as reports/<build>/layers_onnx.md names them) "
        "kept float in onnx_int8: ONNX Runtime's quantize_static nodes_to_exclude. The "
        "pipeline's ONNX sessions (evaluate, bench, the board's runner) disable ORT's "
        "WeightBiasQuantization optimizer, which would otherwise quantize such a node's "
        "float weights per tensor at load.", distinct=True)
    fine_tune: bool = param(True, "A saved model is fine-tuned with [train] (true) or "
                            "converted as it is (false).")
    max_parameters: int = param(DEFAULT_MAX_PARAMETERS, "A bigger model fails before "
                                "training.", low=1)

    def __post_init__(self) -> None:
        _check(BUILD_NAME.fullmatch(self.name) is not None, "builds.name",
               f"{self.name!r} must use only a-z, 0-9 and _ (it names files and tasks)")
        check_fields(self, f"builds[{self.name}]")


# Without a [[builds]] entry in the params file: the MNIST CNN (the K1 tutorial's, 93,322
# parameters) and an MLP (Flatten -> Dense128 -> Dropout 0.2 -> Dense10).
DEFAULT_BUILDS = (Build("mnist_cnn", "mnist", "cnn"), Build("mnist_mlp", "mnist", "mlp"))


@record
class Params:
    download: DownloadParams = field(default_factory=DownloadParams)
    train: TrainParams = field(default_factory=TrainParams)
    convert: ConvertParams = field(default_factory=ConvertParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    analysis: AnalysisParams = field(default_factory=AnalysisParams)
    layers: LayersParams = field(default_factory=LayersParams)
    bench: BenchParams = field(default_factory=BenchParams)
    nightly: NightlyParams = field(default_factory=NightlyParams)
    builds: tuple[Build, ...] = DEFAULT_BUILDS
    declared_datasets: tuple[DatasetSpec, ...] = ()   # [[datasets]]
    # The params file's directory, which user paths are relative to (a string: the nightly
    # manifest stores the params as JSON).
    base_dir: str = "."

    def __post_init__(self) -> None:
        # dodo.py looks a build up once per task: a scan per lookup made loading quadratic
        # in the number of builds (3,000 builds: 2.2 s of 8.7 s in `doit list`).
        object.__setattr__(self, "_by_name", {b.name: b for b in self.builds})

    def build(self, name: str) -> Build:
        return self._by_name[name]

    def dataset_specs(self) -> dict[str, DatasetSpec]:
        """Every dataset a build may name: the built-in ones and those declared here."""
        return {**DATASETS, **{spec.name: spec for spec in self.declared_datasets}}

    def model_source(self, build: str) -> ModelSource:
        """Where `build`'s model comes from (checked when the params were loaded)."""
        return resolve(self.build(build).model, Path(self.base_dir))

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets used by at least one build, in declaration order."""
        return tuple(dict.fromkeys(b.dataset for b in self.builds))


# Params fields that are not a [section] of the file.
NOT_SECTIONS = ("builds", "declared_datasets", "base_dir")


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """`cls`'s field types, evaluated once per process (each evaluation compiles every
    annotation string: dodo.py parses ten tables, and a build per [[builds]] table)."""
    return typing.get_type_hints(cls)


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in file order."""
    hints = type_hints(Params)
    return {f.name: hints[f.name] for f in dataclasses.fields(Params)
            if f.name not in NOT_SECTIONS}


def _typed(value: Any, hint: Any, key: str) -> Any:
    if typing.get_origin(hint) is tuple:
        _check(isinstance(value, list), key, f"must be a list, got {type(value).__name__}")
        return tuple(_typed(item, typing.get_args(hint)[0], key) for item in value)
    # TOML integers are acceptable floats; booleans are never numbers.
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    _check(ok, key, f"must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_section(cls: type, name: str, table: Any) -> Any:
    """Build dataclass `cls` from a TOML table, naming `name.key` in every error. A key left
    out takes its default; a field without one (a build's name) is required."""
    _check(isinstance(table, dict), name, "must be a table")
    hints = type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        _check(key in fields, f"{name}.{key}", f"unknown key (known: {', '.join(fields)})")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for key in required:
        _check(key in table, f"{name}.{key}", "missing")
    return cls(**{key: _typed(table[key], hints[key], f"{name}.{key}")
                  for key in fields if key in table})


def parse_params(doc: dict[str, Any], base_dir: Path = Path(".")) -> Params:
    """Params from a parsed TOML document; `base_dir` is the params file's directory, which
    a build's model file and a declared dataset's local files are relative to."""
    known = [*sections(), "builds", "datasets"]
    for key in doc:
        _check(key in known, key, f"unknown section (known: {', '.join(known)})")
    values: dict[str, Any] = {name: parse_section(cls, name, doc.get(name, {}))
                              for name, cls in sections().items()}
    declared = doc.get("datasets", [])
    _check(isinstance(declared, list), "datasets", "must be [[datasets]] tables")
    decls: tuple[Any, ...] = ()
    if declared:  # the [[datasets]] schema is compiled only for a file that declares one
        from pipeline.core.declared import DatasetDecl

        decls = tuple(parse_section(DatasetDecl, "datasets", d) for d in declared)
    names = [d.name for d in decls]
    _check(len(set(names)) == len(names), "datasets.name", f"duplicate dataset names in {names}")
    values["declared_datasets"] = tuple(d.spec(base_dir) for d in decls)
    values["builds"] = _parse_builds(doc)
    specs = {**DATASETS, **{spec.name: spec for spec in values["declared_datasets"]}}
    for build in values["builds"]:
        _check_build(build, specs, base_dir)
    return Params(**values, base_dir=str(base_dir))


def _parse_builds(doc: dict[str, Any]) -> tuple[Build, ...]:
    if "builds" not in doc:
        return DEFAULT_BUILDS
    builds = doc["builds"]
    _check(isinstance(builds, list) and len(builds) > 0, "builds",
           "declare at least one [[builds]] entry (or none at all for the default builds)")
    _check(len(builds) <= MAX_BUILDS, "builds",
           f"{len(builds):,} [[builds]] entries; at most {MAX_BUILDS:,} per params file "
           "(each adds ~10 doit tasks that every doit call loads): split them into several "
           "params files (PIPELINE_PARAMS=<file>)")
    parsed = tuple(parse_section(Build, "builds", b) for b in builds)
    names = [b.name for b in parsed]
    _check(len(set(names)) == len(names), "builds.name", f"duplicate build names in {names}")
    return parsed


def _check_build(build: Build, specs: dict[str, DatasetSpec], base_dir: Path) -> None:
    _check(build.dataset in specs, f"builds[{build.name}].dataset",
           f"unknown dataset {build.dataset!r}; choose from {sorted(specs)} "
           "(or declare it in a [[datasets]] table)")
    try:
        source = resolve(build.model, base_dir)
    except ModelSourceError as exc:
        raise ParamsError(f"builds[{build.name}].model: {exc}") from None
    _check(build.fine_tune or source.kind == "saved", f"builds[{build.name}].fine_tune",
           "false converts a saved model as it is; this build's model "
           f"{build.model!r} is not a saved model ({' or '.join(SAVED_SUFFIXES)}), so it "
           "must be trained")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParamsError(f"{path}: not valid TOML: {exc}") from None


def load_params(path: Path, overrides: str = "") -> Params:
    """The params file at `path` over the defaults, then `overrides` (PIPELINE_SET's text)."""
    doc = read_toml(path)
    if overrides:  # PIPELINE_SET's parser is compiled only when there is one to parse
        from pipeline.core.overrides import apply_overrides

        doc = apply_overrides(doc, overrides)
    try:
        return parse_params(doc, Path(path).parent)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A plain dict of one params section, for doit's `config_changed` and manifests."""
    return dataclasses.asdict(section)


def resolved(params: Params, path: Path, overrides: str) -> dict[str, Any]:
    """What a run was made with, as JSON: the file, the override and every value (each
    params value is a TOML scalar or list, JSON already: a tuple becomes a list)."""
    return {"params_file": str(path), OVERRIDE_ENV: overrides,
            "params": json.loads(json.dumps(dataclasses.asdict(params)))}


def write_resolved(out: Path, params: Params, path: Path, overrides: str) -> None:
    """The resolved params to `out` (the `params` task: artifacts/params.json)."""
    from pipeline.core.files import write_json

    write_json(out, resolved(params, path, overrides))


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.core.params`: pipeline/core/params_cli.py, a module of its own so
    that loading dodo.py (every `doit`) does not compile the reference printer."""
    from pipeline.core.params_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
