"""The one registry of model variants: what each is, how it is named, which gates apply.

Every other module asks this registry (`VARIANTS[name].integer`, `drift_gated_variants()`,
`reference_int8_variant()` ...) instead of comparing variant names as strings, so a new
variant is one `Variant(...)` entry here plus its converter.

Imports neither numpy nor TensorFlow: dodo.py names every task's targets with these on each
`doit` call, including no-op builds.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Sequence

from pipeline.core.formats import FORMATS
from pipeline.core.records import record

if TYPE_CHECKING:  # params imports this module (its list of optional variants)
    from pipeline.core.params import ConvertParams

# Names that other modules need as defaults (the reference variants, the Keras baseline).
KERAS = "keras"
FLOAT32 = "float32"
INT8 = "int8"
# Everything int8 except the tensors a build's `float_layers` names, which the debugger's
# denylist keeps float (pick them from the per-layer report, layers.csv).
SELECTIVE = "int8_selective"
FLOAT16 = "float16"
DYNAMIC_RANGE = "dynamic_range"
# ONNX, for boards whose runtime is ONNX Runtime (the K1's): the Keras model exported as is;
# quantized by ONNX Runtime (QDQ, calibrated on the int8 .tflite's representative images);
# and the int8 .tflite itself translated (tf2onnx), checked to equal LiteRT bit for bit.
ONNX_FLOAT32 = "onnx_float32"
ONNX_INT8 = "onnx_int8"
ONNX_INT8_TFLITE = "onnx_int8_tflite"

# The params that switch an optional variant on (Variant.optional).
EXTRA_VARIANTS_PARAM = "convert.extra_variants"  # on when its name is listed there
FLOAT_LAYERS_PARAM = "builds.float_layers"       # on when the build names float layers
ONNX_PARAM = "convert.onnx"                      # on when true (the default)


@record
class Variant:
    """One model variant a build can ship.

    `format` picks the host runtime (pipeline/core/runtimes.py) and the board's; `integer` means
    integer kernels, so a board must reproduce the host's predictions exactly (its graph
    input/output are integer with a scale and zero point, or float for a QDQ .onnx that
    quantizes inside: io_contract says which);
    `all_integer` that convert checks it holds no float tensor at all; `accuracy_floor` names
    the nightly floor that applies ("float" -> nightly.min_accuracy_float32, "int8" ->
    nightly.min_accuracy_int8); `drift_gated` that evaluate's max_drift_pt and the nightly's
    max_int8_drift_pt apply; `compared_with` the models its agreement is measured against
    (the first one is also the reference of its drift); `producer` the doit task family that
    writes it; `peak` that floor.py builds a synthetic GEMM twin in this variant; `optional`
    the param that switches it on (None: always built).
    """
    name: str
    format: str      # a key of core/formats.py's FORMATS (which gives the suffix)
    integer: bool
    accuracy_floor: str
    drift_gated: bool
    compared_with: tuple[str, ...]
    producer: str
    peak: bool
    optional: str | None = None
    all_integer: bool = False

    def __post_init__(self) -> None:
        if self.accuracy_floor not in ("float", "int8"):
            raise ValueError(f"variant {self.name}: accuracy_floor must be 'float' or 'int8'")
        if self.format not in FORMATS:
            raise ValueError(f"variant {self.name}: format must be one of {sorted(FORMATS)}")

    @property
    def suffix(self) -> str:
        return FORMATS[self.format].suffix


_TFLITE = {"format": "tflite", "producer": "convert",
           "compared_with": (KERAS,)}
# Compared with the int8 .tflite too: the model validated on the TFLite side is the yardstick
# of what the board's ONNX Runtime will answer. float32 and int8 have a peak twin (the GEMM
# as ONNX, timed by ONNX Runtime); the translated model's floor uses ONNX Runtime's fastest
# measured rate (floor.py).
_ONNX = {"format": "onnx", "compared_with": (KERAS, INT8),
         "optional": ONNX_PARAM}

# In display order: reports, tables and charts list variants in this order.
VARIANTS: Mapping[str, Variant] = MappingProxyType({v.name: v for v in (
    Variant(FLOAT32, integer=False, accuracy_floor="float", drift_gated=False, peak=True,
            **_TFLITE),
    Variant(INT8, integer=True, accuracy_floor="int8", drift_gated=True, peak=True,
            all_integer=True, **_TFLITE),
    # Integer, so the int8 floor: it is an int8 model with a few float layers.
    Variant(SELECTIVE, integer=True, accuracy_floor="int8", drift_gated=False, peak=False,
            optional=FLOAT_LAYERS_PARAM, **_TFLITE),
    Variant(FLOAT16, integer=False, accuracy_floor="float", drift_gated=False, peak=True,
            optional=EXTRA_VARIANTS_PARAM, **_TFLITE),
    # int8 weights, float activations and float input/output: a float model to its users.
    Variant(DYNAMIC_RANGE, integer=False, accuracy_floor="float", drift_gated=False, peak=True,
            optional=EXTRA_VARIANTS_PARAM, **_TFLITE),
    # The three written by pipeline/stages/convert_onnx.py: two from the .h5 (task convert_onnx),
    # one from the int8 .tflite (task translate_onnx, which must follow convert).
    Variant(ONNX_FLOAT32, integer=False, accuracy_floor="float", drift_gated=False,
            producer="convert_onnx", peak=True, **_ONNX),
    Variant(ONNX_INT8, integer=True, accuracy_floor="int8", drift_gated=True,
            producer="convert_onnx", peak=True, **_ONNX),
    # Not drift-gated: its outputs are the int8 .tflite's bit for bit (translate_onnx checks
    # it on every test image), so int8's gate already covers it; a second breach line for
    # the same numbers would say nothing new.
    Variant(ONNX_INT8_TFLITE, integer=True, accuracy_floor="int8", drift_gated=False,
            producer="translate_onnx", peak=False, **_ONNX),
)})


def extra_variant_names() -> tuple[str, ...]:
    """The names `convert.extra_variants` may list."""
    return tuple(v.name for v in VARIANTS.values() if v.optional == EXTRA_VARIANTS_PARAM)


def enabled(variant: Variant, params: ConvertParams, float_layers: Sequence[str] = ()) -> bool:
    """Whether a build with these params (and these float layers) ships `variant`."""
    if variant.optional is None:
        return True
    if variant.optional == FLOAT_LAYERS_PARAM:
        return bool(float_layers)
    if variant.optional == EXTRA_VARIANTS_PARAM:
        return variant.name in params.extra_variants
    if variant.optional == ONNX_PARAM:
        return params.onnx
    raise ValueError(f"variant {variant.name}: unknown optional param {variant.optional!r}")


def variant_names(params: ConvertParams, float_layers: Sequence[str] = (),
                  producer: str | None = None) -> list[str]:
    """The variants a build ships, in registry order (only `producer`'s, when given)."""
    return [v.name for v in VARIANTS.values() if enabled(v, params, float_layers)
            and (producer is None or v.producer == producer)]


def variant_path(model_dir: Path, build: str, variant: str) -> Path:
    return Path(model_dir) / f"{build}_{variant}{VARIANTS[variant].suffix}"


def variant_of(path: Path) -> tuple[str, str]:
    """(build, variant) of a `<build>_<variant><suffix>` path."""
    path = Path(path)
    # Longest first: "<build>_int8_selective" must not read as a build named "<build>_int8".
    for v in sorted(VARIANTS.values(), key=lambda v: len(v.name), reverse=True):
        stem = path.name.removesuffix(v.suffix)
        if path.name.endswith(v.suffix) and stem.endswith(f"_{v.name}"):
            return stem[: -len(v.name) - 1], v.name
    raise ValueError(f"{path}: not named <build>_<variant>"
                     f"{'|'.join(sorted(model_suffixes()))}")


def model_suffixes() -> set[str]:
    """The file suffixes of every model format (".tflite", ...)."""
    return {f.suffix for f in FORMATS.values()}


def format_of(path: Path) -> str:
    """The model format of a file, from its suffix (any variant's, or a peak model's)."""
    suffix = Path(path).suffix
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt.key
    raise ValueError(f"{path}: no variant has the suffix {suffix!r} (known: "
                     f"{', '.join(sorted(model_suffixes()))})")


def drift_gated_variants() -> list[str]:
    """The variants evaluate's and the nightly's drift gates apply to."""
    return [v.name for v in VARIANTS.values() if v.drift_gated]


def other_int8_variants() -> list[str]:
    """The drift-gated integer variants besides the reference int8 (onnx_int8: ONNX Runtime's
    own quantization), whose damage the error analysis lists beside int8's."""
    return [name for name in drift_gated_variants() if name != reference_int8_variant()]


def peak_variants() -> tuple[str, ...]:
    """The variants floor.py builds a synthetic GEMM twin in."""
    return tuple(v.name for v in VARIANTS.values() if v.peak)


def reference_int8_variant() -> str:
    """The full-integer model every build ships: analysed image by image, run by predict
    --board, compared with float32 in the latency report."""
    return INT8


def reference_float_variant() -> str:
    """The float model every build ships: the baseline of the int8/float32 latency ratio."""
    return FLOAT32


def accuracy_floor(name: str) -> str | None:
    """"float" or "int8": which nightly accuracy floor a variant gets; Keras (not shipped)
    has none. A name the registry does not know (an old run's) gets the float floor."""
    if name == KERAS:
        return None
    variant = VARIANTS.get(name)
    return variant.accuracy_floor if variant else "float"


def rank(name: str) -> int:
    """Display position: Keras first, then registry order, unknown names last."""
    if name == KERAS:
        return 0
    names = list(VARIANTS)
    return 1 + names.index(name) if name in names else 1 + len(names)
