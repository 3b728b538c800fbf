"""A virtual K1: a Debian riscv64 user space emulated by qemu-user, reached over SSH.

    python -m pipeline.virtual_k1 up       # prints the inventory file to use with doit
    python -m pipeline.virtual_k1 status
    python -m pipeline.virtual_k1 down

`up` checks (or installs with apt) qemu-user-static and mmdebstrap, registers binfmt
`qemu-riscv64` with the F flag if it is missing, builds the riscv64 root file system once
into a cache (Debian trixie's python3, numpy and onnxruntime; no TFLite runtime exists for
riscv64), and starts the host's own sshd on 127.0.0.1 on a free port. Each login runs a
ForceCommand wrapper that enters a private mount and PID namespace, mounts /proc there,
chroots into the root file system and drops to an unprivileged guest user; every riscv64
program in it (and each child process) runs under qemu-riscv64-static with the K1's vector
unit (RVV 1.0, VLEN 256). `up` writes a board inventory (the project's boards plus this
one, `emulated = true`) and a known_hosts file, so `doit bench:virtual-k1` works unchanged
with host-key checking on. `down` stops every process of it; the namespaces' mounts go
with their last process, and a binfmt entry or binfmt_misc mount that `up` made is undone.

Why a module and not a doit task: a running service is not a build artifact. doit would
consider it up to date from files on disk while the sshd is long gone, and `doit clean`
cannot stop a process; `up`/`down` say what they did and exit.

Needs root (binfmt_misc, chroot, namespaces, sshd). Without root `up` exits with status 2
and one line saying so, as it does when binfmt cannot be registered or Debian's archive
cannot be reached for a first build.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from pipeline import PipelineError
from pipeline.core.boards import BOARD_NAME
from pipeline.core.files import write_json, write_text
from pipeline.core.formats import FORMATS

SUITE = "trixie"   # the first Debian release with riscv64 as an official architecture
# The runtimes are those of core/formats.py (only ONNX Runtime is packaged for riscv64).
PACKAGES = ("python3", "python3-numpy",
            *(p for f in FORMATS.values() for p in f.board_packages),
            "base-files", "base-passwd", "bash", "coreutils", "dash", "libc-bin")
# The K1's X60 cores: RV64GCV with RVV 1.0 and 256-bit vectors. Without vext_spec qemu 7.2
# prints a warning in every process.
QEMU_CPU = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"
QEMU = "qemu-riscv64-static"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-riscv64"
# The riscv64 ELF header, as qemu's own qemu-binfmt-conf.sh registers it.
BINFMT_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00"
BINFMT_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
GUEST_USER, GUEST_UID = "k1", 1000
GUEST_HOME = f"/home/{GUEST_USER}"
DEFAULT_NAME = "virtual-k1"
READY = ".virtual-k1.json"     # inside the root file system: written last, when it is complete
# Bench settings that keep one `doit bench` of the smoke builds under about two minutes
# here (emulated ORT runs the CNN float model at 34-180 ms per inference).
BOARD_SETTINGS = {"python": "/usr/bin/python3", "remote_dir": "tflite-bench",
                  "threads": [1], "warmup": 2, "runs": 20}
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
UNAVAILABLE = 2    # exit status of `up` when this machine cannot host the board at all
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable"}

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


# --- the Debian mirror, from this machine's apt configuration -----------------------------


def deb822_stanzas(text: str) -> list[dict[str, str]]:
    """Paragraphs of a deb822 .sources file as {field (lower case): value}."""
    stanzas, current, key = [], {}, ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def one_line_entries(text: str) -> list[dict[str, str]]:
    """`deb [options] URI suite components...` lines of a sources.list, as deb822 fields."""
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            if words[1].startswith("["):
                while words and not words[1].endswith("]"):
                    words.pop(1)
                words.pop(1)
            if len(words) >= 3:
                entries.append({"types": "deb", "uris": words[1], "suites": words[2],
                                "components": " ".join(words[3:])})
    return entries


def is_debian_archive(entry: Mapping[str, str]) -> bool:
    """A binary entry of Debian's main archive: a Debian release suite (not -security,
    -updates or a third party's `nodistro`) with the main component, and enabled."""
    if "deb" not in entry.get("types", "").split() or entry.get("enabled", "yes") == "no":
        return False
    suites = entry.get("suites", "").split()
    return ("main" in entry.get("components", "").split()
            and any(s in DEBIAN_SUITES for s in suites))


def apt_mirror(sources_d: Path, sources_list: Path) -> str | None:
    """The first URI of Debian's main archive in this machine's apt configuration."""
    entries: list[dict[str, str]] = []
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        entries += deb822_stanzas(path.read_text(errors="replace"))
    for path in ([sources_list] if sources_list.is_file() else []) + (
            sorted(sources_d.glob("*.list")) if sources_d.is_dir() else []):
        entries += one_line_entries(path.read_text(errors="replace"))
    for entry in entries:
        if is_debian_archive(entry) and entry.get("uris", "").split():
            return entry["uris"].split()[0]
    return None


# --- host prerequisites -------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the virtual K1 needs root (binfmt_misc, chroot, namespaces, its "
                          "sshd): run `sudo python -m pipeline.virtual_k1 up`, or bench a "
                          "real board instead")


def ensure_tools(log: Log) -> None:
    """qemu-user-static and mmdebstrap from apt if missing; sshd and util-linux must exist."""
    missing = [pkg for pkg, tool in (("qemu-user-static", QEMU), ("mmdebstrap", "mmdebstrap"),
                                     ("openssh-server", "sshd"))
               if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()]
    if missing:
        if not shutil.which("apt-get"):
            raise Unavailable(f"{', '.join(missing)} not installed and no apt-get here: "
                              "install them with your package manager")
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                said = (proc.stderr or proc.stdout).strip().splitlines() or ["no message"]
                raise Unavailable(f"`{' '.join(argv)}` failed ({said[-1]}); install "
                                  f"{' '.join(missing)} yourself")
    for name in ("unshare", "chroot", "mount", "umount", "ssh-keygen", "ssh"):
        tool(name)


def tool(name: str) -> str:
    """Absolute path of a host tool (the login wrapper runs with a minimal PATH)."""
    found = shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
    if not found:
        raise Unavailable(f"`{name}` is not installed (util-linux, coreutils, openssh-client)")
    return found


def binfmt_line(interpreter: str) -> str:
    # F: the kernel opens the interpreter now, so it works inside the chroot too (where no
    # x86 qemu exists) and for every child process the runner starts.
    return f":{BINFMT_NAME}:M::{BINFMT_MAGIC}:{BINFMT_MASK}:{interpreter}:F"


def binfmt_entry(binfmt_dir: Path = BINFMT_DIR) -> dict[str, str] | None:
    """The registered qemu-riscv64 entry as {enabled, interpreter, flags}, or None."""
    try:
        lines = (binfmt_dir / BINFMT_NAME).read_text().splitlines()
    except OSError:
        return None
    entry = {"enabled": lines[0].strip() if lines else ""}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        entry[key.rstrip(":")] = value.strip()
    return entry


def ensure_binfmt(log: Log) -> dict[str, bool]:
    """Mount binfmt_misc and register qemu-riscv64 with F if missing; what was done."""
    done = {"mounted": False, "registered": False}
    if not (BINFMT_DIR / "register").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise Unavailable(f"cannot mount binfmt_misc on {BINFMT_DIR} "
                              f"({proc.stderr.strip()}): the kernel needs CONFIG_BINFMT_MISC "
                              "and this needs root outside a restricted container")
        done["mounted"] = True
        log(f"mounted binfmt_misc on {BINFMT_DIR}")
    entry = binfmt_entry()
    if entry is not None:
        if entry["enabled"] != "enabled" or "F" not in entry.get("flags", ""):
            raise Unavailable(
                f"binfmt {BINFMT_NAME} is registered without the F flag or disabled "
                f"({entry}); riscv64 programs inside the chroot cannot find the interpreter. "
                f"Remove it (`echo -1 > {BINFMT_DIR / BINFMT_NAME}`) and run up again")
        return done
    interpreter = shutil.which(QEMU) or f"/usr/bin/{QEMU}"
    try:
        (BINFMT_DIR / "register").write_text(binfmt_line(interpreter))
    except OSError as exc:
        raise Unavailable(f"cannot register binfmt {BINFMT_NAME} ({exc}); it needs root "
                          "on the host, not in an unprivileged container") from None
    done["registered"] = True
    log(f"registered binfmt {BINFMT_NAME} -> {interpreter} (flags F)")
    return done


# --- the root file system -----------------------------------------------------------------


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Serialises builds of the shared cache (two `up` at once build it once)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


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
            proc = subprocess.run(mmdebstrap_argv(target, layout, mirror, suite, offline),
                                  capture_output=True, text=True, check=False, timeout=1800)
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


# --- processes and mounts -----------------------------------------------------------------


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    prefix = str(Path(path).resolve())
    found = []
    for line in mountinfo.read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def board_processes(tag: str, extra: Sequence[int] = ()) -> list[int]:
    """PIDs carrying this board's tag in their environment (every login and what it ran),
    plus `extra` PIDs still alive."""
    marker = f"VIRTUAL_K1_ID={tag}".encode() + b"\0"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() \
                and marker in _environ(entry.name) + b"\0":
            found.add(int(entry.name))
    found.update(pid for pid in extra if Path(f"/proc/{pid}").exists() and not _zombie(pid))
    return sorted(found)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_processes(pids: Sequence[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace_s` (bounded)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(
                Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            time.sleep(0.05)


# --- the sshd and its login wrapper -------------------------------------------------------


def cpuinfo_text(cpus: int) -> str:
    """What the guest reads as /proc/cpuinfo. qemu 7.2 would show the host's x86 CPU; this
    says what the guest runs on, and that it is emulated (never a SpacemiT X60)."""
    return "".join(
        f"processor\t: {i}\nhart\t\t: {i}\n"
        f"model name\t: riscv64 emulated by qemu-user (virtual K1, not a SpacemiT X60)\n"
        f"isa\t\t: rv64imafdcv_zicsr_zifencei_zvl256b\nmmu\t\t: sv39\n"
        f"uarch\t\t: qemu,{QEMU_CPU}\n\n" for i in range(cpus))


def login_script(root: Path, cpuinfo: Path, tag: str) -> str:
    """The sshd ForceCommand: every login (with or without a command) runs in the guest."""
    guest = ('cd "$HOME" || exit 1\n'
             'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"; fi\n'
             'exec /bin/bash -l')
    # env -i: the guest gets nothing of the host's environment (no PYTHONDONTWRITEBYTECODE,
    # which would make every emulated Python start recompile). The PID namespace ends every
    # guest process with its login; the mount namespace takes its /proc mount along.
    inner = (f'{tool("mount")} --bind -o ro "$1" "$2/proc/cpuinfo" && '
             f'exec {tool("chroot")} --userspec={GUEST_UID}:{GUEST_UID} "$2" /bin/sh -c "$3"')
    q = shlex.quote
    return f"""#!/bin/sh
# Generated by `python -m pipeline.virtual_k1 up`: the ForceCommand of the virtual K1's sshd.
exec {tool("env")} -i PATH=/usr/local/bin:/usr/bin:/bin HOME={GUEST_HOME} USER={GUEST_USER} \\
  LOGNAME={GUEST_USER} SHELL=/bin/bash LANG=C.UTF-8 TERM="${{TERM:-dumb}}" \\
  QEMU_CPU={q(QEMU_CPU)} VIRTUAL_K1_ID={q(tag)} SSH_ORIGINAL_COMMAND="${{SSH_ORIGINAL_COMMAND-}}" \\
  {tool("unshare")} --pid --fork --kill-child --mount-proc={q(str(root / 'proc'))} \\
  /bin/sh -c {q(inner)} sh {q(str(cpuinfo))} {q(str(root))} {q(guest)}
"""


def sshd_config(layout: BoardPaths, port: int, login_user: str) -> str:
    s = layout.state
    # StrictModes no: a state directory under a sticky /tmp (tests) fails sshd's path check;
    # the state directory itself is made 0700 and checked by `check_state_dir`.
    return f"""# Generated by `python -m pipeline.virtual_k1 up`.
Port {port}
ListenAddress 127.0.0.1
HostKey {s / 'ssh_host_ed25519_key'}
PidFile {s / 'sshd.pid'}
AuthorizedKeysFile {s / 'authorized_keys'}
AllowUsers {login_user}
PermitRootLogin forced-commands-only
ForceCommand {s / 'login'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
DisableForwarding yes
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
MaxStartups 100
"""


def check_state_dir(state: Path) -> None:
    if re.search(r"[\s\"'\\#]", str(state)):
        raise VirtualK1Error(f"state directory {str(state)!r}: it goes into sshd_config, so no "
                             "spaces, quotes, backslashes or #; choose another with --state")
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = state.stat()
    if state.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise VirtualK1Error(f"state directory {state}: must be a directory of yours with mode "
                             "0700 (it holds the board's keys); fix it with chmod 700")


def keygen(path: Path) -> None:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtual-k1",
                        "-f", str(path)], check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_path() -> str:
    return shutil.which("sshd") or "/usr/sbin/sshd"


def login_name() -> str:
    """The host user the board's sshd lets in (the one running `up`)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists() and not _zombie(pid)


def previous_port(layout: BoardPaths) -> int:
    """The port of this state directory's last sshd (from its sshd_config), or 0."""
    try:
        text = layout.state_file("sshd_config").read_text()
    except OSError:
        return 0
    found = re.search(r"^Port (\d+)$", text, re.M)
    return int(found.group(1)) if found else 0


def read_record(layout: BoardPaths) -> dict:
    try:
        return json.loads(layout.record.read_text())
    except (OSError, ValueError):
        return {}


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # as sshd binds: a port whose last connections linger in TIME_WAIT is free to it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_sshd(layout: BoardPaths, log: Log, previous_port: int = 0) -> tuple[int, int]:
    """Start the sshd on 127.0.0.1: on its previous port if that is free (the inventory
    entry, and so doit's up-to-date check of bench, stays the same from one `up` to the
    next), else on a free one (a few tries: a port can be taken between choosing and
    binding it); (pid, port)."""
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    login_user = login_name()
    last = ""
    for attempt in range(5):
        port = previous_port if attempt == 0 and previous_port and port_is_free(
            previous_port) else free_port()
        config = layout.state_file("sshd_config")
        write_text(config, sshd_config(layout, port, login_user))
        check = subprocess.run([sshd_path(), "-t", "-f", str(config)], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise VirtualK1Error(f"sshd rejects {config}: {check.stderr.strip()}")
        log_file = open(layout.state_file("sshd.log"), "ab")
        proc = subprocess.Popen([sshd_path(), "-D", "-e", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                start_new_session=True)
        log_file.close()
        for _ in range(100):  # bounded: 10 s
            if proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc.pid, port
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        last = layout.state_file("sshd.log").read_text(errors="replace").strip()[-300:]
    raise VirtualK1Error(f"sshd did not start: {last}")


def board_entry(name: str, port: int, layout: BoardPaths, login_user: str) -> str:
    s = layout.state
    options = ["-i", str(s / "client_key"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={s / 'known_hosts'}",
               "-o", "GlobalKnownHostsFile=/dev/null"]
    lines = ["", "# The virtual K1 (python -m pipeline.virtual_k1 up): riscv64 under qemu-user;",
             "# its latency is emulated, never the K1's. Host-key checking stays on.",
             "[[boards]]", f"name = {json.dumps(name)}", 'host = "127.0.0.1"', f"port = {port}",
             f"user = {json.dumps(login_user)}",
             f"ssh_options = [{', '.join(json.dumps(o) for o in options)}]",
             *(f"{k} = {json.dumps(v)}" for k, v in BOARD_SETTINGS.items()),
             "emulated = true"]
    return "\n".join(lines) + "\n"


def write_inventory(layout: BoardPaths, name: str, port: int, base: Path | None,
                    login_user: str) -> None:
    """The project's inventory (its `local` board and others) plus this board: a file that
    `PIPELINE_BOARDS=<it> doit bench:<name>` uses as it is."""
    from pipeline.core.boards import load_boards

    text = base.read_text() if base and base.exists() else ""
    if base and base.exists() and name in {b.name for b in load_boards(base)}:
        raise VirtualK1Error(f"{base} already has a board named {name!r}; choose --name")
    header = (f"# Generated by `python -m pipeline.virtual_k1 up`: {base} plus the virtual K1.\n"
              if text else "")
    write_text(layout.inventory, header + text.rstrip("\n") + "\n" + board_entry(
        name, port, layout, login_user))
    # Host-key checking stays on: the board's own, freshly generated host key is the only
    # one trusted for this address.
    host_key = layout.state_file("ssh_host_ed25519_key.pub").read_text().split()
    write_text(layout.state_file("known_hosts"),
               f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")


def ssh_argv(layout: BoardPaths, port: int, command: str) -> list[str]:
    s = layout.state
    return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-i", str(s / "client_key"), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={s / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-p", str(port), "-l", login_name(),
            "--", "127.0.0.1", command]


# A probe of what the guest is: ISA, vector length (vsetvli e8,m1 -> VLMAX = VLEN/8), CPUs,
# Python, numpy, onnxruntime, and whether any TFLite runtime imports.
PROBE = r'''
import ctypes, json, mmap, os, platform, sys
out = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
code = bytes.fromhex("5775000c67800000")  # vsetvli a0, zero, e8, m1, ta, ma; ret
buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
out["vlmax_e8m1"] = ctypes.CFUNCTYPE(ctypes.c_long)(addr)()
import numpy, onnxruntime
out["numpy"], out["onnxruntime"] = numpy.__version__, onnxruntime.__version__
out["providers"] = onnxruntime.get_available_providers()
tflite = []
for name in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
    try:
        __import__(name)
        tflite.append(name)
    except ImportError:
        pass
out["tflite_runtimes"] = tflite
out["cpuinfo_model"] = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                             if l.startswith("model name")), "")
out["dontwritebytecode"] = sys.flags.dont_write_bytecode
print(json.dumps(out))
'''


def probe(layout: BoardPaths, port: int) -> dict:
    proc = subprocess.run(ssh_argv(layout, port, "python3 -c " + shlex.quote(PROBE)),
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [line for line in proc.stderr.splitlines() if "Schema error" not in line]
        raise VirtualK1Error(f"the board does not answer over ssh (status {proc.returncode}): "
                             f"{' '.join(err[-3:]) or 'no message'}")
    return json.loads(lines[-1])


def describe(facts: dict) -> str:
    vlen = facts["vlmax_e8m1"] * 8
    return (f"{facts['machine']}, RVV VLEN {vlen} (VLMAX e8,m1 = {facts['vlmax_e8m1']}), "
            f"{facts['cpus']} CPUs (the host's; qemu-user cannot show 8), Python "
            f"{facts['python']}, numpy {facts['numpy']}, onnxruntime {facts['onnxruntime']} "
            f"{facts['providers']}, TFLite runtime: "
            f"{', '.join(facts['tflite_runtimes']) or 'none (as on a K1 today)'}")


# --- up, down, status ---------------------------------------------------------------------


def up(layout: BoardPaths, name: str, mirror: str | None, suite: str, base_inventory: Path | None,
       log: Log) -> dict:
    """Bring the board up (idempotent: a running board is left as it is); its record."""
    if not BOARD_NAME.fullmatch(name):
        raise VirtualK1Error(f"--name {name!r}: 1-64 letters, digits, - and _ (a task name)")
    require_root()
    check_state_dir(layout.state)
    record = read_record(layout)
    if alive(record.get("sshd_pid", 0)):
        log(f"already up on 127.0.0.1:{record['port']} (pid {record['sshd_pid']})")
        return record
    ensure_tools(log)
    binfmt = ensure_binfmt(log)
    # Remember what this board changed on the host as soon as it changed it, so `down`
    # undoes it even if the rest of `up` fails.
    record = {"name": name, "binfmt": binfmt, "cache": str(layout.cache),
              "tag": str(layout.state.resolve())}
    write_json(layout.record, record)
    try:
        build_rootfs(layout, mirror, suite, log)
        for key in ("ssh_host_ed25519_key", "client_key"):
            keygen(layout.state_file(key))
        authorized = layout.state_file("authorized_keys")
        login = layout.state_file("login")
        write_text(authorized, f'restrict,pty,command="{login}" '
                   + layout.state_file("client_key.pub").read_text())
        authorized.chmod(0o600)
        cpuinfo = layout.state_file("cpuinfo")
        write_text(cpuinfo, cpuinfo_text(len(os.sched_getaffinity(0))))
        write_text(login, login_script(layout.rootfs, cpuinfo, record["tag"]))
        login.chmod(0o700)
        pid, port = start_sshd(layout, log, previous_port(layout))
        record.update(sshd_pid=pid, port=port)
        write_json(layout.record, record)
        login_user = login_name()
        write_inventory(layout, name, port, base_inventory, login_user)
        record["facts"] = probe(layout, port)
        write_json(layout.record, record)
    except BaseException:
        down(layout, log=lambda line: None)
        raise
    return record


def other_boards_up(layout: BoardPaths) -> list[str]:
    """State directories of other virtual K1s whose sshd runs (they need binfmt too)."""
    mine = str(layout.state_file("sshd_config").resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmdline]
        if "-f" in words[:-1] and words[0].endswith("sshd"):
            config = words[words.index("-f") + 1]
            if config != mine and config.endswith("/sshd_config") and \
                    Path(config).with_name("login").exists() and \
                    "virtual_k1" in Path(config).read_text(errors="replace")[:200]:
                found.append(str(Path(config).parent))
    return found


def down(layout: BoardPaths, log: Log) -> list[str]:
    """Stop the board; undo what `up` changed on the host. What is still left (empty = all
    clean) is returned."""
    record = read_record(layout)
    pid = record.get("sshd_pid", 0)
    if not pid:  # a record lost (or an `up` killed before writing it): sshd's own pid file
        with contextlib.suppress(OSError, ValueError):
            pid = int(layout.state_file("sshd.pid").read_text().split()[0])
    tag = record.get("tag", str(layout.state.resolve()))
    sessions = descendants(pid) if alive(pid) else []
    if alive(pid):
        stop_processes([pid])
    stop_processes(board_processes(tag, sessions))
    for point in mounts_under(layout.rootfs) if layout.rootfs.exists() else []:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    binfmt = record.get("binfmt", {})
    others = other_boards_up(layout) if any(binfmt.values()) else []
    if others:
        log(f"left binfmt {BINFMT_NAME} registered: other virtual K1s are up ({', '.join(others)})")
    else:
        if binfmt.get("registered") and binfmt_entry() is not None:
            with contextlib.suppress(OSError):
                (BINFMT_DIR / BINFMT_NAME).write_text("-1")
            log(f"removed binfmt {BINFMT_NAME} (up had registered it)")
        if binfmt.get("mounted") and (BINFMT_DIR / "register").exists():
            subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True, check=False)
            log(f"unmounted {BINFMT_DIR} (up had mounted it)")
    layout.record.unlink(missing_ok=True)
    left = [f"process {p}" for p in board_processes(tag, [pid] if pid else [])]
    left += [f"mount {m}" for m in (mounts_under(layout.rootfs) if layout.rootfs.exists() else [])]
    return left


def status(layout: BoardPaths) -> dict:
    record = read_record(layout)
    ready = layout.rootfs / READY
    out = {"up": alive(record.get("sshd_pid", 0)), "state": str(layout.state),
           "rootfs": str(layout.rootfs) if ready.exists() else None,
           "binfmt": binfmt_entry(), "inventory": str(layout.inventory)}
    if ready.exists():
        out["rootfs_build"] = json.loads(ready.read_text())
    if out["up"]:
        out.update(port=record["port"], sshd_pid=record["sshd_pid"])
        # the board's client key is root's: others see that it is up, not what it is
        out["facts"] = probe(layout, record["port"]) if os.geteuid() == 0 else None
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--cache", type=Path, help="root file system and package cache "
                        "(default $VIRTUAL_K1_CACHE or ~/.cache/tflite-pipeline/virtual-k1)")
    parser.add_argument("--state", type=Path, help="keys, sshd and inventory of this board "
                        "(default <cache>/state)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="board name (bench:<name>)")
    parser.add_argument("--mirror", help="Debian archive URI (default $VIRTUAL_K1_MIRROR, else "
                        "the first Debian archive in this machine's apt sources)")
    parser.add_argument("--suite", default=SUITE)
    parser.add_argument("--boards", type=Path, help="inventory the generated one extends "
                        "(default $PIPELINE_BOARDS or board/boards.toml)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    env = os.environ
    cache = (args.cache or Path(env.get("VIRTUAL_K1_CACHE") or default_cache(env))).absolute()
    layout = BoardPaths(cache, (args.state or cache / "state").absolute())
    log = lambda line: print(f"virtual_k1: {line}", flush=True)  # noqa: E731
    started = time.monotonic()
    try:
        if args.command == "up":
            mirror = args.mirror or env.get("VIRTUAL_K1_MIRROR") or apt_mirror(
                Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))
            base = args.boards or Path(env.get("PIPELINE_BOARDS", "board/boards.toml"))
            record = up(layout, args.name, mirror, args.suite, base, log)
            log(f"up in {time.monotonic() - started:.1f} s: board {record['name']!r} on "
                f"127.0.0.1:{record['port']}")
            log(f"guest: {describe(record['facts'])}")
            log(f"inventory: {layout.inventory}")
            print(f"PIPELINE_BOARDS={shlex.quote(str(layout.inventory))} "
                  f"doit bench:{record['name']}")
        elif args.command == "down":
            require_root()
            left = down(layout, log)
            if left:
                sys.exit(f"error: still left after down: {', '.join(left)}")
            log(f"down in {time.monotonic() - started:.1f} s: nothing of it runs or is mounted")
        else:
            info = status(layout)
            if args.json:
                print(json.dumps(info, indent=1))
            else:
                log(("up on 127.0.0.1:%s (sshd pid %s)" % (info["port"], info["sshd_pid"]))
                    if info["up"] else "down")
                log(f"root file system: {info['rootfs'] or 'not built yet'}")
                entry = info["binfmt"]
                log(f"binfmt {BINFMT_NAME}: " + (f"{entry['enabled']}, {entry.get('interpreter')}, "
                                               f"flags {entry.get('flags')}" if entry
                                               else "not registered"))
                if info["up"] and info["facts"]:
                    log(f"guest: {describe(info['facts'])}")
                    log(f"inventory: {info['inventory']}")
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    except KeyboardInterrupt:
        done = "the board was taken down" if args.command == "up" else "stopped"
        sys.exit(f"interrupted; {done}")
    except PipelineError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
