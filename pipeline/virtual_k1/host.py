"""What the host must give a virtual K1: root, qemu-user-static and mmdebstrap, the binfmt
entry that runs riscv64 programs under qemu, and the Debian mirror from apt's sources."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from pipeline.virtual_k1.paths import Log, Unavailable

# The K1's X60 cores: RV64GCV with RVV 1.0 and 256-bit vectors. Without vext_spec qemu 7.2
# prints a warning in every process.
QEMU_CPU = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"
QEMU = "qemu-riscv64-static"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-riscv64"
# The riscv64 ELF header, as qemu's own qemu-binfmt-conf.sh registers it.
BINFMT_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00"
BINFMT_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable"}


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
                # An options list never closed leaves no entry (apt refuses the line too).
                while len(words) > 1 and not words[1].endswith("]"):
                    words.pop(1)
                del words[1:2]
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
