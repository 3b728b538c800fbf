"""The riscv64 root file system: built once by mmdebstrap into the shared cache (Python,
numpy and the runtimes of core/formats.py), warmed up, and marked ready when complete."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

from pipeline.core.files import write_json
from pipeline.core.formats import FORMATS
from pipeline.virtual_k1.host import QEMU_CPU, tool
from pipeline.virtual_k1.paths import (GUEST_HOME, GUEST_UID, GUEST_USER, BoardPaths, Log,
                                       Unavailable, VirtualK1Error)
from pipeline.virtual_k1.processes import (BUILD_MARKER, build_processes, stop_processes,
                                           unmount_under)

SUITE = "trixie"   # the first Debian release with riscv64 as an official architecture
# The runtimes are those of core/formats.py (only ONNX Runtime is packaged for riscv64).
PACKAGES = ("python3", "python3-numpy",
            *(p for f in FORMATS.values() for p in f.board_packages),
            "base-files", "base-passwd", "bash", "coreutils", "dash", "libc-bin")
READY = ".virtual-k1.json"     # inside the root file system: written last, when it is complete
# Run once as root at build time, so that Python writes the bytecode of everything it imports
# (the runner's standard library, numpy, onnxruntime): the guest user cannot write
# __pycache__ under /usr, and recompiling numpy and onnxruntime costs 3-4 s per start under
# emulation. An import pass takes ~5-10 s; compileall of the same trees took 25-90 s here.
WARM_UP = """
import argparse, ctypes, hashlib, importlib.metadata, io, json, mmap, os, pathlib, platform
import resource, signal, subprocess, sys, tempfile, threading, time, zipfile
import numpy as np
import onnxruntime
buffer = io.BytesIO()
np.savez(buffer, x=np.zeros(3))
buffer.seek(0)
np.percentile(np.load(buffer)["x"], [10, 50])
"""


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Serialises builds of the shared cache (two `up` at once build it once)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fh = open(cache / ".lock", "w")
    except OSError as exc:  # a read-only or foreign cache: one line, not a traceback
        raise VirtualK1Error(f"{cache}: cannot write the virtual K1's cache there "
                             f"({exc.strerror}); give a writable directory with --cache or "
                             "VIRTUAL_K1_CACHE") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _die_with_parent() -> None:
    """In the build's first process: SIGKILL when `up` dies, however it dies (Linux prctl
    PR_SET_PDEATHSIG); its own children are found by BUILD_MARKER."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def run_build(argv: list[str], cache: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """`argv` (mmdebstrap) in its own process group, marked with BUILD_MARKER; whatever ends
    this (an error, Ctrl-C, SIGTERM turned into KeyboardInterrupt by main) stops every
    process of the build before returning."""
    env = {**os.environ, BUILD_MARKER: str(cache.absolute())}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        stop_processes(build_processes(cache))
        proc.wait()


def mmdebstrap_argv(target: Path, layout: BoardPaths, mirror: str, suite: str,
                    offline: bool) -> list[str]:
    """mmdebstrap extracting PACKAGES (no maintainer scripts, so no emulation needed).

    The packages (and the indices) are copied in from the cache before and out after, so a
    second build downloads nothing: offline, apt's update step is skipped entirely.
    """
    debs, lists = shlex.quote(str(layout.debs)), shlex.quote(str(layout.lists))
    setup = (f'mkdir -p "$1/var/cache/apt/archives" "$1/var/lib/apt/lists" && '
             f'find {debs} -maxdepth 1 -name "*.deb" '
             '-exec cp -t "$1/var/cache/apt/archives" {} +')
    if offline:
        setup += f' && cp -a {lists}/. "$1/var/lib/apt/lists/"'
    save = (f'find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" -exec cp -t {debs} {{}} + '
            f'&& find "$1/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock '
            f'-exec cp -t {lists} {{}} +')
    argv = ["mmdebstrap", "--mode=root", "--arch=riscv64", "--variant=extract",
            f"--include={','.join(PACKAGES)}", "--aptopt=APT::Install-Recommends \"false\"",
            f"--setup-hook={setup}", f"--extract-hook={save}"]
    if offline:
        argv.append("--skip=update")
    return [*argv, suite, str(target), mirror]


def finish_rootfs(root: Path) -> None:
    """What the unpacked packages' maintainer scripts would have made."""
    lib = root / "usr/lib/riscv64-linux-gnu"
    for name, alt in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        link = lib / name   # update-alternatives' job; numpy does not import without them
        if not link.exists() and (lib / alt / name).exists():
            link.unlink(missing_ok=True)
            link.symlink_to(f"{alt}/{name}")
    base = root / "usr/share/base-passwd"
    (root / "etc/passwd").write_text((base / "passwd.master").read_text()
                                     + f"{GUEST_USER}:x:{GUEST_UID}:{GUEST_UID}:virtual K1:"
                                       f"{GUEST_HOME}:/bin/bash\n")
    (root / "etc/group").write_text((base / "group.master").read_text()
                                    + f"{GUEST_USER}:x:{GUEST_UID}:\n")
    home = root / GUEST_HOME.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, GUEST_UID, GUEST_UID)
    home.chmod(0o700)
    (root / "etc/hostname").write_text("virtual-k1\n")


def compile_python(root: Path) -> None:
    """Byte-compile what the guest's Python imports, once, under emulation, as root."""
    env = {"PATH": "/usr/bin:/bin", "QEMU_CPU": QEMU_CPU, "LANG": "C.UTF-8"}
    proc = subprocess.run([tool("chroot"), str(root), "/usr/bin/python3", "-c", WARM_UP],
                          env=env, capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Schema error" not in line]
        raise VirtualK1Error("the guest's python3 cannot import numpy and onnxruntime: "
                             + " ".join(errors[-3:]))


def package_versions(debs: Path) -> dict[str, str]:
    """Versions of PACKAGES from the cached .deb names (an extracted root file system has no
    dpkg database): name_version_arch.deb, ':' written as %3a."""
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        name, _, rest = deb.name.partition("_")
        if name in PACKAGES:
            versions[name] = rest.rsplit("_", 1)[0].replace("%3a", ":")
    return versions


def recipe(suite: str) -> str:
    """What the root file system is made of: a cached one made otherwise is rebuilt."""
    made_by = inspect.getsource(finish_rootfs) + inspect.getsource(compile_python)
    return hashlib.sha256(json.dumps([suite, PACKAGES, WARM_UP, made_by]).encode()).hexdigest()


def ready_recipe(root: Path) -> str | None:
    try:
        return json.loads((root / READY).read_text()).get("recipe")
    except (OSError, ValueError):
        return None


def build_rootfs(layout: BoardPaths, mirror: str | None, suite: str, log: Log) -> bool:
    """Build the root file system into the cache unless it is there, made by the same
    recipe; True if it was built."""
    with cache_lock(layout.cache):
        if ready_recipe(layout.rootfs) == recipe(suite):
            return False
        meta = json.loads(layout.lists_meta.read_text()) if layout.lists_meta.exists() else {}
        offline = (meta.get("mirror"), meta.get("suite")) == (mirror, suite) or (
            mirror is None and meta.get("suite") == suite)
        mirror = mirror or meta.get("mirror")
        if not mirror:
            raise Unavailable("no Debian mirror: none in /etc/apt/sources.list(.d) and none "
                              "given; pass --mirror URI or set VIRTUAL_K1_MIRROR")
        target = layout.cache / f".rootfs.partial.{os.getpid()}"
        # A build whose `up` was killed may still write its partial tree: stopped first.
        stop_processes(build_processes(layout.cache))
        shutil.rmtree(target, ignore_errors=True)
        partials = [p for p in layout.cache.glob(".rootfs.partial.*") if p != target]
        for stale in partials:  # a build killed earlier (the lock says nobody builds now)
            unmount_under(stale)
            shutil.rmtree(stale, ignore_errors=True)
        layout.debs.mkdir(parents=True, exist_ok=True)
        layout.lists.mkdir(parents=True, exist_ok=True)
        source = "cached packages" if offline else mirror
        log(f"building the riscv64 root file system ({suite}, {source}) "
            f"into {layout.rootfs}")
        started = time.monotonic()
        try:
            proc = run_build(mmdebstrap_argv(target, layout, mirror, suite, offline),
                             layout.cache, 1800)
            if proc.returncode != 0:
                tail = [line for line in proc.stderr.splitlines() if line.startswith("E:")]
                why = (tail or proc.stderr.strip().splitlines() or ["no message"])[0]
                if any(s in proc.stderr for s in ("Temporary failure resolving",
                                                  "Could not connect", "Failed to fetch",
                                                  "Unable to connect", "Connection failed")):
                    raise Unavailable(f"Debian's archive is unreachable at {mirror} ({why}); "
                                      "give a reachable mirror with --mirror or VIRTUAL_K1_MIRROR")
                raise VirtualK1Error(f"mmdebstrap failed: {why}")
            write_json(layout.lists_meta, {"mirror": mirror, "suite": suite})
            unpacked = time.monotonic()
            finish_rootfs(target)
            compile_python(target)
            done = time.monotonic()
            write_json(target / READY, {"recipe": recipe(suite), "suite": suite,
                                        "mirror": mirror, "offline": offline,
                                        "packages": package_versions(layout.debs),
                                        "unpack_s": round(unpacked - started, 1),
                                        "compile_s": round(done - unpacked, 1)})
            shutil.rmtree(layout.rootfs, ignore_errors=True)
            os.replace(target, layout.rootfs)
        finally:
            unmount_under(target)
            shutil.rmtree(target, ignore_errors=True)
        log(f"root file system built in {time.monotonic() - started:.1f} s (unpacked in "
            f"{unpacked - started:.1f} s, bytecode in {done - unpacked:.1f} s; "
            f"{du_mb(layout.rootfs):.0f} MB)")
        return True


def du_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total / 2**20
