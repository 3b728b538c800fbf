"""Bench stage: push the models to a board over SSH, run board/runner.py there, collect.

Boards come from an inventory (board/boards.toml, see pipeline/core/boards.py). A board without
`host` is this machine: the same runner runs locally, without SSH. Remote boards are reached
with the system OpenSSH client, so ~/.ssh/config, keys, agents and ProxyJump apply; BatchMode
means nothing ever waits for a password, and host-key checking is left on.

The promise of this module: a board's result file is either a complete, validated run or a
recorded failure. It says "running" from the moment a run starts, so even a killed task
never leaves the previous numbers looking fresh.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline import RUNNER, PipelineError, load_runner
from pipeline.bench import report
from pipeline.core.boards import Board, load_boards
from pipeline.core.files import sha256_file, write_bytes, write_json
from pipeline.bench.floor import count_macs
from pipeline.core.layout import PLAN_JSON, Layout

NO_RUNTIME, NO_NUMPY, BAD_PLAN, HOST_GONE = 3, 4, 5, 6  # board/runner.py's exit statuses
MAX_OUTPUT = 16 * 2**20    # bytes read from a runner's stdout (or stderr) before giving up
SSH_KEEPALIVE = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")
# The remote wrapper reports the runner's exit status on stderr and exits 0, so that ssh's
# own exit status 255 always means an SSH failure, never a runner that happened to exit 255.
EXIT_MARK = "RUNNER_EXIT "
# Per case: the child's start and model load, plus a generous 100 ms per invoke (the models
# this pipeline builds take well under 10 ms on a K1 core).
CASE_BASE_S, INVOKE_S = 60.0, 0.1

Progress = Callable[[str], None]


class BoardError(PipelineError):
    pass


# --- the plan: models, labelled samples, host predictions and the peak GEMMs --------------


def host_predictions(model_path: Path, images: np.ndarray) -> np.ndarray:
    """This host's top-1 of each image, by the runner's own code (the board's reference)."""
    from pipeline.core.runtimes import open_model

    return open_model(model_path).board_predictions(images)


def input_quantization(model_path: Path) -> list[float] | None:
    """[scale, zero_point] of an integer ONNX input, which onnxruntime on the board cannot
    read from the session (a TFLite interpreter reports its own); None for other models."""
    from pipeline.core.runtimes import open_model
    from pipeline.core.variants import format_of

    if format_of(model_path) != "onnx":
        return None
    contract = open_model(model_path).io_contract()["input"]
    if "scale" not in contract:
        return None
    return [float(contract["scale"]), int(contract["zero_point"])]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz whose bytes depend only on the arrays (np.savez stamps the current time), so
    the board's copy is recognised by its SHA-256 and not pushed again."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def plan_deadline_s(cases: int, warmup: int, runs: int, samples: int) -> tuple[float, float]:
    """(per-case timeout, whole-run deadline) in seconds for a plan of `cases` cases."""
    case = min(CASE_BASE_S + (1 + warmup + runs + samples) * INVOKE_S, 86400.0)
    return case, cases * case + 60.0


def stage_plan(models: dict[str, Path], samples: dict[str, tuple[np.ndarray, np.ndarray]],
               board: Board, stage_dir: Path, peak: dict[str, Path] | None = None,
               top1: bool = False) -> Path:
    """Write plan.json, the models and one samples .npz per model into `stage_dir`.

    `models` maps "<build>/<variant>" to a model file; `samples` maps a build to its
    labelled images; `peak` maps a variant to its synthetic GEMM model. The runner finds
    everything by file name next to plan.json and checks each file's SHA-256 first. With
    `top1`, the runner reports every sample's class and probability (predict --board).
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
        quantization = input_quantization(path)
        if quantization:
            entry["input_quantization"] = quantization
        entries.append(entry)
    for variant, path in (peak or {}).items():
        write_bytes(stage_dir / Path(path).name, Path(path).read_bytes())
        peak_entries.append({"file": Path(path).name, "sha256": sha256_file(path),
                             "variant": variant, "macs": count_macs(path)})
    cases = (len(entries) + len(peak_entries)) * len(board.threads)
    n_samples = max((len(s[1]) for s in samples.values()), default=0)
    case_timeout, deadline = plan_deadline_s(cases, board.warmup, board.runs, n_samples)
    plan = {"models": entries, "peak": peak_entries, "threads": list(board.threads),
            "warmup": board.warmup, "runs": board.runs, "cpus": list(board.cpus),
            "case_timeout_s": case_timeout, "deadline_s": deadline}
    write_json(stage_dir / PLAN_JSON, plan)
    return stage_dir / PLAN_JSON


def pick_samples(images: np.ndarray, labels: np.ndarray, count: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), size=count, replace=False))
    return images[idx], labels[idx]


# --- SSH ----------------------------------------------------------------------------------


def ssh_argv(board: Board, remote_command: Sequence[str]) -> list[str]:
    """The ssh command line; every remote argument is shell-quoted for the remote shell."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={board.connect_timeout_s}",
            *SSH_KEEPALIVE]
    if board.port:
        argv += ["-p", str(board.port)]
    if board.user:
        argv += ["-l", board.user]
    return [*argv, *board.ssh_options, "--", board.host, shlex.join(remote_command)]


def resolved_address(board: Board) -> tuple[str, int, str]:
    """(HostName, Port, first UserKnownHostsFile) as ssh resolves them for `board.host`,
    so advice works when `host` is an alias from ~/.ssh/config."""
    argv = ["ssh", "-G", *(["-p", str(board.port)] if board.port else []),
            *board.ssh_options, "--", board.host]
    config: dict[str, str] = {}
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        for line in out.stdout.splitlines():
            key, _, value = line.partition(" ")
            config.setdefault(key, value)
    except (OSError, subprocess.SubprocessError):
        pass
    port = int(config.get("port", board.port or 22))
    known = (config.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
    return config.get("hostname", board.host), port, known


def explain_ssh_failure(board: Board, stderr: str) -> str:
    lines = [line for line in report.clean_text(stderr).splitlines() if line.strip()]
    last = lines[-1] if lines else "ssh failed with no message"
    name = f"board {board.name!r} ({board.where})"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        host, port, known = resolved_address(board)
        entry = f"[{host}]:{port}" if port != 22 else host
        said = "\n".join(f"    {line}" for line in lines[-30:])
        return (f"{name}: the board's host key CHANGED, so the connection was refused. "
                f"ssh says:\n{said}\nIf the board was reinstalled, verify the new fingerprint "
                "shown above on the board itself (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub), then remove the old key with "
                f"`ssh-keygen -f {known} -R {shlex.quote(entry)}` and trust the new one with "
                f"`ssh-keyscan -p {port} {shlex.quote(host)} >> {known}`. If it was not "
                "reinstalled, someone may be intercepting the connection: do not connect.")
    if "Host key verification failed" in stderr:
        host, port, known = resolved_address(board)
        return (f"{name}: the board's host key is not known, so the connection was refused "
                f"({last}). Check the board's fingerprint (on the board: ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub), compare it with "
                f"`ssh-keyscan -p {port} {shlex.quote(host)} | ssh-keygen -lf -`, then trust it "
                f"with `ssh-keyscan -p {port} {shlex.quote(host)} >> {known}` or one "
                f"interactive `ssh {shlex.quote(board.host)}`.")
    if "Permission denied" in stderr:
        return (f"{name}: authentication failed ({last}). Install a key (ssh-copy-id) or load "
                "it into ssh-agent; BatchMode never asks for a password.")
    return f"{name}: unreachable: {last}"


def stream_process(argv: Sequence[str], timeout: float, describe: str,
                   on_progress: Progress | None = None, stdin_data: bytes | None = None,
                   step: str = "the runner") -> tuple[int, bytes, str]:
    """Run `argv`, reading at most MAX_OUTPUT bytes of stdout; (status, stdout, stderr).

    stdin stays open while we wait (the runner stops when it closes) and is closed, and the
    process killed, on every way out of this function: timeout, too much output, Ctrl-C.
    Lines `progress {json}` on stderr are passed to `on_progress` as they arrive.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out = bytearray()
    err_tail: deque[str] = deque(maxlen=200)
    overflow: list[str] = []

    def read_stdout() -> None:
        while block := proc.stdout.read(65536):
            if len(out) + len(block) > MAX_OUTPUT:
                overflow.append("stdout")
                proc.kill()
                return
            out.extend(block)

    def read_stderr() -> None:
        total = 0
        for raw in proc.stderr:
            total += len(raw)
            if total > MAX_OUTPUT:
                overflow.append("stderr")
                proc.kill()
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith("progress ") and on_progress:
                on_progress(line[len("progress "):])
            else:
                err_tail.append(line[:2000])

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if stdin_data is not None:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BoardError(f"{describe}: {step} gave no result within {timeout:.0f} s; "
                             "stopped it (what it ran on the board stops when the connection "
                             "closes)") from None
        for reader in readers:
            reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
    if overflow:
        raise BoardError(f"{describe}: printed more than {MAX_OUTPUT >> 20} MiB on "
                         f"{overflow[0]}; stopped it")
    return status, bytes(out), "\n".join(err_tail)


def ssh_run(board: Board, remote_command: Sequence[str], stdin: bytes | None = None,
            timeout: float = 120, on_progress: Progress | None = None,
            step: str = "the runner") -> tuple[int, bytes, str]:
    """Run a remote command; an SSH failure (exit 255) raises BoardError explaining it."""
    try:
        status, out, err = stream_process(ssh_argv(board, remote_command), timeout,
                                          f"board {board.name!r} ({board.where})",
                                          on_progress, stdin, step)
    except FileNotFoundError:
        raise BoardError(f"board {board.name!r}: the OpenSSH client `ssh` is not on PATH; "
                         "install openssh-client") from None
    if status == 255:  # ssh's own failure, not the remote command's
        raise BoardError(explain_ssh_failure(board, err))
    return status, out, err


# The remote side, in POSIX sh with coreutils. remote_dir is created 0700 and refused, as
# ssh's StrictModes would, if it is a symlink, not ours, or writable by others.
PREPARE = r'''umask 077
d=$1; shift
if [ -L "$d" ]; then echo "remote_dir $d is a symbolic link; refusing to use it" >&2; exit 90; fi
mkdir -p -- "$d" || exit 91
if [ "$(stat -c %u -- "$d")" != "$(id -u)" ]; then
  echo "remote_dir $d is not owned by $(id -un); refusing to use it" >&2; exit 92; fi
mode=$(stat -c %A -- "$d")
case $mode in ?????w????|????????w?)
  echo "remote_dir $d is writable by group or others ($mode); refusing to use it" \
       "(chmod go-w)" >&2; exit 93;; esac
cd -- "$d" && sha256sum -- "$@" 2>/dev/null; true'''

# One file: into a fresh mktemp name (O_EXCL: never follows a planted symlink), checked
# against the expected SHA-256, renamed into place; the temporary file goes on any failure.
PUT = r'''umask 077; cd -- "$1" || exit 1
t=$(mktemp ".$2.partial.XXXXXXXX") || exit 1
trap 'rm -f -- "$t"' EXIT HUP INT TERM
cat > "$t" || { echo "writing $2 failed" >&2; exit 1; }
sum=$(sha256sum < "$t") || exit 1
if [ "${sum%% *}" != "$3" ]; then echo "$2 arrived damaged (SHA-256 ${sum%% *})" >&2; exit 1; fi
mv -f -- "$t" "$2" || exit 1
trap - EXIT'''

# Runs "$@" so that nothing it starts outlives the host's interest: under coreutils
# `timeout` (its own process group, which it signals whole) with the host's own time limit,
# so the board stops it even when the host cannot reach it any more; and a watcher that
# stops it as soon as the host closes the connection (stdin EOF), even when the command
# hangs before it could notice (a python stuck at start-up, a hashing stuck on a dead mount).
# The host never writes to stdin here, so the watcher and the runner can both wait on it.
# (A background job's stdin is /dev/null before its redirections apply, so the real stdin
# is kept on fd 3 first.)
GUARD = r'''guard() {
  limit=$1; shift
  exec 3<&0
  if command -v timeout >/dev/null 2>&1; then timeout -k 5 "$limit" "$@" <&3 3<&- &
  else "$@" <&3 3<&- & fi
  pid=$!
  ( while IFS= read -r _; do :; done; kill -TERM "$pid" 2>/dev/null ) <&3 3<&- \
    >/dev/null 2>&1 &
  watcher=$!
  exec 3<&-
  wait "$pid"; status=$?
  kill "$watcher" 2>/dev/null
  return "$status"
}'''
TIMED_OUT = 124  # coreutils timeout's status when the limit passed

RUN = GUARD + f'''
cd -- "$1" || exit 97
limit=$2; shift 2
guard "$limit" "$@"
printf '\\n{EXIT_MARK}%s\\n' "$?" >&2'''

GUARDED = GUARD + '''
guard "$@"'''


PREPARE_TIMEOUT_S = 120.0  # without timeout_s: hashing a few MB never takes this long


def remote_sha256(board: Board, names: Sequence[str]) -> dict[str, str]:
    """Prepare remote_dir and return the SHA-256 of the named files already there."""
    limit = board.timeout_s or PREPARE_TIMEOUT_S
    status, out, err = ssh_run(
        board, ["sh", "-c", GUARDED, "sh", f"{limit:g}", "sh", "-c", PREPARE, "sh",
                board.remote_path, *names],
        timeout=limit, step="the prepare step (creating remote_dir, hashing the files there)")
    if status == TIMED_OUT:
        raise BoardError(f"board {board.name!r} ({board.where}): the prepare step (creating "
                         f"remote_dir, hashing the files there) took over {limit:g} s on the "
                         "board; stopped it")
    if status != 0:
        why = report.clean_text(err).strip() or f"preparing remote_dir failed ({status})"
        raise BoardError(f"board {board.name!r} ({board.where}): {why}")
    sums = {}
    for line in out.decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def push_file(board: Board, path: Path, sha256: str) -> None:
    status, _, err = ssh_run(board, ["sh", "-c", PUT, "sh", board.remote_path, path.name,
                                     sha256], stdin=path.read_bytes(), timeout=600)
    if status != 0:
        raise BoardError(f"board {board.name!r} ({board.where}): copying {path.name} failed: "
                         f"{report.clean_text(err).strip()}")


def push(board: Board, files: Sequence[Path]) -> list[str]:
    """Copy each file whose SHA-256 differs on the board; return the names pushed."""
    on_board = remote_sha256(board, [f.name for f in files])
    pushed = []
    for path in files:
        digest = sha256_file(path)
        if on_board.get(path.name) != digest:
            push_file(board, path, digest)
            pushed.append(path.name)
    return pushed


# --- running ------------------------------------------------------------------------------


def explain_runner_exit(board: Board, status: int, stderr: str) -> str:
    name = f"board {board.name!r} ({board.where})"
    text = "\n".join(line for line in report.clean_text(stderr).splitlines()
                     if line.strip() and not line.startswith(EXIT_MARK)).strip()
    message = text.splitlines()[-1].removeprefix("error: ") if text else "(no message)"
    if status == NO_RUNTIME or status == NO_NUMPY or status == BAD_PLAN:
        return f"{name}: {message}"
    if status > 128 and status - 128 in signal.valid_signals():
        sig = signal.Signals(status - 128)
        hint = (" - the runtime uses CPU instructions this core does not have; install a "
                "runtime built for this board's ISA" if sig == signal.SIGILL else "")
        return f"{name}: the runner was killed by {sig.name}{hint}. Last output: {message}"
    if status == 127:
        return f"{name}: `{board.python}` was not found on the board (set `python`)"
    if status == TIMED_OUT:
        return (f"{name}: the runner did not finish within the time limit on the board "
                "(timeout_s, or the plan's deadline + 30 s); the board stopped it")
    if status == 97:
        return f"{name}: cannot enter remote_dir {board.remote_dir!r}"
    return f"{name}: the runner exited with status {status}: {text[-2000:] or '(no message)'}"


def run_on_board(board: Board, plan_path: Path, on_progress: Progress | None = None,
                 ) -> tuple[dict[str, Any], list[str]]:
    """Run the plan on `board`; return the runner's document and the files pushed."""
    stage = plan_path.parent
    plan = json.loads(plan_path.read_text())
    timeout = board.timeout_s or plan["deadline_s"] + 30
    describe = f"board {board.name!r} ({board.where})"
    if board.is_local:
        argv = [sys.executable, str(RUNNER), "--plan", str(plan_path), "--stop-on-eof"]
        status, out, err = stream_process(argv, timeout, describe, on_progress)
        if status < 0:
            status = 128 - status  # as a shell reports a signal
        pushed: list[str] = []
    else:
        files = [RUNNER, plan_path, *(stage / m[key] for m in plan["models"]
                                      for key in ("file", "samples")),
                 *(stage / p["file"] for p in plan["peak"])]
        pushed = push(board, files)
        shell_status, out, err = ssh_run(
            board, ["sh", "-c", RUN, "sh", board.remote_path, f"{timeout:g}", board.python,
                    RUNNER.name, "--plan", plan_path.name, "--stop-on-eof"],
            timeout=timeout, on_progress=on_progress)
        marks = [line for line in err.splitlines() if line.startswith(EXIT_MARK)]
        status = int(marks[-1][len(EXIT_MARK):]) if marks else shell_status
    if status != 0:
        raise BoardError(explain_runner_exit(board, status, err))
    try:
        return json.loads(out.decode("utf-8")), pushed
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoardError(f"{describe}: the runner's output is not a JSON document ({exc}): "
                         f"{report.clean_text(out[:300].decode('utf-8', 'replace'))!r}") from None


# What a good case must carry, and the types it must have.
CASE_FIELDS = {"init_ms": float, "first_us": float, "mean_us": float, "std_us": float,
               "min_us": float, "max_us": float, "p10_us": float, "p50_us": float,
               "p90_us": float, "p99_us": float, "runs": int, "peak_rss_mb": float,
               "model_rss_mb": float, "cpus": list}
SAMPLE_FIELDS = {"samples": int, "accuracy": float, "agreement": float, "disagreements": list}


def _has_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def check_document(document: Any, plan: dict[str, Any]
                   ) -> tuple[list[dict], list[dict], list[str], list[dict]]:
    """Match the runner's document against the plan: (good results, good peak, problems,
    missing), `missing` being the model cases the board has no runtime for.

    Every planned file x threads case must come back exactly once with the expected fields
    and types; anything else is a problem naming the case. A document without the expected
    shape at all raises BoardError.
    """
    if not isinstance(document, dict):
        raise BoardError(f"the runner's document is a {type(document).__name__}, not an object")
    for key, kind in (("machine", dict), ("runtimes", dict), ("results", list)):
        if not isinstance(document.get(key), kind):
            raise BoardError(f"the runner's document has no {key!r} {kind.__name__}")
    good: dict[str, list[dict]] = {"models": [], "peak": []}
    problems, missing = [], []
    for kind in ("models", "peak"):
        planned = {(m["file"], t) for m in plan[kind] for t in plan["threads"]}
        seen: set[tuple[str, int]] = set()
        received = document.get("results" if kind == "models" else "peak") or []
        for r in received if isinstance(received, list) else []:
            case = (r.get("model"), r.get("threads")) if isinstance(r, dict) else (None, None)
            label = f"{case[0]} x{case[1]}"
            if case not in planned:
                problems.append(f"{label}: not in the plan")
                continue
            if case in seen:
                problems.append(f"{label}: reported twice")
                continue
            seen.add(case)
            if "error" in r and str(r["error"]).startswith(load_runner().NO_RUNTIME_MARK):
                if kind == "models":  # a missing peak twin only leaves that floor unmeasured
                    missing.append({"model": case[0], "threads": case[1],
                                    "error": report.clean_text(str(r["error"]))})
                continue
            if "error" in r:
                problems.append(f"{label}: {report.clean_text(str(r['error']))}")
                continue
            fields = {**CASE_FIELDS, **(SAMPLE_FIELDS if kind == "models" else {})}
            bad = [k for k, t in fields.items() if not _has_type(r.get(k), t)]
            if bad:
                problems.append(f"{label}: missing or mistyped {', '.join(bad)}")
                continue
            good[kind].append(r)
        problems += [f"{f} x{t}: missing from the runner's results"
                     for f, t in sorted(planned - seen)]
    return good["models"], good["peak"], problems, missing


def bench_board(board: Board, models: dict[str, Path],
                samples: dict[str, tuple[np.ndarray, np.ndarray]], work_dir: Path,
                peak: dict[str, Path] | None = None,
                on_progress: Progress | None = None) -> dict:
    """Benchmark every model on one board; the document for reports/latency/<board>.json.

    Its status is "ok" when every planned case came back valid, else "partial" with the good
    cases and `errors` naming the bad ones. Raises BoardError when nothing usable came back.
    """
    if not models:  # every build blocked (see the task's "not timing" line): time nothing
        raise BoardError(f"board {board.name!r} ({board.where}): no model to time: "
                         "no build has its dataset, so no model was built; give the "
                         "pipeline a copy of the data (PIPELINE_MIRROR=<dir or URL>, "
                         "docs/offline.md) and run doit again")
    started = time.time()
    # An emulated board's peak is qemu's, not a machine's, so it gets no floor (and its float
    # GEMM would take minutes under emulation).
    plan_path = stage_plan(models, samples, board, Path(work_dir) / board.name,
                           None if board.emulated else peak)
    plan = json.loads(plan_path.read_text())
    document, pushed = run_on_board(board, plan_path, on_progress)
    try:
        results, peak_results, problems, missing = check_document(document, plan)
    except BoardError as exc:
        raise BoardError(f"board {board.name!r} ({board.where}): {exc}") from None
    if not results:
        raise BoardError(f"board {board.name!r} ({board.where}): no valid result: "
                         + "; ".join([*problems, *(m["error"] for m in missing)][:5]))
    by_file = {m["file"]: m for m in plan["models"]}
    for result in [*results, *missing]:
        entry = by_file[result["model"]]
        result["build"], result["variant"] = entry["key"].split("/")
        result["sha256"] = entry["sha256"]
    for result in results:
        path = models[f"{result['build']}/{result['variant']}"]
        result["bytes"] = path.stat().st_size
        result["macs"] = count_macs(path)
    return {"board": board.name, "status": "partial" if problems or missing else "ok",
            "errors": problems, "missing": missing, "where": board.where,
            "emulated": board.emulated, "measured_utc": report.utc_now(), "started": started,
            "seconds": time.time() - started, "pushed": pushed,
            "machine": document["machine"], "runtimes": document["runtimes"],
            "cpus": document.get("cpus"), "results": results, "peak": peak_results}


def missing_summary(document: dict) -> str:
    """One line per missing runtime: which rows were not timed, and why (with the hint)."""
    by_error: dict[str, list[str]] = {}
    for m in document.get("missing", []):
        by_error.setdefault(m["error"], []).append(f"{m['build']}/{m['variant']} x{m['threads']}")
    return "\n".join(f"board {document['board']!r}: {len(rows)} row(s) not timed "
                     f"({', '.join(rows)}): {error}" for error, rows in by_error.items())


def progress_printer(board: Board, stream=None) -> Progress:
    """One console line per finished case, as the runner reports it (to stdout by default)."""
    def show(line: str) -> None:
        out = stream or sys.stdout
        try:
            event = json.loads(line)
            error = str(event.get("error") or "")
            if error.startswith(load_runner().NO_RUNTIME_MARK):  # the hint comes once, at the end
                error = report.missing_state(error)
            else:
                error = f"ERROR {error}" if error else ""
            what = (f"{event['model']} x{event['threads']}: "
                    + (error or f"p50 {event['p50_us']:.1f} us"))
            out.write(f"bench:{board.name} [{event['case']}/{event['of']}] "
                      f"{report.clean_text(what)}\n")
        except (ValueError, KeyError, TypeError):
            out.write(f"bench:{board.name} {report.clean_text(line)[:200]}\n")
        out.flush()
    return show


def describe_failure(board: Board, exc: BaseException) -> str:
    if isinstance(exc, BoardError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return f"board {board.name!r} ({board.where}): interrupted (Ctrl-C)"
    return f"board {board.name!r} ({board.where}): {type(exc).__name__}: {exc}"


def run(board: Board, models: dict[str, Path], datasets: dict[str, Path],
        correctness_samples: int, layout: Layout, inventory: Sequence[Board],
        peak: dict[str, Path] | None = None, max_age_hours: float | None = None) -> dict:
    """The doit action: bench one board, record the result (or the failure), rebuild the report.

    `datasets` maps each build to its dataset .npz. The board's result file says "running"
    before anything else happens and is replaced by the result or the failure on every way
    out, so old figures are never shown as fresh.
    """
    from pipeline.stages.preprocess import load_arrays

    result_path = layout.board_result(board.name)
    running = {"board": board.name, "status": "running", "where": board.where,
               "emulated": board.emulated, "started_utc": report.utc_now()}
    try:
        write_json(result_path, running)
    except BaseException:
        result_path.unlink(missing_ok=True)  # never leave the old numbers in place
        raise

    def rebuild_report(table: bool = True) -> None:
        # No board failures: this board's is this task's error, which doit prints, and
        # another board's is that task's, in this doit run or the one that timed it (in
        # whatever order doit ran them); latency.md and `python -m pipeline.report` show all.
        report.write_latency_report(layout, inventory, models, max_age_hours,
                                    table=table, failures=False)

    # At once, so that a run killed from here on leaves latency.* showing this board as
    # INCOMPLETE rather than its previous figures as fresh.
    try:
        rebuild_report(table=False)  # the console gets the table once, at the end
    except Exception as report_exc:  # an unreadable other board must not stop this one
        print(f"latency report not rebuilt: {report_exc}", file=sys.stderr)
    try:
        picked = {}  # builds sharing a dataset share its samples: load each .npz once
        for npz in set(datasets.values()):
            arrays = load_arrays(npz)
            picked[npz] = pick_samples(arrays["x_test"], arrays["y_test"], correctness_samples)
        samples = {build: picked[npz] for build, npz in datasets.items()}
        document = bench_board(board, models, samples, layout.bench_root(), peak,
                               progress_printer(board))
        write_json(result_path, document)
    except BaseException as exc:
        message = describe_failure(board, exc)
        write_json(result_path, {**running, "status": "failed", "error": message,
                                 "measured_utc": report.utc_now()})
        try:
            rebuild_report()
        except Exception as report_exc:  # the board's own failure is the news
            print(f"latency report not rebuilt: {report_exc}", file=sys.stderr)
        if isinstance(exc, Exception) and not isinstance(exc, BoardError):
            raise BoardError(message) from exc
        raise
    rebuild_report()
    if document["missing"]:  # what this board cannot run is a fact about it, not a failure
        print(report.clean_text(missing_summary(document)))
    if document["errors"]:
        raise BoardError(f"board {board.name!r} ({board.where}): "
                         f"{len(document['errors'])} case(s) failed (the good ones are in the "
                         "report): " + "; ".join(document["errors"][:5]))
    disagree = [f"{r['build']}/{r['variant']} x{r['threads']} on {len(r['disagreements'])} "
                "sample(s)" for r in document["results"] if r["agreement"] < 1]
    if disagree:
        raise BoardError(f"board {board.name!r} ({board.where}): predictions differ from the "
                         "host's for " + "; ".join(disagree) + " (report written)")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    from pipeline.stages.convert import variant_of
    from pipeline.stages.preprocess import load_arrays

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("board", help="board name from the inventory")
    parser.add_argument("data", type=Path, help="dataset .npz written by preprocess")
    parser.add_argument("models", type=Path, nargs="+", help="<build>_<variant> model files")
    parser.add_argument("--boards", type=Path, default=Path("board/boards.toml"))
    from pipeline.core.params import BenchParams

    # The schema's default (pipeline/core/params.py), as the bench task's: never a second copy.
    parser.add_argument("--samples", type=int, default=BenchParams().correctness_samples,
                        help="default: bench.correctness_samples's, %(default)s")
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
            document = bench_board(board, models, samples, Path(tmp),
                                   on_progress=progress_printer(board, sys.stderr))
        except BoardError as exc:
            sys.exit(f"error: {exc}")
        print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
