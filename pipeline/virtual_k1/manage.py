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
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from pipeline import PipelineError
from pipeline.core.boards import BOARD_NAME
from pipeline.core.files import write_json, write_text
from pipeline.virtual_k1.host import (BINFMT_DIR, BINFMT_NAME, apt_mirror, binfmt_entry,
                                      ensure_binfmt, ensure_tools, require_root)
from pipeline.virtual_k1.inventory import describe, probe, write_inventory
from pipeline.virtual_k1.paths import (DEFAULT_NAME, UNAVAILABLE, BoardPaths, Log, Unavailable,
                                       VirtualK1Error, default_cache)
from pipeline.virtual_k1.processes import (alive, board_processes, build_processes, descendants,
                                           mounts_under, stop_processes)
from pipeline.virtual_k1.rootfs import READY, SUITE, build_rootfs
from pipeline.virtual_k1.sshd import (check_state_dir, cpuinfo_text, keygen, login_name,
                                      login_script, previous_port, read_record, start_sshd)


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
    stop_processes(build_processes(layout.cache))  # a build its killed `up` left running
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
    left += [f"root file system build process {p}" for p in build_processes(layout.cache)]
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


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.virtual_k1",
                                     description=__doc__.splitlines()[0])
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
    return parser


def print_status(info: dict, as_json: bool, log: Log) -> None:
    """`status`: up or down, the root file system, binfmt, and the guest when up."""
    if as_json:
        print(json.dumps(info, indent=1))
        return
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


def main(argv: Sequence[str] | None = None) -> None:
    args = command_line().parse_args(argv)
    env = os.environ
    cache = (args.cache or Path(env.get("VIRTUAL_K1_CACHE") or default_cache(env))).absolute()
    layout = BoardPaths(cache, (args.state or cache / "state").absolute())
    log = lambda line: print(f"virtual_k1: {line}", flush=True)  # noqa: E731
    started = time.monotonic()
    # SIGTERM ends `up` the way Ctrl-C does: the board (and a root file system build) is
    # taken down, instead of the process vanishing with its children still running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            print_status(status(layout), args.json, log)
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
