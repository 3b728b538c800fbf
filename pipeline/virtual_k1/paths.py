"""Where a virtual K1's files live (BoardPaths: the shared cache, one board's state), its
errors and the names every module of it shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from pipeline import PipelineError

GUEST_USER, GUEST_UID = "k1", 1000
GUEST_HOME = f"/home/{GUEST_USER}"
DEFAULT_NAME = "virtual-k1"
UNAVAILABLE = 2    # exit status of `up` when this machine cannot host the board at all
Log = Callable[[str], None]


class VirtualK1Error(PipelineError):
    pass


class Unavailable(VirtualK1Error):
    """This machine cannot host a virtual K1 (not root, no binfmt, archive unreachable)."""


def default_cache(env: Mapping[str, str]) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tflite-pipeline" / "virtual-k1"


@dataclass(frozen=True)
class BoardPaths:
    """Where everything lives. The cache (root file system, packages) is shared by every
    board; a state directory (keys, sshd, inventory) belongs to one running board."""
    cache: Path
    state: Path

    @property
    def rootfs(self) -> Path:
        return self.cache / "rootfs"

    @property
    def debs(self) -> Path:
        return self.cache / "apt" / "archives"

    @property
    def lists(self) -> Path:
        return self.cache / "apt" / "lists"

    @property
    def lists_meta(self) -> Path:
        return self.cache / "apt" / "lists.json"

    def state_file(self, name: str) -> Path:
        return self.state / name

    @property
    def inventory(self) -> Path:
        return self.state / "boards.toml"

    @property
    def record(self) -> Path:
        return self.state / "up.json"
