"""The artifact tree: the one module that knows where every generated file lives.

    <root>/data/<dataset>/raw/*.gz                 verified downloads
    <root>/data/<dataset>/<dataset>.npz            uint8 arrays
    <root>/models/<build>/<build>.h5, history.json, <build>_<variant><suffix>, model_card.*
    <root>/reports/<build>/accuracy.*, training.png, analysis files, layers files
    <root>/reports/latency.{json,md,png}, reports/latency/<board>.json
    <root>/reports/latency/<board>.samples.ndjson.gz  each pair's per-round medians
    <root>/reports/<build>/ops_<board>.{md,json}   per-op profiles (ONNX Runtime)
    <root>/reports/nightly.{json,md,png}
    <root>/bench/<board>/                          the plan staged for a board
    <root>/peak/peak_<variant><suffix>             synthetic GEMMs
    <root>/references/<sha256><suffix>, <board>.json  models last timed, by SHA-256
    <root>/nightly-references/                     the same, of the last accepted nightly
    <root>/logs/<build>/                           TensorBoard logs
    <root>/nightly/<UTC stamp>/, nightly.lock, history.sqlite, .doit.db
    <root>/params.json                             the resolved params of the last build

A stage that is handed a directory (a report directory, a model directory) names the files
in it with the constants below, so each name is spelled once.

Imports neither numpy nor TensorFlow: dodo.py builds every task's targets with it on each
`doit` call, including no-op builds.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.records import record
from pipeline.core.variants import VARIANTS, variant_path

# File names inside models/<build>/.
HISTORY_JSON = "history.json"
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
# File names inside reports/<build>/.
ACCURACY_JSON, ACCURACY_MD = "accuracy.json", "accuracy.md"
TRAINING_PNG = "training.png"
# Every file the analysis and layers stages write (dodo.py's targets and clean lists). The
# "int8" in them is the reference int8 variant's (variants.reference_int8_variant()).
ANALYSIS_FILES = ("analysis.md", "confusion.json", "confusion.png", "misclassified_keras.png",
                  "misclassified_int8.png", "int8_damage.json", "int8_damage.png",
                  "int8_fixes.png")
LAYERS_FILES = ("layers.md", "layers.csv", "layers.png")
# Written beside them when the build has onnx_int8 (convert.onnx).
LAYERS_ONNX_FILES = ("layers_onnx.md", "layers_onnx.json")
LATENCY_FORMATS = ("json", "md", "png")
# File names inside reports/ of the nightly report (nightly_report.py writes them into the
# main tree's reports/, whichever run directory it describes).
NIGHTLY_JSON, NIGHTLY_MD, NIGHTLY_PNG = "nightly.json", "nightly.md", "nightly.png"
LATENCY_LOCK = ".latency.lock"
PLAN_JSON = "plan.json"
# A board's verdict samples, beside its result (reports/latency/<board>.json).
SAMPLES_SUFFIX = ".samples.ndjson.gz"
# The resolved params, in artifacts/ (the params task) and in each nightly run directory.
PARAMS_JSON = "params.json"


@record
class Layout:
    """Paths of the artifact tree under `root` (artifacts/ or $PIPELINE_ARTIFACTS, or one
    nightly run directory, which holds the same tree)."""
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- data --------------------------------------------------------------------------

    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def raw_dir(self, dataset: str) -> Path:
        return self.data_dir(dataset) / "raw"

    def dataset_npz(self, dataset: str) -> Path:
        return self.data_dir(dataset) / f"{dataset}.npz"

    # --- models ------------------------------------------------------------------------

    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, build: str) -> Path:
        return self.models_dir() / build

    def keras_model(self, build: str) -> Path:
        return self.model_dir(build) / f"{build}.h5"

    def history_json(self, build: str) -> Path:
        return self.model_dir(build) / HISTORY_JSON

    def variant_path(self, build: str, variant: str) -> Path:
        return variant_path(self.model_dir(build), build, variant)

    def model_files(self) -> list[Path]:
        """Every variant model file under models/, sorted (whatever params built them)."""
        suffixes = {v.suffix for v in VARIANTS.values()}
        return sorted(p for p in self.models_dir().glob("*/*") if p.suffix in suffixes)

    def card_json(self, build: str) -> Path:
        return self.model_dir(build) / CARD_JSON

    def card_md(self, build: str) -> Path:
        return self.model_dir(build) / CARD_MD

    def logs_dir(self, build: str) -> Path:
        return self.root / "logs" / build

    # --- reports -----------------------------------------------------------------------

    def reports_dir(self) -> Path:
        return self.root / "reports"

    def report_dir(self, build: str) -> Path:
        return self.reports_dir() / build

    def accuracy_json(self, build: str) -> Path:
        return self.report_dir(build) / ACCURACY_JSON

    def accuracy_md(self, build: str) -> Path:
        return self.report_dir(build) / ACCURACY_MD

    def training_png(self, build: str) -> Path:
        return self.report_dir(build) / TRAINING_PNG

    def analysis_outputs(self, build: str) -> list[Path]:
        return [self.report_dir(build) / name for name in ANALYSIS_FILES]

    def layers_outputs(self, build: str) -> list[Path]:
        return [self.report_dir(build) / name for name in LAYERS_FILES]

    def layers_onnx_outputs(self, build: str) -> list[Path]:
        return [self.report_dir(build) / name for name in LAYERS_ONNX_FILES]

    def latency_dir(self) -> Path:
        """One result document per board."""
        return self.reports_dir() / "latency"

    def board_result(self, board: str) -> Path:
        return self.latency_dir() / f"{board}.json"

    def board_samples(self, board: str) -> Path:
        """The per-round medians of every case the board timed beside its reference (gzip'd
        NDJSON, bench/reference.py): what its verdicts are recomputed from."""
        return self.latency_dir() / f"{board}{SAMPLES_SUFFIX}"

    def latency_report(self, ext: str) -> Path:
        """reports/latency.<ext>, the report over all boards (ext in LATENCY_FORMATS)."""
        return self.reports_dir() / f"latency.{ext}"

    def op_profile(self, build: str, board: str, ext: str) -> Path:
        """reports/<build>/ops_<board>.<ext> (md, json): ONNX Runtime's per-op profile of
        that build's ONNX models on that board."""
        return self.report_dir(build) / f"ops_{board}.{ext}"

    def latency_lock(self) -> Path:
        return self.reports_dir() / LATENCY_LOCK

    def nightly_reports(self) -> list[Path]:
        """reports/nightly.{json,md,png}."""
        return [self.reports_dir() / name for name in (NIGHTLY_JSON, NIGHTLY_MD, NIGHTLY_PNG)]

    # --- bench and peak ----------------------------------------------------------------

    def bench_root(self) -> Path:
        return self.root / "bench"

    def bench_dir(self, board: str) -> Path:
        """Where a board's plan and its files are staged before they are pushed."""
        return self.bench_root() / board

    def references_dir(self) -> Path:
        """Models kept by SHA-256 to be timed beside their successors (bench/reference.py)."""
        return self.root / "references"

    def reference_model(self, sha256: str, suffix: str) -> Path:
        return self.references_dir() / f"{sha256}{suffix}"

    def reference_index(self, board: str) -> Path:
        """build/variant -> SHA-256 of the model last timed on `board`."""
        return self.references_dir() / f"{board}.json"

    def accepted_references_dir(self) -> Path:
        """The last accepted nightly's references, seeded into each nightly's run directory."""
        return self.root / "nightly-references"

    def peak_dir(self) -> Path:
        return self.root / "peak"

    def peak_model(self, variant: str) -> Path:
        return self.peak_dir() / f"peak_{variant}{VARIANTS[variant].suffix}"

    # --- nightly and bookkeeping -------------------------------------------------------

    def nightly_dir(self) -> Path:
        """One run directory per nightly, each holding a tree laid out like this one."""
        return self.root / "nightly"

    def nightly_lock(self) -> Path:
        return self.root / "nightly.lock"

    def history_db(self) -> Path:
        return self.root / "history.sqlite"

    def doit_db(self) -> Path:
        return self.root / ".doit.db"

    def resolved_params(self) -> Path:
        """The params a build was made with (defaults, file, PIPELINE_SET): the params task."""
        return self.root / PARAMS_JSON
