"""Whether a dataset can be had, as far as a quick look at its mirrors tells (a HEAD request
for a URL). Used by the download stage, and by dodo.py's load (through `unavailable_here`)
only for a dataset that is not cached yet: a module of its own so that a no-op `doit` does
not compile it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.core.datasets import DatasetSpec


def unavailable(spec: DatasetSpec, cache_dir: Path, mirrors: Sequence[str],
                timeout_s: float) -> str | None:
    """None when `spec` can be had as far as a quick look tells: every file is in the cache,
    or a mirror (or the file's own location) has the first missing one; else why not, in one
    line. A look, not a download: a mirror that serves wrong bytes passes it (the download
    task then fails on the checksum). dodo.py calls it only for a dataset not yet cached."""
    missing = [remote for remote in spec.files if not (Path(cache_dir) / remote.name).is_file()]
    if not missing:
        return None
    remote = missing[0]
    tried = []
    for mirror in list(mirrors) + ([remote.location] if remote.location else []):
        why = _look(mirror, remote.name, timeout_s)
        if why is None:
            return None
        tried.append(f"{mirror}: {why}")
    return (f"no mirror has {spec.name}/{remote.name} ("
            + ("; ".join(tried) if tried else "no mirror to try") + ")")


def _look(mirror: str, name: str, timeout_s: float) -> str | None:
    """None if `mirror` has a file `name` (a HEAD request for a URL), else why not."""
    import urllib.error
    import urllib.parse
    import urllib.request

    if not mirror.startswith(("http://", "https://")):
        directory = Path(urllib.parse.urlparse(mirror).path if mirror.startswith("file://")
                         else mirror)
        return None if (directory / name).is_file() else "no such file"

    url = urllib.parse.urljoin(mirror.rstrip("/") + "/", urllib.parse.quote(name))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),  # noqa: S310
                                    timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot connect ({getattr(exc, 'reason', exc)})"
