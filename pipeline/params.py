"""Load `params.toml` into frozen dataclasses, rejecting anything odd before work starts.

Every key is required: the file is the single place where a default lives. A missing or
unknown key, a wrong type or an impossible value raises `ParamsError` naming `section.key`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import PipelineError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pipeline.datasets import DATASETS
from pipeline.variants import extra_variant_names

MODELS = ("cnn", "mlp")
EXTRA_VARIANTS = extra_variant_names()  # the variants convert.extra_variants may name
INT8_IO_TYPES = ("int8", "uint8")  # dtypes of the int8 model's input and output
# NumPy's and TensorFlow's seeds are unsigned 32-bit: anything else fails only when the
# stage runs (after the work before it), so it is refused here.
SEED_RANGE = (0, 2**32)
# More epochs than this is a typo for this pipeline's small models (MNIST converges in 2-5;
# 1,000 epochs of the CNN on two cores is about a day): refused before any work.
MAX_EPOCHS = 1000
# Calibration ranges settle after a few hundred images (TensorFlow suggests 100-500); more
# only costs conversion time. The cap is stated instead of clipping silently at the
# training split's size; convert refuses a draw larger than the split it draws from.
MAX_REPRESENTATIVE_SAMPLES = 10_000
# One params file's builds: each is ~10 doit tasks, and 1,000 builds already take ~1 s
# for every `doit` call to load (README: Params).
MAX_BUILDS = 1000


class ParamsError(PipelineError):
    pass


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {why}")


def _check_seed(seed: int, key: str) -> None:
    low, high = SEED_RANGE
    _check(low <= seed < high, key, f"must be in {low}..{high - 1} (0 <= seed < 2**32, the "
           f"range NumPy and TensorFlow accept), got {seed}")


@dataclass(frozen=True)
class DownloadParams:
    timeout_s: float

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "download.timeout_s", "must be > 0")


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    validation_fraction: float
    max_train_samples: int
    seed: int
    tensorboard: bool

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= MAX_EPOCHS, "train.epochs",
               f"must be in 1..{MAX_EPOCHS} (more is a day of training on two cores), "
               f"got {self.epochs}")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(0 < self.learning_rate < 1, "train.learning_rate", "must be in (0, 1)")
        _check(self.lr_schedule in ("cosine", "constant"), "train.lr_schedule",
               f"must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        _check(0 < self.validation_fraction < 0.5, "train.validation_fraction",
               "must be in (0, 0.5)")
        _check(self.max_train_samples >= 0, "train.max_train_samples", "must be >= 0 (0 = all)")
        _check_seed(self.seed, "train.seed")


@dataclass(frozen=True)
class ConvertParams:
    representative_samples: int
    seed: int
    int8_io: str
    extra_variants: tuple[str, ...]
    # The ONNX variants (variants.py: onnx_float32, onnx_int8, onnx_int8_tflite).
    onnx: bool
    # Output steps onnx_int8_tflite may differ from LiteRT's on a test image (0: bit for bit).
    onnx_tflite_max_steps: int

    def __post_init__(self) -> None:
        _check(10 <= self.representative_samples <= MAX_REPRESENTATIVE_SAMPLES,
               "convert.representative_samples",
               f"must be in 10..{MAX_REPRESENTATIVE_SAMPLES} (fewer give useless quantization "
               f"ranges; more only cost conversion time), got {self.representative_samples}")
        _check_seed(self.seed, "convert.seed")
        _check(self.int8_io in INT8_IO_TYPES, "convert.int8_io",
               f"must be 'int8' or 'uint8', got {self.int8_io!r}")
        _check(self.onnx_tflite_max_steps >= 0, "convert.onnx_tflite_max_steps",
               "must be >= 0 (0: bit for bit)")
        for variant in self.extra_variants:
            _check(variant in EXTRA_VARIANTS, "convert.extra_variants",
                   f"unknown variant {variant!r}; choose from {list(EXTRA_VARIANTS)}")


@dataclass(frozen=True)
class EvaluateParams:
    max_drift_pt: float
    batch_size: int

    def __post_init__(self) -> None:
        _check(self.max_drift_pt >= 0, "evaluate.max_drift_pt", "must be >= 0")
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")


@dataclass(frozen=True)
class AnalysisParams:
    max_per_class: int

    def __post_init__(self) -> None:
        _check(1 <= self.max_per_class <= 100, "analysis.max_per_class", "must be in 1..100")


@dataclass(frozen=True)
class LayersParams:
    samples: int
    seed: int

    def __post_init__(self) -> None:
        _check(1 <= self.samples <= 10_000, "layers.samples", "must be in 1..10000")
        _check_seed(self.seed, "layers.seed")


@dataclass(frozen=True)
class BenchParams:
    correctness_samples: int
    default_boards: tuple[str, ...]
    max_age_hours: float

    def __post_init__(self) -> None:
        _check(1 <= self.correctness_samples <= 10_000, "bench.correctness_samples",
               "must be in 1..10000")
        _check(self.max_age_hours > 0, "bench.max_age_hours", "must be > 0")


@dataclass(frozen=True)
class NightlyParams:
    """Gates and bookkeeping of `python -m pipeline.nightly`; no build task reads them."""
    min_accuracy_float32: float    # also gates the extra variants (float16, dynamic_range)
    min_accuracy_int8: float       # every integer variant (int8, int8_selective)
    max_int8_drift_pt: float
    max_latency_regression_pct: float
    mark_accuracy_change_pt: float
    history_runs: int
    keep_runs: int

    def __post_init__(self) -> None:
        for key in ("min_accuracy_float32", "min_accuracy_int8"):
            _check(0 <= getattr(self, key) <= 1, f"nightly.{key}",
                   "must be a fraction in [0, 1]")
        _check(self.max_int8_drift_pt >= 0, "nightly.max_int8_drift_pt", "must be >= 0")
        _check(self.max_latency_regression_pct > 0, "nightly.max_latency_regression_pct",
               "must be > 0")
        _check(self.mark_accuracy_change_pt >= 0, "nightly.mark_accuracy_change_pt",
               "must be >= 0")
        _check(self.history_runs >= 1, "nightly.history_runs", "must be >= 1")
        _check(self.keep_runs >= 1, "nightly.keep_runs", "must be >= 1 (the run being written)")


@dataclass(frozen=True)
class Build:
    name: str
    dataset: str
    model: str
    # Tensor names (a model's own, hence per build) kept float in `int8_selective`.
    float_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(re.fullmatch(r"[a-z0-9_]+", self.name) is not None, "builds.name",
               f"{self.name!r} must use only a-z, 0-9 and _ (it names files and tasks)")
        _check(self.dataset in DATASETS, f"builds[{self.name}].dataset",
               f"unknown dataset {self.dataset!r}; choose from {sorted(DATASETS)}")
        _check(self.model in MODELS, f"builds[{self.name}].model",
               f"unknown model {self.model!r}; choose from {list(MODELS)}")
        _check(len(set(self.float_layers)) == len(self.float_layers) and all(self.float_layers),
               f"builds[{self.name}].float_layers", "names must be non-empty and unique")


@dataclass(frozen=True)
class Params:
    download: DownloadParams
    train: TrainParams
    convert: ConvertParams
    evaluate: EvaluateParams
    analysis: AnalysisParams
    layers: LayersParams
    bench: BenchParams
    nightly: NightlyParams
    builds: tuple[Build, ...]

    def __post_init__(self) -> None:
        # dodo.py looks a build up once per task: a scan per lookup made loading quadratic
        # in the number of builds (3,000 builds: 2.2 s of 8.7 s in `doit list`).
        object.__setattr__(self, "_by_name", {b.name: b for b in self.builds})

    def build(self, name: str) -> Build:
        return self._by_name[name]

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets used by at least one build, in declaration order."""
        return tuple(dict.fromkeys(b.dataset for b in self.builds))


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
    """Build dataclass `cls` from a TOML table, naming `name.key` in every error."""
    _check(isinstance(table, dict), name, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        _check(key in hints, f"{name}.{key}", f"unknown key (known: {', '.join(fields)})")
    # A field with a default (board inventories have some) may be left out.
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for key in fields:
        _check(key in table or key in optional, f"{name}.{key}", "missing")
    return cls(**{key: _typed(table[key], hints[key], f"{name}.{key}")
                  for key in fields if key in table})


def parse_params(doc: dict[str, Any]) -> Params:
    sections = {f.name: f.type for f in dataclasses.fields(Params) if f.name != "builds"}
    hints = typing.get_type_hints(Params)
    for key in doc:
        _check(key in hints, key, f"unknown section (known: {', '.join(hints)})")
    values = {}
    for name in sections:
        _check(name in doc, name, "missing section")
        values[name] = parse_section(hints[name], name, doc[name])
    builds = doc.get("builds")
    _check(isinstance(builds, list) and len(builds) > 0, "builds",
           "declare at least one [[builds]] entry")
    _check(len(builds) <= MAX_BUILDS, "builds",
           f"{len(builds):,} [[builds]] entries; at most {MAX_BUILDS:,} per params file "
           "(each adds ~10 doit tasks that every doit call loads): split them into several "
           "params files (PIPELINE_PARAMS=<file>)")
    values["builds"] = tuple(parse_section(Build, "builds", b) for b in builds)
    names = [b.name for b in values["builds"]]
    _check(len(set(names)) == len(names), "builds.name", f"duplicate build names in {names}")
    return Params(**values)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParamsError(f"{path}: not valid TOML: {exc}") from None


def load_params(path: Path) -> Params:
    doc = read_toml(path)
    try:
        return parse_params(doc)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A plain dict of one params section, for doit's `config_changed` and manifests."""
    return dataclasses.asdict(section)
