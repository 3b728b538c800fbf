"""Download stage: fetch a dataset's IDX archives from the first mirror that serves good bytes.

Each file is streamed to a hidden temporary name, verified (published archive MD5, or the
SHA-256 of the decompressed payload), and only then renamed into the cache. A mirror that
fails or serves different bytes is reported and the next one is tried.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.parse
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence, TextIO

from pipeline import PipelineError
from pipeline.core.datasets import DATASETS, DatasetSpec, RemoteFile, known_file
from pipeline.core.files import atomic_path
from pipeline.core.lookup import unavailable  # noqa: F401 (the stage's API: tests)
from pipeline.core.mirrors import (  # noqa: F401 (the stage's API: tests, conftest)
    dataset_mirror, mirror_variable, mirrors_for, unavailable_here, user_mirror)

Progress = Callable[[str, int, int | None], None]


class DownloadError(PipelineError):
    pass


def _open_source(mirror: str, name: str, timeout_s: float) -> tuple[BinaryIO, int | None]:
    """Open `name` on a mirror given as http(s) URL, file:// URL or plain directory."""
    if mirror.startswith(("http://", "https://")):
        # Imported here: urllib.request pulls in http.client and email (15-50 ms), which only
        # a download from a URL needs (the tests import this module for its other functions).
        import urllib.request

        url = urllib.parse.urljoin(mirror.rstrip("/") + "/", urllib.parse.quote(name))
        response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 (scheme checked)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    directory = Path(urllib.parse.urlparse(mirror).path if mirror.startswith("file://") else mirror)
    path = directory / name
    try:
        return open(path, "rb"), path.stat().st_size
    except FileNotFoundError:
        raise DownloadError(f"No such file {path}") from None


def verify(path: Path, expected: RemoteFile,
           known: Mapping[str, DatasetSpec] = DATASETS) -> None:
    """Raise DownloadError unless `path` holds the expected content: its archive MD5 or its
    own SHA-256 as pinned, or (a .gz) the SHA-256 of its decompressed content. A mismatch
    says what the file is instead (another pinned file of `known`, or what it looks like)."""
    # A .gz must be whole before anything else is said about it (a truncated download).
    payload = None
    if expected.name.endswith(".gz"):
        try:
            payload = payload_sha256(path)
        except DownloadError as exc:
            what = ("a truncated or damaged gzip file" if is_gzip(path)
                    else describe(path, "", "", None, known).removeprefix("this is "))
            raise DownloadError(f"{exc}; this is {what}") from None
    archive_md5, own_sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            archive_md5.update(block)
            own_sha.update(block)
    if expected.archive_md5 is not None and archive_md5.hexdigest() == expected.archive_md5:
        return
    if expected.sha256 is not None and own_sha.hexdigest() == expected.sha256:
        return
    gzipped = payload is not None or is_gzip(path)
    if expected.payload_sha256 is None and not (gzipped and expected.sha256):
        if expected.archive_md5 is not None:
            found = f"archive MD5 {archive_md5.hexdigest()}, expected {expected.archive_md5}"
        else:
            found = f"SHA-256 {own_sha.hexdigest()}, expected {expected.sha256}"
        if gzipped and payload is None:
            payload = payload_sha256(path)
        raise DownloadError(f"checksum mismatch: {found}; "
                            + describe(path, archive_md5.hexdigest(), own_sha.hexdigest(),
                                       payload, known))
    payload_sha = payload if payload is not None else payload_sha256(path)
    wanted = [s for s in (expected.payload_sha256, expected.sha256) if s]
    if payload_sha not in wanted:
        raise DownloadError(
            f"checksum mismatch: SHA-256 of decompressed content {payload_sha}, "
            f"expected {' or '.join(wanted)}; "
            + describe(path, archive_md5.hexdigest(), own_sha.hexdigest(), payload_sha, known))


def payload_sha256(path: Path) -> str:
    """SHA-256 of a .gz file's decompressed content (what a faithful mirror preserves)."""
    import gzip  # here, as argparse in main(): only a .gz payload needs it

    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise DownloadError(f"not a complete gzip file ({exc})") from None
    return digest.hexdigest()


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def describe(path: Path, md5: str, sha256: str, payload: str | None,
             known: Mapping[str, DatasetSpec]) -> str:
    """What a file that failed its checksum is instead, in words: a file another dataset
    pins ("this is mnist's t10k-images-idx3-ubyte.gz"), else what its first bytes say."""
    same = known_file(md5, sha256, payload, known)
    if same:
        return f"this is {same}"
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:2] == b"\x1f\x8b":
        import gzip

        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(512)
        except (OSError, EOFError, zlib.error):
            return "this is a damaged gzip file"
        return "this is a gzip file holding " + _content(head)
    return "this is " + _content(head)


def _content(head: bytes) -> str:
    """A guess at a file's kind from its first bytes, for checksum messages."""
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] == 0x08 and 1 <= head[3] <= 4:
        dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(head[3])]
        return f"an IDX file of {'x'.join(map(str, dims))} unsigned bytes (another dataset's?)"
    if head[:2] == b"PK":
        return "a zip archive (an .npz?) with other content"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "an HTML/XML page (a login or error page?), not the data"
    if not head:
        return "an empty file"
    return f"something else (starts with {head[:8]!r})"


def _fetch(mirror: str, remote: RemoteFile, dest: Path, timeout_s: float,
           progress: Progress, known: Mapping[str, DatasetSpec] = DATASETS) -> None:
    import urllib.error

    with atomic_path(dest) as tmp:
        try:
            source, total = _open_source(mirror, remote.name, timeout_s)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"cannot connect ({exc.reason})") from None
        except DownloadError:
            raise
        except OSError as exc:
            raise DownloadError(f"{exc.strerror or exc}") from None
        done = 0
        try:
            with source, open(tmp, "wb") as out:
                while block := source.read(1 << 16):
                    out.write(block)
                    done += len(block)
                    progress(remote.name, done, total)
        except OSError as exc:  # covers socket timeouts and resets mid-transfer
            raise DownloadError(f"transfer failed after {done} bytes ({exc})") from None
        verify(tmp, remote, known)


def download_dataset(spec: DatasetSpec, cache_dir: Path, mirrors: Sequence[str],
                     timeout_s: float, progress: Progress | None = None,
                     log: Callable[[str], None] = print,
                     known: Mapping[str, DatasetSpec] = DATASETS) -> list[Path]:
    """Make every file of `spec` present and verified in `cache_dir`; return their paths.

    Files already cached are re-verified and kept when good. Each file is tried on `mirrors`
    in order, then at its own declared location. Raises DownloadError naming every mirror
    tried when a file cannot be obtained from any of them. `known`: the datasets a checksum
    error compares a wrong file with.
    """
    progress = progress or (lambda name, done, total: None)
    # Made even when nothing can be fetched: doit writes its database into the artifact
    # tree after this task, and a first run offline must end with the message, not with
    # doit's traceback about a missing directory.
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for remote in spec.files:
        dest = Path(cache_dir) / remote.name
        if dest.exists():
            try:
                verify(dest, remote, known)
                paths.append(dest)
                continue
            except DownloadError as exc:
                log(f"cached {dest} is bad ({exc}); downloading again")
                dest.unlink()
        failures: list[tuple[str, DownloadError]] = []
        for mirror in [*mirrors, *([remote.location] if remote.location else [])]:
            try:
                _fetch(mirror, remote, dest, timeout_s, progress, known)
                break
            except DownloadError as exc:
                failures.append((mirror, exc))
        else:
            raise DownloadError(
                missing_headline(spec.name) + "\n"
                f"could not download {spec.name}/{remote.name} from any mirror:\n"
                + "\n".join([f"  {m}: {e}" for m, e in failures] or ["  (no mirror to try)"])
                + "\n" + mirror_hint(spec.name))
        # "Not here" (a URL mirror's <dataset>/ folder that does not exist) is not news when
        # another mirror served the file; anything else a mirror did wrong is.
        for failed, exc in failures:
            if not str(exc).startswith(("HTTP 404", "No such file")):
                log(f"{remote.name} from {failed} failed: {exc}")
        log(f"{remote.name}: verified from {mirror}")
        paths.append(dest)
    return paths


# The docs page on giving the pipeline a dataset without internet.
OFFLINE_DOC = "docs/offline.md"


def missing_headline(dataset: str) -> str:
    """The first line a build without the dataset prints: what is missing and what to do."""
    return (f"dataset {dataset} is missing: it is not in the cache and no mirror has it. "
            f"Give a copy with PIPELINE_MIRROR=<directory or URL> (see {OFFLINE_DOC}).")


def mirror_hint(dataset: str) -> str:
    """How a user points the pipeline at their own copy of `dataset`."""
    return (f"To use a copy you have: PIPELINE_MIRROR=<directory or URL> holding the original "
            f".gz files (or a directory with a {dataset}/ subfolder of them), or "
            f"{mirror_variable(dataset)}=<directory or URL> for {dataset} alone; see "
            f"{OFFLINE_DOC}.")


def terminal_progress(stream=sys.stderr) -> Progress:
    """A progress indication: a rewriting line on a terminal, 25 % steps otherwise."""
    last: dict[str, int] = {}

    def report(name: str, done: int, total: int | None) -> None:
        pct = int(100 * done / total) if total else None
        if stream.isatty():
            shown = f"{pct:3d} %" if pct is not None else f"{done >> 10} KiB"
            end = "\n" if total and done >= total else ""
            stream.write(f"\r{name}: {shown}{end}")
        elif pct is not None and pct // 25 > last.get(name, -1):
            last[name] = pct // 25
            stream.write(f"{name}: {pct} % of {total:,} bytes\n")
        stream.flush()

    return report


def download_with_progress(spec: DatasetSpec, cache_dir: Path, mirrors: Sequence[str],
                           timeout_s: float, stream: TextIO, log: Callable[[str], None] = print,
                           known: Mapping[str, DatasetSpec] = DATASETS) -> list[Path]:
    """`download_dataset` showing its progress on `stream` (dodo.py's download task, which
    passes the stderr doit started with: this module is imported only when the task runs)."""
    return download_dataset(spec, cache_dir, mirrors, timeout_s, terminal_progress(stream), log,
                            known)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help=f"{', '.join(sorted(DATASETS))}, or one declared in "
                        "--params")
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--mirror", help="directory or URL tried first; a directory with a "
                        "<dataset>/ subfolder (a URL: <URL>/<dataset>/ first) serves that "
                        "dataset from it (default: PIPELINE_MIRROR_<DATASET>, else "
                        "PIPELINE_MIRROR)")
    parser.add_argument("--params", type=Path, help="a params file whose [[datasets]] "
                        "declare more datasets")
    from pipeline.core.params import DownloadParams

    parser.add_argument("--timeout", type=float, default=DownloadParams().timeout_s,
                        help="seconds (default: download.timeout_s's, %(default)s)")
    parser.add_argument("--offline", action="store_true",
                        default=os.environ.get("PIPELINE_OFFLINE") == "1",
                        help="try only --mirror (and a declared file's own location), never "
                             "the public mirrors")
    args = parser.parse_args(argv)
    specs: Mapping[str, DatasetSpec] = DATASETS
    if args.params:
        from pipeline.core.params import ParamsError, load_params

        try:
            specs = load_params(args.params, os.environ.get("PIPELINE_SET", "")).dataset_specs()
        except ParamsError as exc:
            sys.exit(f"error: bad params: {exc}")
    if args.dataset not in specs:
        sys.exit(f"error: unknown dataset {args.dataset!r}; choose from {sorted(specs)}"
                 + ("" if args.params else " (or declare it in a params file: --params)"))
    spec = specs[args.dataset]
    mirror = (dataset_mirror(args.mirror, spec.name) if args.mirror
              else user_mirror(spec.name, os.environ))
    try:
        download_dataset(spec, args.cache_dir, mirrors_for(spec, mirror, args.offline),
                         args.timeout, terminal_progress(), known=specs)
    except DownloadError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
