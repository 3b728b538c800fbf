"""Bench stage: push the .tflite models to a board over SSH, run board/runner.py there, collect.

Boards come from an inventory (board/boards.toml). A board without `host` is this machine:
the same runner runs locally, without SSH. Remote boards are reached with the system OpenSSH
client, so ~/.ssh/config, keys, agents and ProxyJump apply; BatchMode means nothing ever
waits for a password, and host-key checking is left on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import RUNNER, PipelineError, load_runner, report
from pipeline.files import sha256_file, write_json
from pipeline.boards import Board, load_boards  # noqa: F401 (re-exported)

NO_RUNTIME = 3  # the runner's exit status when no TFLite runtime is importable


class BoardError(PipelineError):
    pass


# --- the plan: models, labelled samples and host predictions ------------------------------


def host_predictions(model_path: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    return np.asarray(load_runner().predict(interpreter, images))


def stage_plan(models: dict[str, Path], samples: dict[str, tuple[np.ndarray, np.ndarray]],
               board: Board, stage_dir: Path) -> Path:
    """Write plan.json and one samples .npz per model into `stage_dir`; return the plan path.

    `models` maps "<build>/<variant>" to a .tflite path; `samples` maps a build to its
    labelled images. The runner finds everything by file name next to plan.json.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for key, path in models.items():
        build = key.split("/")[0]
        images, labels = samples[build]
        # The runner sees only this directory, as the board sees only its remote_dir.
        shutil.copyfile(path, stage_dir / Path(path).name)
        samples_file = f"{Path(path).stem}_samples.npz"
        np.savez(stage_dir / samples_file, x=images, y=labels,
                 host=host_predictions(path, images))
        entries.append({"file": Path(path).name, "samples": samples_file, "host_key": "host",
                        "key": key})
    plan = {"models": entries, "threads": list(board.threads), "warmup": board.warmup,
            "runs": board.runs, "cpus": list(board.cpus)}
    write_json(stage_dir / "plan.json", plan)
    return stage_dir / "plan.json"


def pick_samples(images: np.ndarray, labels: np.ndarray, count: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), size=count, replace=False))
    return images[idx], labels[idx]


# --- SSH ----------------------------------------------------------------------------------


def ssh_argv(board: Board, remote_command: Sequence[str]) -> list[str]:
    """The ssh command line; every remote argument is shell-quoted for the remote shell."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={board.connect_timeout_s}"]
    if board.port:
        argv += ["-p", str(board.port)]
    if board.user:
        argv += ["-l", board.user]
    return [*argv, *board.ssh_options, "--", board.host, shlex.join(remote_command)]


def explain_ssh_failure(board: Board, stderr: str) -> str:
    last = (stderr.strip().splitlines() or ["ssh failed with no message"])[-1]
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION" in stderr:
        port = f"-p {board.port} " if board.port else ""
        return (f"board {board.name!r} ({board.where}): host key is unknown or changed, so "
                f"the connection was refused. Check the board's fingerprint (on the board: "
                f"ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then trust it with "
                f"`ssh-keyscan {port}{board.host} >> ~/.ssh/known_hosts` or one interactive "
                f"`ssh {port}{board.host}`.")
    if "Permission denied" in stderr:
        return (f"board {board.name!r} ({board.where}): authentication failed ({last}). "
                "Install a key (ssh-copy-id) or load it into ssh-agent; BatchMode never asks "
                "for a password.")
    return f"board {board.name!r} ({board.where}): unreachable: {last}"


def ssh_run(board: Board, remote_command: Sequence[str], stdin: bytes | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    argv = ssh_argv(board, remote_command)
    try:
        # timeout_s = 0 means "derived from the plan"; until bench derives one, no limit
        # (a 0 s timeout would fail every board at once).
        proc = subprocess.run(argv, input=stdin, capture_output=True,
                              timeout=timeout or board.timeout_s or None, check=False)
    except subprocess.TimeoutExpired:
        raise BoardError(f"board {board.name!r} ({board.where}): no answer within "
                         f"{timeout or board.timeout_s:.0f} s") from None
    if proc.returncode == 255:  # ssh's own failure, not the remote command's
        raise BoardError(explain_ssh_failure(board, proc.stderr.decode(errors="replace")))
    return proc


def remote_sha256(board: Board, names: Sequence[str]) -> dict[str, str]:
    """SHA-256 of the named files already in the board's remote_dir (missing files omitted)."""
    script = 'mkdir -p -- "$1" && cd -- "$1" && shift && sha256sum -- "$@" 2>/dev/null; true'
    proc = ssh_run(board, ["sh", "-c", script, "sh", board.remote_dir, *names], timeout=120)
    sums = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def push(board: Board, files: Sequence[Path]) -> list[str]:
    """Copy each file whose SHA-256 differs on the board; return the names pushed.

    The bytes travel on ssh's stdin to a temporary name that is renamed when complete.
    """
    on_board = remote_sha256(board, [f.name for f in files])
    pushed = []
    for path in files:
        if on_board.get(path.name) == sha256_file(path):
            continue
        script = 'cd -- "$1" && cat > ".$2.partial" && mv -f -- ".$2.partial" "$2"'
        proc = ssh_run(board, ["sh", "-c", script, "sh", board.remote_dir, path.name],
                       stdin=path.read_bytes(), timeout=600)
        if proc.returncode != 0:
            raise BoardError(f"board {board.name!r} ({board.where}): copying {path.name} "
                             f"failed: {proc.stderr.decode(errors='replace').strip()}")
        pushed.append(path.name)
    return pushed


# --- running ------------------------------------------------------------------------------


def _runner_output(board: Board, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    stderr = proc.stderr.decode(errors="replace").strip()
    if proc.returncode == NO_RUNTIME:
        raise BoardError(f"board {board.name!r} ({board.where}): {stderr.removeprefix('error: ')}")
    if proc.returncode != 0:
        raise BoardError(f"board {board.name!r} ({board.where}): runner failed with exit "
                         f"{proc.returncode}: {stderr[-2000:]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BoardError(f"board {board.name!r}: runner printed no JSON: "
                         f"{proc.stdout[:300]!r}") from None


def run_on_board(board: Board, plan_path: Path) -> tuple[dict[str, Any], list[str]]:
    """Run the plan on `board`; return the runner's document and the files pushed."""
    stage = plan_path.parent
    plan = json.loads(plan_path.read_text())
    files = [RUNNER, plan_path,
             *(stage / m[key] for m in plan["models"] for key in ("file", "samples"))]
    if board.is_local:
        try:
            proc = subprocess.run([sys.executable, str(RUNNER), "--plan", str(plan_path)],
                                  capture_output=True, timeout=board.timeout_s or None,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise BoardError(f"board {board.name!r}: runner did not finish within "
                             f"{board.timeout_s:.0f} s") from None
        return _runner_output(board, proc), []
    pushed = push(board, files)
    proc = ssh_run(board, ["sh", "-c", 'cd -- "$1" && shift && exec "$@"', "sh",
                           board.remote_dir, board.python, RUNNER.name, "--plan", plan_path.name])
    return _runner_output(board, proc), pushed


def bench_board(board: Board, models: dict[str, Path],
                samples: dict[str, tuple[np.ndarray, np.ndarray]], work_dir: Path) -> dict:
    """Benchmark every model on one board; the result document for reports/latency/<board>.json."""
    started = time.time()
    plan_path = stage_plan(models, samples, board, work_dir / board.name)
    document, pushed = run_on_board(board, plan_path)
    plan = json.loads(plan_path.read_text())
    by_file = {m["file"]: m["key"] for m in plan["models"]}
    failed = [f"{r['model']} x{r['threads']}: {r['error']}" for r in document["results"]
              if "error" in r]
    if failed:
        raise BoardError(f"board {board.name!r} ({board.where}): {len(failed)} case(s) failed: "
                         + "; ".join(failed[:3]))
    macs = {key: report.count_macs(path) for key, path in models.items()}
    for result in document["results"]:
        key = by_file[result["model"]]
        result["build"], result["variant"] = key.split("/")
        result["sha256"] = sha256_file(models[key])
        result["bytes"] = models[key].stat().st_size
        result["macs"] = macs[key]
    if board.is_local:
        document["compute_floor"] = report.compute_floor()
    return {"board": board.name, "status": "ok", "where": board.where,
            "started": started, "seconds": time.time() - started, "pushed": pushed,
            **document}


def run(board: Board, models: dict[str, Path], datasets: dict[str, Path],
        correctness_samples: int, work_dir: Path, reports_dir: Path,
        inventory: Sequence[Board]) -> dict:
    """The doit action: bench one board, record the result (or the failure), rebuild the report.

    `datasets` maps each build to its dataset .npz. A failure replaces the board's previous
    numbers with the error, so old figures are never shown as fresh.
    """
    from pipeline.preprocess import load_arrays

    picked = {}  # builds sharing a dataset share its samples: load each .npz once
    for npz in set(datasets.values()):
        arrays = load_arrays(npz)
        picked[npz] = pick_samples(arrays["x_test"], arrays["y_test"], correctness_samples)
    samples = {build: picked[npz] for build, npz in datasets.items()}
    result_path = Path(reports_dir) / "latency" / f"{board.name}.json"
    try:
        document = bench_board(board, models, samples, Path(work_dir))
    except BoardError as exc:
        write_json(result_path, {"board": board.name, "status": "failed", "where": board.where,
                                 "started": time.time(), "error": str(exc)})
        report.write_latency_report(reports_dir, inventory, models)
        raise
    write_json(result_path, document)
    report.write_latency_report(reports_dir, inventory, models)
    return document


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    from pipeline.convert import variant_of
    from pipeline.preprocess import load_arrays

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("board", help="board name from the inventory")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("models", type=Path, nargs="+", help="<build>_<variant>.tflite files")
    parser.add_argument("--boards", type=Path, default=Path("board/boards.toml"))
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args(argv)
    board = next((b for b in load_boards(args.boards) if b.name == args.board), None)
    if board is None:
        sys.exit(f"error: no board {args.board!r} in {args.boards}")
    models = {"/".join(variant_of(p)): p for p in args.models}
    arrays = load_arrays(args.data)
    labelled = pick_samples(arrays["x_test"], arrays["y_test"], args.samples)
    samples = {key.split("/")[0]: labelled for key in models}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print(json.dumps(bench_board(board, models, samples, Path(tmp)), indent=1))
        except BoardError as exc:
            sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
