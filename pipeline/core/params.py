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
from pipeline.core.datasets import DATASETS, FORMATS, FRAMINGS, IDX_ROLES, DatasetSpec, RemoteFile
from pipeline.core.models import BUILTIN_MODELS, SAVED_SUFFIXES, ModelSource, ModelSourceError, resolve
from pipeline.core.variants import extra_variant_names

MODELS = BUILTIN_MODELS  # the built-in names; a build may also name its own (pipeline/core/models.py)
# A build's model may have at most this many parameters unless the build says otherwise
# (`max_parameters`): a guard against a model that would take hours on the build host and
# not fit a small board's cache, not a limit of the pipeline.
DEFAULT_MAX_PARAMETERS = 2_000_000
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
# for every `doit` call to load (docs/params.md).
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
    # A built-in name, "<file.py>:<function>", "<module>:<function>" or a saved .keras/.h5
    # file (pipeline/core/models.py); paths relative to the params file's directory.
    model: str
    # Tensor names (a model's own, hence per build) kept float in `int8_selective`.
    float_layers: tuple[str, ...] = ()
    # A saved model is fine-tuned with [train] (true) or converted as it is (false).
    fine_tune: bool = True
    max_parameters: int = DEFAULT_MAX_PARAMETERS

    def __post_init__(self) -> None:
        _check(re.fullmatch(r"[a-z0-9_]+", self.name) is not None, "builds.name",
               f"{self.name!r} must use only a-z, 0-9 and _ (it names files and tasks)")
        _check(len(set(self.float_layers)) == len(self.float_layers) and all(self.float_layers),
               f"builds[{self.name}].float_layers", "names must be non-empty and unique")
        _check(self.max_parameters >= 1, f"builds[{self.name}].max_parameters", "must be >= 1")


@dataclass(frozen=True)
class DatasetDecl:
    """A dataset declared in the params file (`[[datasets]]`), besides the built-in ones."""
    name: str
    format: str                    # "idx" (4 gzipped IDX files) or "npz" (one file)
    files: tuple[str, ...]         # URLs or paths (relative to the params file's directory)
    sha256: tuple[str, ...]        # one per file: of its bytes (a .gz: or of its content)
    class_names: tuple[str, ...]
    framing: str                   # how predict frames a picture: "digit" or "object"

    def __post_init__(self) -> None:
        key = f"datasets[{self.name}]"
        _check(re.fullmatch(r"[a-z0-9_]+", self.name) is not None, "datasets.name",
               f"{self.name!r} must use only a-z, 0-9 and _ (it names files and tasks)")
        _check(self.name not in DATASETS, f"{key}.name",
               f"{self.name!r} is a built-in dataset; choose another name")
        _check(self.format in FORMATS, f"{key}.format",
               f"must be one of {list(FORMATS)}, got {self.format!r}")
        wanted = {"idx": len(IDX_ROLES), "npz": 1}[self.format]
        _check(len(self.files) == wanted, f"{key}.files",
               f"format {self.format!r} takes {wanted} file(s)"
               + (f" ({', '.join(IDX_ROLES)}, in that order)" if self.format == "idx" else
                  " (holding x_train, y_train, x_test, y_test)") + f", got {len(self.files)}")
        names = [_basename(f) for f in self.files]
        _check(all(names) and len(set(names)) == len(names), f"{key}.files",
               f"file names must be distinct and non-empty, got {names}")
        _check(len(self.sha256) == len(self.files), f"{key}.sha256",
               f"one SHA-256 per file: {len(self.files)} file(s), {len(self.sha256)} checksum(s)")
        for digest in self.sha256:
            _check(re.fullmatch(r"[0-9a-f]{64}", digest) is not None, f"{key}.sha256",
                   f"{digest!r} is not a SHA-256 (64 lowercase hex digits; `sha256sum FILE`)")
        _check(len(self.class_names) >= 2 and len(set(self.class_names)) == len(self.class_names)
               and all(self.class_names), f"{key}.class_names",
               "at least 2 distinct, non-empty names (label i is class_names[i])")
        _check(self.framing in FRAMINGS, f"{key}.framing",
               f"must be one of {list(FRAMINGS)}, got {self.framing!r}")

    def spec(self, base_dir: Path) -> DatasetSpec:
        """The registry entry of this dataset; each file's location is its URL's folder or
        its directory (relative paths from `base_dir`)."""
        remotes = [RemoteFile(_basename(f), None, sha256=digest, location=_location(f, base_dir))
                   for f, digest in zip(self.files, self.sha256)]
        if self.format == "npz":
            return DatasetSpec(self.name, (), class_names=self.class_names, format="npz",
                               archive=remotes[0], framing=self.framing, declared=True)
        return DatasetSpec(self.name, (), *remotes, class_names=self.class_names,
                           framing=self.framing, declared=True)


def _basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1] if "://" in location else Path(location).name


def _location(location: str, base_dir: Path) -> str:
    """The folder a declared file is fetched from: a URL's parent, or a local directory."""
    if location.startswith(("http://", "https://", "file://")):
        return location.rsplit("/", 1)[0] + "/"
    path = Path(location).expanduser()
    return str((path if path.is_absolute() else Path(base_dir) / path).parent)


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


# Params fields that are not a [section] of the file.
NOT_SECTIONS = ("builds", "declared_datasets", "base_dir")


def parse_params(doc: dict[str, Any], base_dir: Path = Path(".")) -> Params:
    """Params from a parsed TOML document; `base_dir` is the params file's directory, which
    a build's model file and a declared dataset's local files are relative to."""
    sections = {f.name: f.type for f in dataclasses.fields(Params) if f.name not in NOT_SECTIONS}
    hints = typing.get_type_hints(Params)
    known = [*sections, "builds", "datasets"]
    for key in doc:
        _check(key in known, key, f"unknown section (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for name in sections:
        _check(name in doc, name, "missing section")
        values[name] = parse_section(hints[name], name, doc[name])
    declared = doc.get("datasets", [])
    _check(isinstance(declared, list), "datasets", "must be [[datasets]] tables")
    decls = tuple(parse_section(DatasetDecl, "datasets", d) for d in declared)
    names = [d.name for d in decls]
    _check(len(set(names)) == len(names), "datasets.name", f"duplicate dataset names in {names}")
    values["declared_datasets"] = tuple(d.spec(base_dir) for d in decls)
    specs = {**DATASETS, **{spec.name: spec for spec in values["declared_datasets"]}}
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
    for build in values["builds"]:
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
    return Params(**values, base_dir=str(base_dir))


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
        return parse_params(doc, Path(path).parent)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A plain dict of one params section, for doit's `config_changed` and manifests."""
    return dataclasses.asdict(section)
