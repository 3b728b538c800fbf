"""Where a dataset can be had, as dodo.py needs it on every load: the user's mirror from the
environment, the mirrors to try in order, and whether any local place has the files (no
network: a URL counts as available). Split from pipeline/stages/download.py so that loading
dodo.py (every `doit`, a no-op too, where nothing is compiled ahead without bytecode) does not
compile the download stage; the stage imports these from here.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.datasets import DatasetSpec


def mirror_variable(dataset: str) -> str:
    """The environment variable naming one dataset's own mirror, e.g. PIPELINE_MIRROR_MNIST."""
    return f"PIPELINE_MIRROR_{dataset.upper()}"


def user_mirror(dataset: str, environ: Mapping[str, str]) -> str | None:
    """The user's mirror for `dataset`, from the environment the caller passes in.

    PIPELINE_MIRROR_<DATASET> wins as given. Otherwise PIPELINE_MIRROR, through
    `dataset_mirror`: a directory with a `<dataset>/` subfolder serves each dataset from its
    own; a URL is tried at `<URL>/<dataset>/` first, then as given.
    """
    own = environ.get(mirror_variable(dataset))
    if own:
        return own
    shared = environ.get("PIPELINE_MIRROR")
    return dataset_mirror(shared, dataset) if shared else None


def dataset_mirror(mirror: str, dataset: str) -> str:
    """`mirror` for one dataset: its `<dataset>/` subfolder when `mirror` is a directory that
    has one, else the directory itself. A URL is returned as given; `mirrors_for` expands it."""
    if not mirror.startswith(("http://", "https://")):
        local = Path(urllib.parse.urlparse(mirror).path if mirror.startswith("file://")
                     else mirror)
        if (local / dataset).is_dir():
            return str(local / dataset)
    return mirror


def _url_candidates(mirror: str, dataset: str) -> list[str]:
    """A URL mirror may hold one dataset's files or a `<dataset>/` folder per dataset; which
    one cannot be known without asking it, so both are tried, the subfolder first."""
    if not mirror.startswith(("http://", "https://")):
        return [mirror]
    base = mirror.rstrip("/") + "/"
    if base.endswith(f"/{dataset}/"):
        return [base]
    return [base + urllib.parse.quote(dataset) + "/", base]


def mirrors_for(spec: DatasetSpec, override: str | None, offline: bool = False) -> list[str]:
    """The mirrors to try in order: the user's override (URL or directory; a URL also at its
    `<dataset>/` subfolder) first, then the public ones unless `offline`. A declared file's
    own location is tried after these (download_dataset adds it per file)."""
    return ((_url_candidates(override, spec.name) if override else [])
            + ([] if offline else list(spec.mirrors)))


def unavailable_here(spec: DatasetSpec, cache_dir: Path, mirrors: Sequence[str]) -> str | None:
    """As `unavailable` (pipeline/core/lookup.py), without the network, for dodo.py's every load: a dataset counts as
    available while any place to get it is a URL (its download task finds out, and says
    so); only when every place is a local directory is the answer known here."""
    places = [*mirrors, *(remote.location for remote in spec.files if remote.location)]
    if any(place.startswith(("http://", "https://")) for place in places):
        return None
    if all((Path(cache_dir) / remote.name).is_file() for remote in spec.files):
        return None  # cached (as `unavailable` would say): the look-up is not even compiled
    from pipeline.core.lookup import unavailable

    return unavailable(spec, cache_dir, mirrors, timeout_s=0)
