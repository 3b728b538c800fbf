"""The bench stage against a real sshd on 127.0.0.1 playing the board, and `local`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench import plan as bench_plan
from pipeline.bench import report, ssh
from pipeline.bench import session as bench
from pipeline.bench.ssh import SshTransport
from pipeline.bench.transport import BoardError, stream_process
from pipeline.core.files import sha256_file
from pipeline.core.boards import Board, load_boards
from pipeline.core.layout import Layout
from pipeline.core.params import ParamsError
from tests.conftest import (REPO, executed_tasks, free_port, run_doit, synthetic_images,
                            wait_for)
from tests.test_runner import exposing_only, onnx_models  # noqa: F401
from tests.project import QUICK_TIMING

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class FakeBoard:
    port: int
    key: Path
    known_hosts: Path
    home: Path
    dir: Path

    def options(self, known_hosts=None) -> tuple[str, ...]:
        return ("-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null")

    def board(self, name="loop", known_hosts=None, **overrides) -> Board:
        settings = dict(name=name, host="127.0.0.1", port=self.port,
                        ssh_options=self.options(known_hosts),
                        remote_dir=str(self.home / f"{name} dir"), python=sys.executable,
                        threads=(1,), warmup=2, runs=10)
        return Board(**{**settings, **overrides})


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with generated host and user keys."""
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key", "other_host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nMaxStartups 100\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory sshd insists on
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                              stderr=open(d / "sshd.log", "wb"))
    for _ in range(100):  # bounded: 10 s at most
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    home = d / "home"
    home.mkdir()
    yield FakeBoard(port, d / "user_key", d / "known_hosts", home, d)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture()
def samples():
    labels = np.arange(16) % 10
    return {"tiny_cnn": (synthetic_images(labels, 1), labels),
            "tiny_mlp": (synthetic_images(labels, 1), labels)}


def labelled_datasets(directory: Path) -> dict[str, Path]:
    """40 labelled synthetic test images in `directory`/d.npz, as each tiny build's dataset."""
    from pipeline.stages.preprocess import save_arrays

    labels = np.arange(40) % 10
    data = directory / "d.npz"
    save_arrays(data, {"x_test": synthetic_images(labels, 2), "y_test": labels})
    return {"tiny_cnn": data, "tiny_mlp": data}


@pytest.fixture()
def datasets(tmp_path):
    return labelled_datasets(tmp_path)


def fake_python(directory: Path, body: str) -> str:
    """A `python` for the board: a script standing in for a broken or hostile runner.

    `body` is shell; $REAL is the real interpreter and "$@" the runner's arguments.
    """
    script = directory / f"python-{abs(hash(body))}"
    script.write_text(f"#!/bin/sh\nREAL={sys.executable}\n{textwrap.dedent(body)}\n")
    script.chmod(0o755)
    return str(script)


def edited_runner(directory: Path, edit: str) -> str:
    """The real runner, with its JSON document edited by Python code on `doc`."""
    code = f"import json,sys\ndoc=json.load(sys.stdin)\n{textwrap.dedent(edit)}\nprint(json.dumps(doc))"
    (directory / "edit.py").write_text(code)
    return fake_python(directory, f'''
        "$REAL" "$@" > "$0.out" || exit $?
        "$REAL" {directory / "edit.py"} < "$0.out"''')


def push(board: Board, files) -> list[str]:
    """Push `files` to the test board over a connection of their own."""
    with SshTransport(board) as transport:
        return transport.push(files)


def remote_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmdline and "runner.py" in cmdline \
                and not cmdline.startswith("ssh "):
            found.append(cmdline)
    return found


# --- the normal path --------------------------------------------------------------------


def test_push_run_collect_then_skip_the_push(sshd, tiny_models, samples, tmp_path):
    board = sshd.board(name="fresh")  # a remote_dir no other test has filled
    first = bench.bench_board(board, tiny_models, samples, tmp_path / "work")
    assert first["status"] == "ok" and first["errors"] == []
    assert first["runtimes"]["tflite"]["name"] == "ai_edge_litert" and first["measured_utc"]
    # runner, plan and a model plus its samples per model
    assert len(first["pushed"]) == 2 + 2 * len(tiny_models)
    remote = Path(board.remote_dir)
    assert (remote / "runner.py").read_bytes() == bench.RUNNER.read_bytes()
    assert remote.stat().st_mode & 0o777 == 0o700
    assert not list(remote.glob(".*partial*"))
    for r in first["results"]:
        assert r["agreement"] == 1.0 and r["p50_us"] > 0 and r["macs"] > 0
        assert r["sha256"] == sha256_file(tiny_models[f"{r['build']}/{r['variant']}"])
    second = bench.bench_board(board, tiny_models, samples, tmp_path / "work")
    assert second["pushed"] == []
    assert len(second["results"]) == len(first["results"])


def accepted(sshd) -> int:
    """Connections the test sshd accepted so far (one "Accepted publickey" line each)."""
    return (sshd.dir / "sshd.log").read_text().count("Accepted publickey")


def masters(directory: Path) -> list[str]:
    """ssh processes whose control socket is in `directory` (a master left running: ssh
    retitles it `ssh: <ControlPath> [mux]`)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and cmdline.startswith("ssh") and str(directory) in cmdline:
            found.append(cmdline)
    return found


def test_one_bench_opens_one_ssh_connection_and_leaves_nothing(sshd, tiny_models, samples,
                                                               tmp_path):
    """A fresh remote_dir gets 10 files: without sharing that is 12 connections (prepare, 10
    pushes, run), with it one; the master and its private socket directory go at the end."""
    board = sshd.board(name="one-connection")
    stage = bench_plan.stage_plan(tiny_models, samples, board, tmp_path / "stage")
    files = bench.plan_files(stage)
    assert len(files) == 2 + 2 * len(tiny_models)

    before = accepted(sshd)
    with SshTransport(sshd.board(name="unshared"), share=False) as transport:
        assert transport.control is None
        assert len(transport.push(files)) == len(files)
    assert wait_for(lambda: accepted(sshd) - before == 1 + len(files), 5), accepted(sshd) - before

    before = accepted(sshd)
    with SshTransport(board) as transport:
        directory = transport.control.parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        document, pushed = bench.run_on_board(board, stage, transport=transport)
        assert transport.control.is_socket() and masters(directory)
    assert len(pushed) == len(files) and len(document["results"]) == len(tiny_models)
    assert not directory.exists()
    assert wait_for(lambda: not masters(directory), 10), masters(directory)
    time.sleep(0.5)  # a late log line would show a second connection
    assert accepted(sshd) - before == 1


def test_quoting_survives_hostile_names(sshd, tmp_path):
    board = sshd.board(remote_dir=str(sshd.home / "a dir; touch pwned"))
    odd = tmp_path / "it's $(touch pwned2).bin"
    odd.write_bytes(b"payload")
    assert push(board, [odd]) == [odd.name]
    assert (sshd.home / "a dir; touch pwned" / odd.name).read_bytes() == b"payload"
    assert not list(sshd.home.glob("pwned*")) and not list(Path.home().glob("pwned*"))


def test_ssh_command_keeps_host_key_checking_keepalives_and_quotes():
    board = Board(name="k1", host="k1", port=2222, user="bianbu")
    argv = ssh.ssh_argv(board, ["ls", "a b", "$(x)"])
    assert "BatchMode=yes" in argv and not any("StrictHostKeyChecking" in a for a in argv)
    assert "ServerAliveInterval=5" in argv and "ServerAliveCountMax=3" in argv
    assert argv[-1] == "ls 'a b' '$(x)'" and argv[-2] == "k1" and argv[-3] == "--"


# --- 1. complete and valid, or a recorded failure ---------------------------------------


@pytest.fixture(scope="module")
def good_loop(sshd, tiny_models, tmp_path_factory) -> Path:
    """The artifacts tree of a good run of board "loop" (its result, the latency report, the
    references it keeps, its staged plan), made once per module: each bench_ok_then starts
    from a copy of it instead of timing the same models again."""
    root = tmp_path_factory.mktemp("good_loop")
    layout = Layout(root / "artifacts")
    good = sshd.board()
    bench.run(good, tiny_models, labelled_datasets(root), 8, layout, [good])
    assert json.loads(layout.board_result(good.name).read_text())["status"] == "ok"
    return layout.root


def bench_ok_then(sshd, good_loop, tiny_models, datasets, tmp_path, broken: Board):
    """A good run of board `broken.name` (a copy of good_loop's), then `broken`: returns the
    error and the report."""
    assert broken.name == "loop", broken.name  # the board good_loop timed
    shutil.copytree(good_loop, tmp_path, symlinks=True, dirs_exist_ok=True)
    reports = tmp_path / "reports"
    with pytest.raises(BoardError) as err:
        bench.run(broken, tiny_models, datasets, 8, Layout(tmp_path),
                  [sshd.board(name=broken.name)])
    result = json.loads((reports / "latency" / f"{broken.name}.json").read_text())
    latency = json.loads((reports / "latency.json").read_text())
    return str(err.value), result, latency


BROKEN_RUNNERS = {
    "invalid UTF-8": ("printf '\\377\\376 not text'", "not a JSON document"),
    "an empty object": ("echo '{}'", "has no 'machine' dict"),
    "nothing at all": ("true", "not a JSON document"),
    "20 MiB of output": ("head -c 20971520 /dev/zero | tr '\\0' x", "more than 16 MiB"),
}


@pytest.mark.parametrize("what", BROKEN_RUNNERS)
def test_a_broken_runner_replaces_the_old_numbers(sshd, good_loop, tiny_models, datasets,
                                                  tmp_path, what):
    body, message = BROKEN_RUNNERS[what]
    broken = sshd.board(python=fake_python(tmp_path, body))
    error, result, latency = bench_ok_then(sshd, good_loop, tiny_models, datasets, tmp_path,
                                            broken)
    assert message in error and "board 'loop'" in error
    assert result["status"] == "failed" and message in result["error"]
    assert "results" not in result
    assert latency["rows"] == [] and latency["failed_boards"][0]["board"] == "loop"


EDITS = {
    "no results": ("doc['results'] = []", "no valid result", None),
    "one case of four": ("doc['results'] = doc['results'][:1]", "missing from the runner's", 1),
    "a model not in the plan": ("doc['results'][0]['model'] = 'other.tflite'", "not in the plan", 3),
    "a case twice": ("doc['results'].append(doc['results'][0])", "reported twice", 4),
    "a mistyped field": ("doc['results'][1]['p50_us'] = 'fast'", "mistyped p50_us", 3),
    "no agreement": ("del doc['results'][0]['agreement']", "mistyped agreement", 3),
    "one failed case": ("doc['results'][2] = {'model': doc['results'][2]['model'], "
                        "'threads': 1, 'error': 'killed by SIGILL: x'}",
                        "killed by SIGILL", 3),
}


@pytest.mark.parametrize("what", EDITS)
def test_the_runner_document_is_checked_against_the_plan(sshd, good_loop, tiny_models, datasets,
                                                         tmp_path, what):
    edit, message, good_rows = EDITS[what]
    broken = sshd.board(python=edited_runner(tmp_path, edit))
    error, result, latency = bench_ok_then(sshd, good_loop, tiny_models, datasets, tmp_path,
                                            broken)
    assert message in error
    if good_rows is None:
        assert result["status"] == "failed" and latency["rows"] == []
        return
    # the good cases are reported, the bad ones named, and the task fails
    assert result["status"] == "partial" and len(result["results"]) == good_rows
    assert any(message in e for e in result["errors"])
    numbers = [r for r in latency["rows"] if "p50_us" in r]
    errors = [r for r in latency["rows"] if "error" in r]
    assert len(numbers) == good_rows and errors and message in errors[0]["error"]
    assert latency["failed_boards"][0]["status"] == "partial"


def test_a_disagreement_with_the_host_fails_the_task_after_the_report(
        sshd, good_loop, tiny_models, datasets, tmp_path):
    edit = "doc['results'][0]['agreement'] = 0.75\ndoc['results'][0]['disagreements'] = [1, 5]"
    broken = sshd.board(python=edited_runner(tmp_path, edit))
    error, result, latency = bench_ok_then(sshd, good_loop, tiny_models, datasets, tmp_path,
                                            broken)
    assert "predictions differ from the host's" in error and "on 2 sample(s)" in error
    assert result["status"] == "ok"  # the figures are valid; the disagreement is the news
    assert "DISAGREES with host on 2 sample(s)" in (tmp_path / "reports" / "latency.md").read_text()


def test_any_exception_is_recorded(sshd, tiny_models, datasets, tmp_path):
    gone = {**tiny_models, "tiny_mlp/int8": tmp_path / "deleted_int8.tflite"}
    board = sshd.board()
    reports = tmp_path / "reports"
    bench.run(board, tiny_models, datasets, 8, Layout(tmp_path), [board])
    with pytest.raises(BoardError, match="FileNotFoundError"):
        bench.run(board, gone, datasets, 8, Layout(tmp_path), [board])
    assert json.loads((reports / "latency" / "loop.json").read_text())["status"] == "failed"


def test_no_model_to_time_fails_at_once_without_timing_the_peak(peak_models, tmp_path, capsys):
    # Every build blocked (no mirror has its dataset): the board is not contacted at all.
    with pytest.raises(BoardError, match=r"^board 'local' \(this machine\): no model to time: "
                                         r"no build has its dataset, so no model was built; "
                                         r"give the pipeline a copy of the data "
                                         r"\(PIPELINE_MIRROR=<dir or URL>, docs/offline.md\) "
                                         r"and run doit again$"):
        bench.run(Board(name="local"), {}, {}, 8, Layout(tmp_path), [Board(name="local")],
                  peak_models)
    result = json.loads((tmp_path / "reports" / "latency" / "local.json").read_text())
    assert result["status"] == "failed" and "no model to time" in result["error"]
    assert not (tmp_path / "bench").exists()  # no plan staged, no peak timed
    assert "p50 µs" not in capsys.readouterr().out  # no empty table either


def test_ssh_missing_from_path_is_recorded(sshd, tiny_models, datasets, tmp_path, monkeypatch):
    board = sshd.board()
    reports = tmp_path / "reports"
    bench.run(board, tiny_models, datasets, 8, Layout(tmp_path), [board])
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BoardError, match="`ssh` is not on PATH"):
        bench.run(board, tiny_models, datasets, 8, Layout(tmp_path), [board])
    result = json.loads((reports / "latency" / "loop.json").read_text())
    assert result["status"] == "failed" and "results" not in result


def test_a_killed_task_leaves_the_board_marked_running_not_ok(sshd, tiny_models, datasets,
                                                             tmp_path):
    board = sshd.board(runs=10**9)
    reports = tmp_path / "reports"
    quick = sshd.board()  # first a good run: its "ok" document is what must not survive
    bench.run(quick, tiny_models, datasets, 8, Layout(tmp_path), [quick])
    code = textwrap.dedent("""
        import pickle, sys
        from pipeline.bench import session as bench
        args = pickle.loads(bytes.fromhex(sys.argv[1]))
        bench.run(*args)
    """)
    import pickle

    args = (board, tiny_models, datasets, 8, Layout(tmp_path), [board])
    proc = subprocess.Popen([sys.executable, "-c", code, pickle.dumps(args).hex()], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: remote_processes(board.remote_dir), 60)
        proc.kill()  # SIGKILL: no handler of ours runs
        proc.wait()
        result = json.loads((reports / "latency" / "loop.json").read_text())
        assert result["status"] == "running" and "results" not in result
        # the report was rebuilt when the run started: the old rows are not shown as fresh,
        # even before anyone rebuilds it
        latency = json.loads((reports / "latency.json").read_text())
        assert latency["rows"] == [] and latency["boards"][0]["status"] == "running"
        assert "INCOMPLETE" in (reports / "latency.md").read_text()
        report.write_latency_report(Layout(tmp_path), [board], tiny_models)
        assert "INCOMPLETE" in (reports / "latency.md").read_text()
        # the host's ssh died with it, so the runner on the board stops too
        assert wait_for(lambda: not remote_processes(board.remote_dir), 20)
    finally:
        proc.kill()


# --- 2. never left running ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["host timeout", "ctrl-c", "ssh killed"])
def test_the_board_stops_when_the_host_gives_up(sshd, tiny_models, samples, tmp_path, how):
    board = sshd.board(name=how.replace(" ", "-"), runs=10**9,
                       timeout_s=8 if how == "host timeout" else 0)
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}
    code = textwrap.dedent("""
        import pickle, signal, sys
        # As in a terminal: a test runner started in the background (`cmd &`) hands its
        # children SIGINT ignored, and Ctrl-C would never arrive.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pipeline.bench import session as bench
        args = pickle.loads(bytes.fromhex(sys.argv[1]))
        try:
            bench.bench_board(*args)
        except bench.BoardError as exc:
            print(exc)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted")
            sys.exit(130)
    """)
    import pickle

    args = (board, models, samples, tmp_path / "work")
    host = subprocess.Popen([sys.executable, "-c", code, pickle.dumps(args).hex()], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: remote_processes(board.remote_dir), 60), "runner never started"
        if how == "ctrl-c":
            host.send_signal(signal.SIGINT)
        elif how == "ssh killed":
            ssh = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and (p / "cmdline").exists() and (p / "cmdline").read_bytes().startswith(b"ssh\0")
                   and board.remote_dir.encode() in (p / "cmdline").read_bytes()]
            assert ssh
            os.kill(ssh[0], signal.SIGKILL)
        out, _ = host.communicate(timeout=60)
        assert host.returncode != 0
        if how == "host timeout":
            assert "no result within 8 s" in out
        # the runner and its case process are gone within seconds, not left timing
        assert wait_for(lambda: not remote_processes(board.remote_dir), 10), \
            remote_processes(board.remote_dir)
    finally:
        host.kill()


def test_a_process_that_outlives_its_timeout_is_killed():
    started = time.monotonic()
    with pytest.raises(BoardError, match="no result within 1 s"):
        stream_process(["sh", "-c", "echo $$ >&2; exec sleep 1000"], 1, "t")
    assert time.monotonic() - started < 15
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and (p / "cmdline").exists() and (p / "cmdline").read_bytes() == b"sleep\x001000\x00"]


def test_progress_is_printed_per_case(sshd, tiny_models, samples, tmp_path, capsys):
    board = sshd.board()
    bench.bench_board(board, tiny_models, samples, tmp_path / "work",
                      on_progress=bench.progress_printer(board))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bench:")]
    assert len(lines) == len(tiny_models)
    assert lines[0].startswith("bench:loop [1/4] ") and "p50" in lines[0]


# --- 4. the remote side is safe -------------------------------------------------------------


def test_remote_dir_is_created_private_and_unsafe_ones_refused(sshd, tmp_path):
    board = sshd.board(name="safe")
    push(board, [bench.RUNNER])
    assert Path(board.remote_dir).stat().st_mode & 0o777 == 0o700

    shared = sshd.home / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(BoardError, match="writable by group or others"):
        push(sshd.board(remote_dir=str(shared)), [bench.RUNNER])
    link = sshd.home / "link"
    link.symlink_to(shared)
    with pytest.raises(BoardError, match="is a symbolic link"):
        push(sshd.board(remote_dir=str(link)), [bench.RUNNER])
    if os.geteuid() == 0:  # only root can hand a directory to someone else
        theirs = sshd.home / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(BoardError, match="is not owned by"):
            push(sshd.board(remote_dir=str(theirs)), [bench.RUNNER])
    assert not list(shared.iterdir())


def test_a_planted_symlink_is_never_followed(sshd, tmp_path):
    board = sshd.board(name="planted")
    push(board, [bench.RUNNER])
    remote = Path(board.remote_dir)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in (".runner.py.partial", "runner.py"):
        (remote / name).unlink(missing_ok=True)
        (remote / name).symlink_to(victim)
    assert push(board, [bench.RUNNER]) == ["runner.py"]
    assert victim.read_text() == "precious"
    assert not (remote / "runner.py").is_symlink()
    assert (remote / "runner.py").read_bytes() == bench.RUNNER.read_bytes()


def test_a_failed_push_leaves_no_temporary_file(sshd, tmp_path):
    board = sshd.board(name="damaged")
    push(board, [bench.RUNNER])
    with pytest.raises(BoardError, match="arrived damaged"):
        SshTransport(board).push_file(bench.RUNNER, "0" * 64)
    assert sorted(p.name for p in Path(board.remote_dir).iterdir()) == ["runner.py"]


def test_a_full_disk_leaves_no_temporary_file(sshd, tmp_path):
    small = sshd.home / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); the damaged "
                    "push test covers the same cleanup")
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20))
        board = sshd.board(remote_dir=str(small / "bench"))
        with pytest.raises(BoardError, match="copying big.bin failed: .*No space left on device"):
            push(board, [big])
        assert list((small / "bench").iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --- 5. errors that name the real cause -----------------------------------------------------


def test_unknown_host_key_is_refused_with_the_fix(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    board = sshd.board(known_hosts=empty, remote_dir=str(sshd.home / "never"))
    with pytest.raises(BoardError) as err:
        push(board, [bench.RUNNER])
    text = str(err.value)
    assert "host key is not known" in text
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in text
    assert f"host 127.0.0.1 port {sshd.port}" in text
    assert not (sshd.home / "never").exists()  # refused before any remote command ran


def test_a_changed_host_key_shows_ssh_warning_and_the_right_fix(sshd, tmp_path):
    other = (sshd.dir / "other_host_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    board = sshd.board(known_hosts=known, remote_dir=str(sshd.home / "never"))
    with pytest.raises(BoardError) as err:
        push(board, [bench.RUNNER])
    text = str(err.value)
    assert "host key CHANGED" in text and "REMOTE HOST IDENTIFICATION HAS CHANGED" in text
    assert "SHA256:" in text  # ssh's own lines, with the new fingerprint
    assert f"ssh-keygen -f {known} -R '[127.0.0.1]:{sshd.port}'" in text
    assert "\x1b" not in text


def test_keyscan_advice_resolves_an_ssh_config_alias(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host myboard\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                      f"  UserKnownHostsFile {tmp_path / 'kh'}\n")
    board = Board(name="alias", host="myboard", ssh_options=("-F", str(config)),
                  remote_dir=str(sshd.home / "never"))
    with pytest.raises(BoardError) as err:
        push(board, [bench.RUNNER])
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {tmp_path / 'kh'}" in str(err.value)


def test_unreachable_port_fails_fast(sshd, tiny_models, samples, tmp_path):
    board = sshd.board(name="dead", port=free_port(), connect_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(BoardError, match=r"board 'dead' \(host 127.0.0.1 port \d+\): unreachable"
                                         r": .*Connection refused"):
        bench.bench_board(board, tiny_models, samples, tmp_path)
    assert time.monotonic() - started < 30  # refused, not waiting out a timeout


RUNNER_DEATHS = {
    "SIGILL": ("kill -ILL $$", "the runner was killed by SIGILL - the runtime uses CPU "
                               "instructions this core does not have"),
    "exit 255": ("echo 'runner gave up' >&2; exit 255",
                 "the runner exited with status 255: runner gave up"),
    "python not found": ("exit 127", "was not found on the board"),
}


@pytest.mark.parametrize("what", RUNNER_DEATHS)
def test_runner_deaths_have_their_own_messages(sshd, tiny_models, samples, tmp_path, what):
    body, message = RUNNER_DEATHS[what]
    board = sshd.board(python=fake_python(tmp_path, body))
    with pytest.raises(BoardError) as err:
        bench.bench_board(board, tiny_models, samples, tmp_path / "work")
    assert message in str(err.value) and "unreachable" not in str(err.value)


def test_remote_python_without_numpy(sshd, tiny_models, samples, tmp_path):
    import venv

    bare = sshd.home / "bare-venv"
    venv.EnvBuilder(with_pip=False).create(bare)
    board = sshd.board(python=str(bare / "bin" / "python"))
    with pytest.raises(BoardError) as err:
        bench.bench_board(board, tiny_models, samples, tmp_path)
    text = str(err.value)
    assert "numpy is not importable" in text and "no TFLite runtime" not in text
    assert "exited with status" not in text


def test_cpus_the_board_lacks_fail_the_board_clearly(sshd, tiny_models, samples, tmp_path):
    board = sshd.board(cpus=(0, 4095))
    with pytest.raises(BoardError, match=r"cpus \[4095\] are not available on this board"):
        bench.bench_board(board, tiny_models, samples, tmp_path)


def test_tilde_remote_dir_is_the_login_home(sshd, tmp_path):
    name = f"tflite-test-{os.getpid()}"
    board = sshd.board(remote_dir=f"~/{name}")
    try:
        push(board, [bench.RUNNER])
        assert (Path.home() / name / "runner.py").exists()
        assert not (Path.home() / "~" / name).exists()
    finally:
        shutil.rmtree(Path.home() / name, ignore_errors=True)
        shutil.rmtree(Path.home() / "~" / name, ignore_errors=True)


@pytest.mark.parametrize("entry, message", [
    ('name = "k1"\nhost = "k1"\nthreds = [1]', "boards.threds: unknown key"),
    ('name = "k1"\nhost = "-oProxyCommand=x"', "must not start with '-'"),
    (f'name = "{"k" * 300}"', "must be 1-64 ASCII letters"),
    ('name = "-k1"', "must be 1-64 ASCII letters"),
    ('name = "kä1"', "must be 1-64 ASCII letters"),
    ('name = "k1"\nremote_dir = ""', "remote_dir: must not be empty"),
    ('name = "k1"\nremote_dir = "~bianbu/x"', "only ~/ (the login user's home)"),
    ('name = "k1"\nremote_dir = "~/"', "is a home or root directory"),
])
def test_inventory_validation(tmp_path, entry, message):
    path = tmp_path / "boards.toml"
    path.write_text(f"[[boards]]\n{entry}\n")
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_boards(path)


def test_shipped_inventory():
    shipped = load_boards(REPO / "board" / "boards.toml")
    assert [b.name for b in shipped] == ["local"] and shipped[0].is_local
    assert Board(name="k" * 64).name == "k" * 64


# --- the report over several boards, and doit ----------------------------------------------


def test_run_records_failure_and_never_shows_old_numbers(sshd, tiny_models, datasets, tmp_path):
    good = sshd.board(name="k1")
    local = Board(name="local", threads=(1, 2), warmup=2, runs=10)
    inventory = [local, good]
    reports = tmp_path / "reports"
    bench.run(local, tiny_models, datasets, 10, Layout(tmp_path), inventory)
    bench.run(good, tiny_models, datasets, 10, Layout(tmp_path), inventory)
    latency = json.loads((reports / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local", "k1"}
    assert len(latency["rows"]) == len(tiny_models) * 3
    int8 = [r for r in latency["rows"] if r["variant"] == "int8"]
    assert all(r["int8_over_float32"] > 0 for r in int8)
    assert (reports / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    broken = sshd.board(name="k1", port=free_port())
    with pytest.raises(BoardError):
        bench.run(broken, tiny_models, datasets, 10, Layout(tmp_path), inventory)
    latency = json.loads((reports / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local"}
    assert latency["failed_boards"][0]["board"] == "k1"
    assert "FAILED" in (reports / "latency.md").read_text()


def sshd_inventory(sshd, path: Path, names: list[str]) -> Path:
    """`local` and boards over the real sshd, each timing one thread count briefly."""
    text = '[[boards]]\nname = "local"\nthreads = [1]\nwarmup = 2\nruns = 20\n' + QUICK_TIMING
    for name in names:
        options = ", ".join(json.dumps(o) for o in sshd.options())
        text += (f'\n[[boards]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {sshd.port}\n'
                 f'ssh_options = [{options}]\nremote_dir = "{sshd.home / name}"\n'
                 f'python = "{sys.executable}"\nwarmup = 2\nruns = 20\n' + QUICK_TIMING)
    path.write_text(text)
    return path


def test_doit_continue_runs_local_when_a_board_is_down(smoke_project, tmp_path):
    project = tmp_path / "project"  # a copy: the shared build stays as the other tests expect
    shutil.copytree(smoke_project, project, symlinks=True)
    inventory = tmp_path / "boards.toml"
    shipped = (REPO / "board" / "boards.toml").read_text()
    assert "threads = [1, 2]\n" in shipped and "runs = 300" in shipped
    # One thread count: `local` only has to be timed, which threads is not the question
    # (half the cases of the shipped [1, 2]).
    inventory.write_text(
        shipped.replace("threads = [1, 2]\n", "threads = [1]\n", 1)
        .replace("runs = 300", "runs = 50\n" + QUICK_TIMING, 1)
        + f'\n[[boards]]\nname = "down"\nhost = "127.0.0.1"\nport = {free_port()}\n'
          'connect_timeout_s = 5\nssh_options = ["-F", "/dev/null"]\n')
    proc = run_doit(project, "--continue", "bench", env={"PIPELINE_BOARDS": str(inventory)})
    assert proc.returncode != 0
    assert executed_tasks(proc.stdout) == {"bench:local", "bench:down"}
    assert "board 'down'" in proc.stdout + proc.stderr
    # once (doit's TaskFailed), not a second time from the report the task rebuilt
    assert (proc.stdout + proc.stderr).count("Connection refused") == 1, proc.stdout[-3000:]
    latency = json.loads((project / "artifacts" / "reports" / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local"}
    assert [f["board"] for f in latency["failed_boards"]] == ["down"]


def test_old_figures_make_the_bench_task_run_again(smoke_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    assert executed_tasks(run_doit(project, "bench:local").stdout) == set()
    result = project / "artifacts" / "reports" / "latency" / "local.json"
    doc = json.loads(result.read_text())
    result.write_text(json.dumps({**doc, "measured_utc": "2020-01-01T00:00:00Z"}))
    models = {f"{b}/{v}": project / "artifacts" / "models" / b / f"{b}_{v}.tflite"
              for b in ("mnist_cnn", "mnist_mlp") for v in ("float32", "int8")}
    report.write_latency_report(Layout(project / "artifacts"),
                                [Board(name="local")], models, 24.0)
    assert "OLD (measured 2020-01-01T00:00:00Z)" in (
        project / "artifacts" / "reports" / "latency.md").read_text()
    proc = run_doit(project, "bench:local")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert executed_tasks(proc.stdout) == {"bench:local"}
    assert "OLD" not in (project / "artifacts" / "reports" / "latency.md").read_text()


def test_parallel_boards_never_trip_over_each_other(smoke_project, sshd, tmp_path):
    """doit -n 3 bench with local and two boards over sshd: 2 rounds, all succeed.

    Each round forgets and re-times all three boards at once (14 models each), ~14 s a round.
    The two rounds are the two states a board's task meets: the first run of par-a and par-b
    (no reference, no earlier result) and a re-run (each model timed beside its reference,
    the earlier results replaced). A third round repeated the second's state; 8 rounds caught
    neither an unlocked report rebuild nor a temporary name shared by writers, which
    test_report.py and test_files.py catch deterministically."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    inventory = sshd_inventory(sshd, tmp_path / "boards.toml", ["par-a", "par-b"])
    env = {"PIPELINE_BOARDS": str(inventory)}
    tasks = ["bench:local", "bench:par-a", "bench:par-b"]
    for round_ in range(2):
        assert run_doit(project, "forget", *tasks, env=env).returncode == 0
        proc = run_doit(project, "-n", "3", "bench", env=env)
        assert proc.returncode == 0, f"round {round_}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        assert executed_tasks(proc.stdout) == set(tasks)
        latency = json.loads((project / "artifacts" / "reports" / "latency.json").read_text())
        assert {b["board"]: b["status"] for b in latency["boards"]} == {
            "local": "ok", "par-a": "ok", "par-b": "ok"}
        assert {r["board"] for r in latency["rows"]} == {"local", "par-a", "par-b"}
    assert not list((project / "artifacts").rglob(".*partial*"))


# --- ONNX Runtime beside TFLite ---------------------------------------------------------------


def test_a_board_with_both_runtimes_times_every_variant(sshd, tiny_models, onnx_models, samples,
                                                        tmp_path):
    import onnxruntime

    models = {**tiny_models, **onnx_models}
    board = sshd.board(name="both", threads=(1, 2))
    doc = bench.bench_board(board, models, samples, tmp_path / "work")
    assert doc["status"] == "ok" and doc["errors"] == [] and doc["missing"] == []
    assert doc["runtimes"]["tflite"]["name"] == "ai_edge_litert"
    assert doc["runtimes"]["onnx"]["version"] == onnxruntime.__version__
    assert {(r["build"], r["variant"], r["threads"]) for r in doc["results"]} == {
        (*key.split("/"), t) for key in models for t in (1, 2)}
    for r in doc["results"]:
        assert r["p50_us"] > 0 and r["agreement"] == 1.0  # int8 and float alike: exact
        if r["variant"].startswith("onnx_"):
            assert r["runtime"]["name"] == "onnxruntime"
            assert r["providers"] == ["CPUExecutionProvider"] and r["profile"]["nodes"]
            assert r["ort_spinning"] is (1 < r["threads"] < len(os.sched_getaffinity(0)))
            assert r["macs"] == 784 * 64 + 64 * 10  # the hand count of the ONNX MLP
        else:
            assert r["runtime"]["name"] == "ai_edge_litert" and "providers" not in r
    # the int8-input model got its input quantization through the plan
    plan = json.loads((tmp_path / "work" / "both" / "plan.json").read_text())
    quantized = {m["file"]: m.get("input_quantization") for m in plan["models"]}
    assert quantized["tiny_mlp_onnx_int8_tflite.onnx"] == [1.0, -128]
    assert quantized["tiny_mlp_onnx_int8.onnx"] is None  # QDQ: float input
    # These hand-built models' outputs are float: no output quantization (an int8 output's,
    # which predict --board dequantizes with: test_predict.py, test_runner.py)
    assert all("output_quantization" not in m for m in plan["models"])


def test_a_board_without_tflite_benchmarks_onnx_and_names_the_missing_rows(
        sshd, tiny_models, onnx_models, datasets, tmp_path, capsys):
    python = exposing_only(sshd.home / "ort-only-venv", "onnxruntime")
    board = sshd.board(name="k1-like", python=str(python))
    models = {**tiny_models, **onnx_models}
    datasets = {**datasets, "tiny_mlp": datasets["tiny_mlp"]}
    layout = Layout(tmp_path)
    doc = bench.run(board, models, datasets, 10, layout, [board])  # passes: see docs/k1.md
    assert doc["status"] == "partial" and doc["errors"] == []
    assert {(m["build"], m["variant"]) for m in doc["missing"]} == {
        tuple(k.split("/")) for k in tiny_models}
    assert all(m["error"].startswith("NO RUNTIME: no TFLite runtime on this board")
               and "pip install ai-edge-litert" in m["error"] for m in doc["missing"])
    assert {r["variant"] for r in doc["results"]} == {k.split("/")[1] for k in onnx_models}
    assert all(r["agreement"] == 1.0 for r in doc["results"])
    out = capsys.readouterr().out
    assert f"board 'k1-like': {len(tiny_models)} row(s) not timed (tiny_cnn/float32 x1" in out
    latency = json.loads((tmp_path / "reports" / "latency.json").read_text())
    missing = [r for r in latency["rows"] if "missing" in r]
    assert {(r["build"], r["variant"]) for r in missing} == {
        tuple(k.split("/")) for k in tiny_models}
    md = (tmp_path / "reports" / "latency.md").read_text()
    assert "NO RUNTIME: no TFLite runtime on this board" in md and "PARTIAL" in md
    assert "TFLite: none" in md
    # Each row says the state; the install hint is said once, on the board's line.
    assert md.count("pip install ai-edge-litert") == 1
    assert out.count("pip install ai-edge-litert") == 1
    assert out.count("p50 µs") == 1  # the table once, at the end, not also at the start
    local = Board(name="local", warmup=1, runs=5)  # another board, with k1-like's rows to show
    bench.run(local, models, datasets, 10, layout, [local, board])
    assert capsys.readouterr().out.count("p50 µs") == 1
    # doit does not re-time it on every run: a missing runtime is a fact about the board
    from pipeline.core.uptodate import measured_within

    assert measured_within(layout.board_result(board.name), 24)


def test_a_failed_case_beside_missing_rows_still_fails_the_task(sshd, tiny_models, onnx_models,
                                                                datasets, tmp_path):
    python = exposing_only(sshd.home / "ort-only-venv-2", "onnxruntime")
    edit = ("doc['results'][-1] = {'model': doc['results'][-1]['model'], 'threads': 1, "
            "'error': 'killed by SIGILL: x'}")
    script = Path(edited_runner(tmp_path, edit))  # the runner under the ORT-only python
    script.write_text(script.read_text().replace(f"REAL={sys.executable}", f"REAL={python}"))
    board = sshd.board(name="k1-broken", python=str(script))
    models = {**tiny_models, **onnx_models}
    with pytest.raises(BoardError, match="1 case.s. failed.*killed by SIGILL"):
        bench.run(board, models, datasets, 10, Layout(tmp_path), [board])
    doc = json.loads(Layout(tmp_path).board_result(board.name).read_text())
    assert doc["status"] == "partial" and len(doc["missing"]) == len(tiny_models)
    from pipeline.core.uptodate import measured_within

    assert not measured_within(Layout(tmp_path).board_result(board.name), 24)


def test_a_board_failure_is_printed_once(sshd, tiny_models, datasets, tmp_path, capsys):
    board = sshd.board(name="down", port=free_port(), connect_timeout_s=5)
    with pytest.raises(BoardError) as err:
        bench.run(board, tiny_models, datasets, 10, Layout(tmp_path), [board])
    assert "Connection refused" in str(err.value)  # doit prints this, as TaskFailed
    printed = capsys.readouterr()
    assert "Connection refused" not in printed.out + printed.err
    # Nor does another board's task that ran after it (doit's order varies from run to run)
    local = Board(name="local", warmup=1, runs=5)
    bench.run(local, tiny_models, datasets, 10, Layout(tmp_path), [local, board])
    printed = capsys.readouterr()
    assert "Connection refused" not in printed.out + printed.err and "p50 µs" in printed.out
    # the manual rebuild still names it
    report.write_latency_report(Layout(tmp_path), [board], tiny_models)
    assert "board down: FAILED" in capsys.readouterr().out


def _processes_in(directory: Path) -> list[str]:
    """Command lines of processes whose working directory is `directory` (the board side)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == directory:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def test_a_hung_board_python_is_killed_on_the_board_at_timeout_s(sshd, tiny_models, samples,
                                                                 tmp_path):
    board = sshd.board(name="hung", timeout_s=4, python=fake_python(tmp_path, "exec sleep 987"))
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}
    started = time.monotonic()
    with pytest.raises(BoardError, match="the runner gave no result within 4 s"):
        bench.bench_board(board, models, samples, tmp_path / "work")
    assert time.monotonic() - started < 30
    remote = Path(board.remote_dir)
    # the hung process and the remote `sh -c` around it are gone too, within seconds
    assert wait_for(lambda: not _processes_in(remote), 10), _processes_in(remote)


def test_a_hung_board_is_stopped_by_the_board_itself_when_the_host_cannot_say_so(
        sshd, tiny_models, samples, tmp_path):
    """The remote `timeout` bounds the runner even while the host still waits."""
    board = sshd.board(name="hung-remote", python=fake_python(tmp_path, "exec sleep 986"))
    models = {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}
    stage = bench_plan.stage_plan(models, samples, board, tmp_path / "work" / board.name)
    push(board, [bench.RUNNER, stage, *(p for p in stage.parent.iterdir()
                                              if p.name != "plan.json")])
    started = time.monotonic()
    status, _, err = ssh.ssh_run(board, ["sh", "-c", ssh.RUN, "sh", board.remote_path, "2",
                                           board.python, "runner.py"], timeout=60)
    assert time.monotonic() - started < 20 and status == 0
    assert f"{ssh.EXIT_MARK}{ssh.TIMED_OUT}" in err
    assert wait_for(lambda: not _processes_in(Path(board.remote_dir)), 10)


def test_the_prepare_step_honours_timeout_s_and_is_named(sshd, tiny_models, samples, tmp_path):
    board = sshd.board(name="stuck-prepare", timeout_s=3)
    remote = Path(board.remote_dir)
    remote.mkdir(mode=0o700, exist_ok=True)
    os.mkfifo(remote / "runner.py")  # sha256sum blocks on it, as on a dead network mount
    started = time.monotonic()
    with pytest.raises(BoardError) as err:
        bench.bench_board(board, {"tiny_mlp/int8": tiny_models["tiny_mlp/int8"]}, samples,
                          tmp_path / "work")
    assert time.monotonic() - started < 30  # not a fixed 120 s
    assert "the prepare step" in str(err.value) and "3 s" in str(err.value)
    assert "runner gave" not in str(err.value)
    assert wait_for(lambda: not _processes_in(remote), 10), _processes_in(remote)


def test_a_hung_board_python_goes_as_soon_as_the_host_gives_up(sshd, tmp_path):
    """The host stops waiting long before the board's own limit: the remote watcher sees the
    connection close and stops the hung command (which never reads its stdin) at once."""
    board = sshd.board(name="hung-eof", python=fake_python(tmp_path, "exec sleep 985"))
    push(board, [bench.RUNNER])
    started = time.monotonic()
    with pytest.raises(BoardError, match="no result within 3 s"):
        ssh.ssh_run(board, ["sh", "-c", ssh.RUN, "sh", board.remote_path, "600",
                              board.python, "runner.py"], timeout=3)
    assert time.monotonic() - started < 20
    assert wait_for(lambda: not _processes_in(Path(board.remote_dir)), 10), \
        _processes_in(Path(board.remote_dir))
