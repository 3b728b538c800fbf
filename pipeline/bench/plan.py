"""The staging plan: the models, their labelled samples with this host's predictions, and
the peak GEMMs, written into one directory with plan.json, which board/runner.py reads."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from pipeline.bench.floor import count_macs
from pipeline.core.boards import Board
from pipeline.core.files import sha256_file, write_bytes, write_json
from pipeline.core.layout import PLAN_JSON

# Per case: the child's start and model load, plus a generous 100 ms per invoke (the models
# this pipeline builds take well under 10 ms on a K1 core).
CASE_BASE_S, INVOKE_S = 60.0, 0.1


def host_predictions(model_path: Path, images: np.ndarray) -> np.ndarray:
    """This host's top-1 of each image, by the runner's own code (the board's reference)."""
    from pipeline.core.runtimes import open_model

    return open_model(model_path).board_predictions(images)


def io_quantization(model_path: Path) -> dict[str, list[float]]:
    """{"input"/"output": [scale, zero_point]} of an integer ONNX model's input and output,
    which onnxruntime on the board cannot read from the session (a TFLite interpreter
    reports its own); only the sides that are integer, none for other models. The model is
    opened once for both."""
    from pipeline.core.runtimes import open_model
    from pipeline.core.variants import format_of

    if format_of(model_path) != "onnx":
        return {}
    contract = open_model(model_path).io_contract()
    return {side: [float(contract[side]["scale"]), int(contract[side]["zero_point"])]
            for side in ("input", "output") if "scale" in contract[side]}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz whose bytes depend only on the arrays (np.savez stamps the current time), so
    the board's copy is recognised by its SHA-256 and not pushed again."""
    buffer = io.BytesIO()
    # Stored, as np.savez does (ZipFile's default); each member dated by ZipInfo's own
    # default, 1980-01-01, not by the clock.
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy")
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def plan_deadline_s(cases: int, warmup: int, runs: int, samples: int) -> tuple[float, float]:
    """(per-case timeout, whole-run deadline) in seconds for a plan of `cases` cases."""
    case = min(CASE_BASE_S + (1 + warmup + runs + samples) * INVOKE_S, 86400.0)
    return case, cases * case + 60.0


def stage_plan(models: dict[str, Path], samples: dict[str, tuple[np.ndarray, np.ndarray]],
               board: Board, stage_dir: Path, peak: dict[str, Path] | None = None,
               top1: bool = False, references: dict[str, Path] | None = None) -> Path:
    """Write plan.json, the models and one samples .npz per model into `stage_dir`.

    `models` maps "<build>/<variant>" to a model file; `samples` maps a build to its
    labelled images; `peak` maps a variant to its synthetic GEMM model. The runner finds
    everything by file name next to plan.json and checks each file's SHA-256 first. With
    `top1`, the runner reports every sample's class and probability (predict --board).
    `references` maps "<build>/<variant>" to the model to time it beside (reference.py).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    for stale in stage_dir.iterdir():  # only this plan's files get pushed
        if stale.is_file():
            stale.unlink()
    entries, peak_entries = [], []
    for key, path in models.items():
        images, labels = samples[key.split("/")[0]]
        write_bytes(stage_dir / Path(path).name, Path(path).read_bytes())
        samples_file = f"{Path(path).stem}_samples.npz"
        write_bytes(stage_dir / samples_file,
                    npz_bytes(x=images, y=labels, host=host_predictions(path, images)))
        entry = {"file": Path(path).name, "sha256": sha256_file(path),
                 "samples": samples_file,
                 "samples_sha256": sha256_file(stage_dir / samples_file),
                 "host_key": "host", "key": key, **({"top1": True} if top1 else {})}
        # The output's: the board's top-1 probability.
        for side, quantization in io_quantization(path).items():
            entry[f"{side}_quantization"] = quantization
        if key in (references or {}):  # named by its bytes: pushed once, whatever it was
            ref = Path(references[key])
            ref_sha = sha256_file(ref)
            ref_name = f"reference_{ref_sha[:16]}{ref.suffix}"
            write_bytes(stage_dir / ref_name, ref.read_bytes())
            entry["reference"] = {"file": ref_name, "sha256": ref_sha}
        entries.append(entry)
    for variant, path in (peak or {}).items():
        write_bytes(stage_dir / Path(path).name, Path(path).read_bytes())
        peak_entries.append({"file": Path(path).name, "sha256": sha256_file(path),
                             "variant": variant, "macs": count_macs(path)})
    cases = (len(entries) + len(peak_entries)) * len(board.threads)
    n_samples = max((len(s[1]) for s in samples.values()), default=0)
    case_timeout, deadline = plan_deadline_s(cases, board.warmup, board.runs, n_samples)
    if references:  # a pair times two models for at least min_seconds each
        pair_s = 2 * (board.warmup + board.runs) * INVOKE_S + 4 * board.min_seconds
        case_timeout += pair_s
        deadline += pair_s * len(board.threads) * len(references)
    if peak_entries:  # a peak case times for at least peak_seconds
        case_timeout += board.peak_seconds
        deadline += board.peak_seconds * len(board.threads) * len(peak_entries)
    plan = {"models": entries, "peak": peak_entries, "threads": list(board.threads),
            "warmup": board.warmup, "runs": board.runs, "cpus": list(board.cpus),
            "case_timeout_s": case_timeout, "deadline_s": deadline,
            "min_rounds": board.min_rounds, "min_seconds": board.min_seconds,
            "peak_seconds": board.peak_seconds}
    write_json(stage_dir / PLAN_JSON, plan)
    return stage_dir / PLAN_JSON


def pick_samples(images: np.ndarray, labels: np.ndarray, count: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), size=count, replace=False))
    return images[idx], labels[idx]
