"""The board inventory (board/boards.toml): schema, validation and loading.

Imports neither numpy nor TensorFlow: dodo.py loads the inventory on every `doit` call,
including no-op builds and `doit list`, which must pay only for doit itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.core.params import ParamsError, check_fields, param, parse_section, read_toml
from pipeline.core.records import record

# Board names become task names and file names: keep them short and shell- and path-safe.
BOARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


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


