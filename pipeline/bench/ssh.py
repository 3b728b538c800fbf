"""SshTransport: a board reached with the system OpenSSH client, over one shared connection.

~/.ssh/config, keys, agents and ProxyJump apply; BatchMode means nothing ever waits for a
password, and host-key checking is left on. One bench opens one connection: the first ssh
becomes an OpenSSH connection master (ControlMaster=auto) on a socket in a private 0700
directory, the prepare step, every push and the runner ride on it, and leaving the `with`
block closes it (`ssh -O exit`) and removes the directory. ControlPersist is short, so even
a host killed with SIGKILL leaves no master behind for long.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from pipeline.bench.transport import BoardError, Progress, stream_process
from pipeline.core.boards import Board
from pipeline.core.files import sha256_file
from pipeline.core.text import clean_text

SSH_KEEPALIVE = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")
CONTROL_PERSIST_S = 30  # an orphaned master (host killed) goes after this long idle
# A Unix socket path has ~108 bytes, and ssh adds a 17-byte suffix while it creates one: in a
# longer temp dir the bench connects once per command, as it did before sharing.
MAX_CONTROL_PATH = 80
# The remote wrapper reports the runner's exit status on stderr and exits 0, so that ssh's
# own exit status 255 always means an SSH failure, never a runner that happened to exit 255.
EXIT_MARK = "RUNNER_EXIT "
TIMED_OUT = 124  # coreutils timeout's status when the limit passed
PREPARE_TIMEOUT_S = 120.0  # without timeout_s: hashing a few MB never takes this long


def ssh_argv(board: Board, remote_command: Sequence[str],
             control: Path | None = None) -> list[str]:
    """The ssh command line; every remote argument is shell-quoted for the remote shell.
    With `control`, the connection is shared through that socket (see the module doc)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={board.connect_timeout_s}",
            *SSH_KEEPALIVE]
    if control is not None:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={_escaped(control)}",
                 "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
    if board.port:
        argv += ["-p", str(board.port)]
    if board.user:
        argv += ["-l", board.user]
    return [*argv, *board.ssh_options, "--", board.host, shlex.join(remote_command)]


def _escaped(path: Path) -> str:
    """`path` as a ControlPath value: ssh expands %-tokens and splits on spaces."""
    return '"' + str(path).replace("%", "%%") + '"'


def resolved_address(board: Board) -> tuple[str, int, str]:
    """(HostName, Port, first UserKnownHostsFile) as ssh resolves them for `board.host`,
    so advice works when `host` is an alias from ~/.ssh/config."""
    argv = ["ssh", "-G", *(["-p", str(board.port)] if board.port else []),
            *board.ssh_options, "--", board.host]
    config: dict[str, str] = {}
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        for line in out.stdout.splitlines():
            key, _, value = line.partition(" ")
            config.setdefault(key, value)
    except (OSError, subprocess.SubprocessError):
        pass
    port = int(config.get("port", board.port or 22))
    known = (config.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
    return config.get("hostname", board.host), port, known


def explain_ssh_failure(board: Board, stderr: str) -> str:
    lines = [line for line in clean_text(stderr).splitlines() if line.strip()]
    last = lines[-1] if lines else "ssh failed with no message"
    name = board.label
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        host, port, known = resolved_address(board)
        entry = f"[{host}]:{port}" if port != 22 else host
        said = "\n".join(f"    {line}" for line in lines[-30:])
        return (f"{name}: the board's host key CHANGED, so the connection was refused. "
                f"ssh says:\n{said}\nIf the board was reinstalled, verify the new fingerprint "
                "shown above on the board itself (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub), then remove the old key with "
                f"`ssh-keygen -f {known} -R {shlex.quote(entry)}` and trust the new one with "
                f"`ssh-keyscan -p {port} {shlex.quote(host)} >> {known}`. If it was not "
                "reinstalled, someone may be intercepting the connection: do not connect.")
    if "Host key verification failed" in stderr:
        host, port, known = resolved_address(board)
        return (f"{name}: the board's host key is not known, so the connection was refused "
                f"({last}). Check the board's fingerprint (on the board: ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub), compare it with "
                f"`ssh-keyscan -p {port} {shlex.quote(host)} | ssh-keygen -lf -`, then trust it "
                f"with `ssh-keyscan -p {port} {shlex.quote(host)} >> {known}` or one "
                f"interactive `ssh {shlex.quote(board.host)}`.")
    if "Permission denied" in stderr:
        return (f"{name}: authentication failed ({last}). Install a key (ssh-copy-id) or load "
                "it into ssh-agent; BatchMode never asks for a password.")
    return f"{name}: unreachable: {last}"


def ssh_run(board: Board, remote_command: Sequence[str], stdin: bytes | None = None,
            timeout: float = 120, on_progress: Progress | None = None,
            step: str = "the runner", control: Path | None = None) -> tuple[int, bytes, str]:
    """Run a remote command; an SSH failure (exit 255) raises BoardError explaining it."""
    try:
        status, out, err = stream_process(ssh_argv(board, remote_command, control), timeout,
                                          board.label, on_progress, stdin, step)
    except FileNotFoundError:
        raise BoardError(f"board {board.name!r}: the OpenSSH client `ssh` is not on PATH; "
                         "install openssh-client") from None
    if status == 255:  # ssh's own failure, not the remote command's
        raise BoardError(explain_ssh_failure(board, err))
    return status, out, err


# The remote side, in POSIX sh with coreutils. remote_dir is created 0700 and refused, as
# ssh's StrictModes would, if it is a symlink, not ours, or writable by others.
PREPARE = r'''umask 077
d=$1; shift
if [ -L "$d" ]; then echo "remote_dir $d is a symbolic link; refusing to use it" >&2; exit 90; fi
mkdir -p -- "$d" || exit 91
if [ "$(stat -c %u -- "$d")" != "$(id -u)" ]; then
  echo "remote_dir $d is not owned by $(id -un); refusing to use it" >&2; exit 92; fi
mode=$(stat -c %A -- "$d")
case $mode in ?????w????|????????w?)
  echo "remote_dir $d is writable by group or others ($mode); refusing to use it" \
       "(chmod go-w)" >&2; exit 93;; esac
cd -- "$d" && sha256sum -- "$@" 2>/dev/null; true'''

# One file: into a fresh mktemp name (O_EXCL: never follows a planted symlink), checked
# against the expected SHA-256, renamed into place; the temporary file goes on any failure.
PUT = r'''umask 077; cd -- "$1" || exit 1
t=$(mktemp ".$2.partial.XXXXXXXX") || exit 1
trap 'rm -f -- "$t"' EXIT HUP INT TERM
cat > "$t" || { echo "writing $2 failed" >&2; exit 1; }
sum=$(sha256sum < "$t") || exit 1
if [ "${sum%% *}" != "$3" ]; then echo "$2 arrived damaged (SHA-256 ${sum%% *})" >&2; exit 1; fi
mv -f -- "$t" "$2" || exit 1
trap - EXIT'''

# Runs "$@" so that nothing it starts outlives the host's interest: under coreutils
# `timeout` (its own process group, which it signals whole) with the host's own time limit,
# so the board stops it even when the host cannot reach it any more; and a watcher that
# stops it as soon as the host closes the connection (stdin EOF), even when the command
# hangs before it could notice (a python stuck at start-up, a hashing stuck on a dead mount).
# The host never writes to stdin here, so the watcher and the runner can both wait on it.
# (A background job's stdin is /dev/null before its redirections apply, so the real stdin
# is kept on fd 3 first.)
GUARD = r'''guard() {
  limit=$1; shift
  exec 3<&0
  if command -v timeout >/dev/null 2>&1; then timeout -k 5 "$limit" "$@" <&3 3<&- &
  else "$@" <&3 3<&- & fi
  pid=$!
  ( while IFS= read -r _; do :; done; kill -TERM "$pid" 2>/dev/null ) <&3 3<&- \
    >/dev/null 2>&1 &
  watcher=$!
  exec 3<&-
  wait "$pid"; status=$?
  kill "$watcher" 2>/dev/null
  return "$status"
}'''

RUN = GUARD + f'''
cd -- "$1" || exit 97
limit=$2; shift 2
guard "$limit" "$@"
printf '\\n{EXIT_MARK}%s\\n' "$?" >&2'''

GUARDED = GUARD + '''
guard "$@"'''


class SshTransport:
    """The board at `board.host`, files in `board.remote_dir`, one connection while open."""

    def __init__(self, board: Board, share: bool = True) -> None:
        self.board = board
        self.python = board.python
        self.share = share  # False: one connection per command (the benchmark's "before")
        self.control: Path | None = None
        self._dir: Path | None = None

    def __enter__(self) -> "SshTransport":
        if self.share:
            self._dir = Path(tempfile.mkdtemp(prefix="bench-ssh-"))  # 0700, ours alone
            socket = self._dir / "master"
            self.control = socket if len(str(socket)) <= MAX_CONTROL_PATH else None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the connection master, if one started, and remove its directory."""
        try:
            if self.control is not None and self.control.exists():
                argv = ssh_argv(self.board, ["true"], self.control)
                argv[argv.index("--"):argv.index("--")] = ["-O", "exit"]
                subprocess.run(argv[:-1], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            pass  # the master's ControlPersist ends it soon anyway
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self.control = self._dir = None

    def _ssh(self, remote_command: Sequence[str], **kwargs) -> tuple[int, bytes, str]:
        return ssh_run(self.board, remote_command, control=self.control, **kwargs)

    def path(self, local: Path) -> str:
        return local.name  # pushed into remote_dir, where run() starts

    def run(self, argv: Sequence[str], timeout: float, on_progress: Progress | None = None,
            stdin: bytes | None = None, step: str = "the runner") -> tuple[int, bytes, str]:
        """Run `argv` in remote_dir under the board's own time limit (RUN)."""
        shell_status, out, err = self._ssh(
            ["sh", "-c", RUN, "sh", self.board.remote_path, f"{timeout:g}", *argv],
            stdin=stdin, timeout=timeout, on_progress=on_progress, step=step)
        marks = [line for line in err.splitlines() if line.startswith(EXIT_MARK)]
        status = int(marks[-1][len(EXIT_MARK):]) if marks else shell_status
        err = "\n".join(line for line in err.splitlines() if not line.startswith(EXIT_MARK))
        return status, out, err

    def explain(self, status: int) -> str | None:
        if status == 127:
            return f"`{self.board.python}` was not found on the board (set `python`)"
        if status == TIMED_OUT:
            return ("the runner did not finish within the time limit on the board "
                    "(timeout_s, or the plan's deadline + 30 s); the board stopped it")
        if status == 97:
            return f"cannot enter remote_dir {self.board.remote_dir!r}"
        return None

    def remote_sha256(self, names: Sequence[str]) -> dict[str, str]:
        """Prepare remote_dir and return the SHA-256 of the named files already there."""
        board = self.board
        limit = board.timeout_s or PREPARE_TIMEOUT_S
        step = "the prepare step (creating remote_dir, hashing the files there)"
        status, out, err = self._ssh(
            ["sh", "-c", GUARDED, "sh", f"{limit:g}", "sh", "-c", PREPARE, "sh",
             board.remote_path, *names], timeout=limit, step=step)
        if status == TIMED_OUT:
            raise BoardError(f"{board.label}: {step} took over {limit:g} s on the board; "
                             "stopped it")
        if status != 0:
            why = clean_text(err).strip() or f"preparing remote_dir failed ({status})"
            raise BoardError(f"{board.label}: {why}")
        sums = {}
        for line in out.decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            sums[name] = digest
        return sums

    def push_file(self, path: Path, sha256: str) -> None:
        status, _, err = self._ssh(["sh", "-c", PUT, "sh", self.board.remote_path, path.name,
                                    sha256], stdin=path.read_bytes(), timeout=600)
        if status != 0:
            raise BoardError(f"{self.board.label}: copying {path.name} failed: "
                             f"{clean_text(err).strip()}")

    def push(self, files: Sequence[Path]) -> list[str]:
        """Copy each file whose SHA-256 differs on the board; return the names pushed."""
        on_board = self.remote_sha256([f.name for f in files])
        pushed = []
        for path in files:
            digest = sha256_file(path)
            if on_board.get(path.name) != digest:
                self.push_file(path, digest)
                pushed.append(path.name)
        return pushed
