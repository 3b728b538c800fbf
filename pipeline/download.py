"""Download stage: fetch a dataset's IDX archives from the first mirror that serves good bytes.

Each file is streamed to a hidden temporary name, verified (published archive MD5, or the
SHA-256 of the decompressed payload), and only then renamed into the cache. A mirror that
fails or serves different bytes is reported and the next one is tried.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import urllib.parse
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

from pipeline import PipelineError
from pipeline.datasets import DATASETS, DatasetSpec, RemoteFile
from pipeline.files import atomic_path

Progress = Callable[[str, int, int | None], None]


class DownloadError(PipelineError):
    pass


def mirror_variable(dataset: str) -> str:
    """The environment variable naming one dataset's own mirror, e.g. PIPELINE_MIRROR_MNIST."""
    return f"PIPELINE_MIRROR_{dataset.upper()}"


def user_mirror(dataset: str, environ: Mapping[str, str]) -> str | None:
    """The user's mirror for `dataset`, from the environment the caller passes in.

    PIPELINE_MIRROR_<DATASET> wins as given. Otherwise PIPELINE_MIRROR: when it is a
    directory holding a `<dataset>/` subfolder that subfolder is used, so one mirror
    directory can serve every dataset; else the directory or URL itself (one dataset's files).
    """
    own = environ.get(mirror_variable(dataset))
    if own:
        return own
    shared = environ.get("PIPELINE_MIRROR")
    if not shared:
        return None
    if not shared.startswith(("http://", "https://")):
        local = Path(urllib.parse.urlparse(shared).path if shared.startswith("file://")
                     else shared)
        if (local / dataset).is_dir():
            return str(local / dataset)
    return shared


def mirrors_for(spec: DatasetSpec, override: str | None, offline: bool = False) -> list[str]:
    """The mirrors to try in order: the user's override (URL or directory) first, then the
    public ones unless `offline`."""
    return ([override] if override else []) + ([] if offline else list(spec.mirrors))


def _open_source(mirror: str, name: str, timeout_s: float) -> tuple[BinaryIO, int | None]:
    """Open `name` on a mirror given as http(s) URL, file:// URL or plain directory."""
    if mirror.startswith(("http://", "https://")):
        # Imported here: urllib.request pulls in http.client and email (15-50 ms), and dodo.py
        # imports this module on every `doit` call, downloads or not.
        import urllib.request

        url = urllib.parse.urljoin(mirror.rstrip("/") + "/", urllib.parse.quote(name))
        response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 (scheme checked)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    directory = Path(urllib.parse.urlparse(mirror).path if mirror.startswith("file://") else mirror)
    path = directory / name
    return open(path, "rb"), path.stat().st_size


def verify(path: Path, expected: RemoteFile) -> None:
    """Raise DownloadError unless `path` is a complete gzip whose content is the expected one."""
    archive_md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            archive_md5.update(block)
    payload_sha = payload_sha256(path)
    if archive_md5.hexdigest() == expected.archive_md5:
        return
    if expected.payload_sha256 is None:
        raise DownloadError(
            f"checksum mismatch: archive MD5 {archive_md5.hexdigest()}, "
            f"expected {expected.archive_md5}")
    if payload_sha != expected.payload_sha256:
        raise DownloadError(
            f"checksum mismatch: SHA-256 of decompressed content {payload_sha}, "
            f"expected {expected.payload_sha256}")


def payload_sha256(path: Path) -> str:
    """SHA-256 of a .gz file's decompressed content (what a faithful mirror preserves)."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise DownloadError(f"not a complete gzip file ({exc})") from None
    return digest.hexdigest()


def _fetch(mirror: str, remote: RemoteFile, dest: Path, timeout_s: float,
           progress: Progress) -> None:
    import urllib.error

    with atomic_path(dest) as tmp:
        try:
            source, total = _open_source(mirror, remote.name, timeout_s)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"cannot connect ({exc.reason})") from None
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
        verify(tmp, remote)


def download_dataset(spec: DatasetSpec, cache_dir: Path, mirrors: Sequence[str],
                     timeout_s: float, progress: Progress | None = None,
                     log: Callable[[str], None] = print) -> list[Path]:
    """Make every file of `spec` present and verified in `cache_dir`; return their paths.

    Files already cached are re-verified and kept when good. Raises DownloadError naming
    every mirror tried when a file cannot be obtained from any of them.
    """
    progress = progress or (lambda name, done, total: None)
    paths = []
    for remote in spec.files:
        dest = Path(cache_dir) / remote.name
        if dest.exists():
            try:
                verify(dest, remote)
                paths.append(dest)
                continue
            except DownloadError as exc:
                log(f"cached {dest} is bad ({exc}); downloading again")
                dest.unlink()
        failures = []
        for mirror in mirrors:
            try:
                _fetch(mirror, remote, dest, timeout_s, progress)
                break
            except DownloadError as exc:
                failures.append(f"  {mirror}: {exc}")
                log(f"{remote.name} from {mirror} failed: {exc}")
        else:
            raise DownloadError(
                f"could not download {spec.name}/{remote.name} from any mirror:\n"
                + "\n".join(failures or ["  (no mirror to try)"])
                + "\n" + mirror_hint(spec.name))
        log(f"{remote.name}: verified from {mirror}")
        paths.append(dest)
    return paths


def mirror_hint(dataset: str) -> str:
    """How a user points the pipeline at their own copy of `dataset`."""
    return (f"To use a copy you have: PIPELINE_MIRROR=<directory or URL> holding the original "
            f".gz files (or a directory with a {dataset}/ subfolder of them), or "
            f"{mirror_variable(dataset)}=<directory or URL> for {dataset} alone; see "
            "'Building offline from a local mirror' in README.md.")


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--mirror", help="directory or URL tried first (default: "
                        "PIPELINE_MIRROR_<DATASET>, else PIPELINE_MIRROR or its <dataset>/ "
                        "subfolder)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--offline", action="store_true",
                        default=os.environ.get("PIPELINE_OFFLINE") == "1",
                        help="try only --mirror, never the public mirrors")
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    mirror = args.mirror or user_mirror(spec.name, os.environ)
    try:
        download_dataset(spec, args.cache_dir, mirrors_for(spec, mirror, args.offline),
                         args.timeout,
                         terminal_progress())
    except DownloadError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
