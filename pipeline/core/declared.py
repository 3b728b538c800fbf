"""A dataset a params file declares (`[[datasets]]`), besides the built-in ones: its
schema and checks, and the registry entry it becomes. Imported by `parse_params` only for a
file that declares one: loading dodo.py (every `doit`) does not compile it otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core.datasets import DATASETS, FORMATS, FRAMINGS, IDX_ROLES, DatasetSpec, RemoteFile
from pipeline.core.params import ParamsError
from pipeline.core.records import record


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {why}")


@record
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
        # The folder of the name `_basename` reads: a trailing slash is not the folder.
        return location.rstrip("/").rsplit("/", 1)[0] + "/"
    # An absolute path joined to base_dir is itself (pathlib's `/`).
    return str((Path(base_dir) / Path(location).expanduser()).parent)
