"""The board inventory (board/boards.toml): schema, validation and loading.

Imports neither numpy nor TensorFlow: dodo.py loads the inventory on every `doit` call,
including no-op builds and `doit list`, which must pay only for doit itself.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.core.params import ParamsError, check_fields, param, parse_section, read_toml
from pipeline.core.records import record

# Board names become task names and file names: keep them short and shell- and path-safe.
BOARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_UTC_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


@record
class Board:
    name: str
    host: str = ""                 # ssh alias or address; empty = run here without SSH
    user: str = ""
    port: int = param(0, "0 = ssh's own default / ~/.ssh/config.", low=0, high=65535)
    ssh_options: tuple[str, ...] = ()
    remote_dir: str = "tflite-bench"   # relative to the remote home unless absolute
    python: str = "python3"
    threads: tuple[int, ...] = param((1,), "Thread counts each model is timed at.", low=1,
                                     distinct=True)
    cpus: tuple[int, ...] = param((), "CPU ids the runner is pinned to (empty: any).", low=0,
                                  distinct=True)
    warmup: int = param(10, "Untimed invocations before timing.", low=0)
    runs: int = param(100, "Timed invocations per model and thread count.", low=1)
    # A case timed beside its reference (bench/reference.py) runs interleaved rounds until
    # both: at least min_rounds rounds (the verdict's samples per model; Mann-Whitney U needs
    # 5 per side to reach p < 0.01) and min_seconds of timed invokes per model (a microsecond
    # model gets more invokes per round, not a verdict on 20 invokes).
    min_rounds: int = param(20, "Rounds of a case timed beside its reference, at least.",
                            low=5)
    min_seconds: float = param(0.5, "Seconds of timed invokes per model of such a case, at "
                               "least.", low=0, high=600)
    # The floor's rate: the best invoke of a peak GEMM over at least this much timing (a
    # best-of needs time for the machine to have one quiet moment).
    peak_seconds: float = param(1.0, "Seconds of timing of each peak-rate case, at least.",
                                low=0, high=600)
    connect_timeout_s: int = param(10, "Seconds ssh waits for the connection.", low=1)
    timeout_s: float = param(0.0, "0 = derived from the plan (see bench.plan_deadline_s).",
                             low=0)
    emulated: bool = False

    def __post_init__(self) -> None:
        if not BOARD_NAME.fullmatch(self.name):
            shown = self.name if len(self.name) <= 40 else self.name[:40] + "..."
            raise ParamsError(f"boards.name: {shown!r} must be 1-64 ASCII letters, digits, "
                              "- and _, not starting with - (it names a task and files)")
        key = f"boards[{self.name}]"
        if not self.remote_dir.strip():
            raise ParamsError(f"{key}.remote_dir: must not be empty")
        if self.remote_dir.startswith("~") and not self.remote_dir.startswith("~/"):
            raise ParamsError(f"{key}.remote_dir: {self.remote_dir!r}: only ~/ (the login "
                              "user's home) is understood; give an absolute path instead")
        if self.remote_dir.rstrip("/") in ("~", "") or self.remote_dir in ("/", "."):
            raise ParamsError(f"{key}.remote_dir: {self.remote_dir!r} is a home or root "
                              "directory; name a directory of its own, e.g. tflite-bench")
        if not self.threads:
            raise ParamsError(f"{key}.threads: a non-empty list of counts >= 1")
        check_fields(self, key)
        if self.host.startswith("-"):
            raise ParamsError(f"{key}.host: must not start with '-'")

    @property
    def is_local(self) -> bool:
        return not self.host

    @property
    def where(self) -> str:
        """How errors name the board: host and port, never the user."""
        if self.is_local:
            return "this machine"
        return f"host {self.host}" + (f" port {self.port}" if self.port else "")

    @property
    def label(self) -> str:
        """How every message names the board: `board 'k1' (host k1.lan port 2222)`."""
        return f"board {self.name!r} ({self.where})"

    @property
    def remote_path(self) -> str:
        """remote_dir as the remote shell should see it: ~/x is x under the login home
        (ssh starts commands there), because a quoted ~ is never expanded."""
        return self.remote_dir[2:] if self.remote_dir.startswith("~/") else self.remote_dir

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def public_settings(self) -> dict[str, Any]:
        """`settings()` for a record other people read (a nightly's manifest.json): who logs
        in and with which key or config file are replaced by REDACTED."""
        user, at, host = self.host.rpartition("@")
        return {**asdict(self), "host": f"{REDACTED}@{host}" if at else self.host,
                "user": REDACTED if self.user else "",
                "ssh_options": redacted_ssh_options(self.ssh_options)}


REDACTED = "<redacted>"
# ssh(1) flags and -o keywords whose value names a login, a key, a certificate, a config
# file or an agent socket. Only the values go: the option itself still shows how ssh ran.
_SECRET_FLAGS = ("-i", "-l", "-F", "-S", "-J")
_SECRET_KEYWORDS = {"identityfile", "user", "certificatefile", "identityagent",
                    "controlpath", "proxyjump", "proxycommand", "userknownhostsfile",
                    "globalknownhostsfile", "pkcs11provider", "securitykeyprovider"}


def redacted_ssh_options(options: tuple[str, ...] | list[str]) -> list[str]:
    """`options` with the value of every option in _SECRET_FLAGS/_SECRET_KEYWORDS replaced by
    REDACTED, in each spelling ssh accepts: `-i X`, `-iX`, `-o K=X`, `-o "K X"`, `-oK=X`."""
    out: list[str] = []
    hide_next = False
    for word in options:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif word in _SECRET_FLAGS:
            out.append(word)
            hide_next = True
        elif word[:2] in _SECRET_FLAGS:
            out.append(word[:2] + REDACTED)
        else:
            prefix = "-o" if word.startswith("-o") else ""
            body = word[len(prefix):]
            keyword = re.split(r"[=\s]", body.strip(), maxsplit=1)[0]
            secret = keyword.lower() in _SECRET_KEYWORDS and keyword != body.strip()
            out.append(f"{prefix}{keyword}={REDACTED}" if secret else word)
    return out


def measured_within(result_path: Path, hours: float) -> bool:
    """doit `uptodate` check: the board's last result is a success measured < `hours` ago.

    A success is what `bench_succeeded` says: timing it again would not change a board
    that lacks a runtime for some models. A time in the future is not
    fresh (a clock set wrong would otherwise keep old figures for as long as it is wrong).
    Reads one small JSON and imports nothing heavy (dodo.py calls it on every `doit`).
    """
    try:
        doc = json.loads(Path(result_path).read_text())
        stamp = doc["measured_utc"]
        # Not strptime: its first call imports _strptime and builds its locale's patterns
        # (5-15 ms of a no-op `doit`); the pattern is utc_now()'s "%Y-%m-%dT%H:%M:%SZ".
        if not _UTC_STAMP.fullmatch(stamp):
            return False
        when = dt.datetime.fromisoformat(stamp[:-1])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    age = dt.datetime.now(dt.timezone.utc) - when.replace(tzinfo=dt.timezone.utc)
    return bench_succeeded(doc) and 0 <= age.total_seconds() < hours * 3600


def bench_succeeded(doc: Any) -> bool:
    """Whether a board's bench document is a success: `ok`, or `partial` only because the
    board has no runtime for some rows (NO RUNTIME: the virtual K1, a K1 without TFLite) and
    no case failed, so the board did all it can. The bench's freshness check, the nightly's
    board status and its NO RUNTIME count all ask this one function."""
    if not isinstance(doc, dict) or doc.get("status") not in ("ok", "partial"):
        return False
    if doc["status"] == "ok":
        return True
    errors, missing = doc.get("errors"), doc.get("missing")
    if errors != [] or not isinstance(missing, list) or not missing:
        return False
    from pipeline import load_runner  # standard library only: cheap on dodo.py's path

    mark = load_runner().NO_RUNTIME_MARK  # the runner's own word for it: one place
    return all(isinstance(m, dict) and str(m.get("error", "")).startswith(mark) for m in missing)


def load_boards(path: Path) -> tuple[Board, ...]:
    doc = read_toml(path)
    try:
        unknown = set(doc) - {"boards"}
        if unknown:
            raise ParamsError(f"unknown key(s) {sorted(unknown)}; declare [[boards]] entries")
        boards = tuple(parse_section(Board, "boards", b) for b in doc.get("boards", []))
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    names = [b.name for b in boards]
    if len(set(names)) != len(names):
        raise ParamsError(f"{path}: duplicate board names in {names}")
    return boards


