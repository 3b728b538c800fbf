"""The bench stage against a real sshd on 127.0.0.1 playing the board, and `local`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline import bench
from pipeline.bench import Board, BoardError, load_boards
from pipeline.params import ParamsError
from tests.conftest import REPO, executed_tasks, free_port, run_doit, synthetic_images

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class FakeBoard:
    port: int
    key: Path
    known_hosts: Path
    home: Path

    def board(self, name="loop", known_hosts=None, **overrides) -> Board:
        options = ("-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                   "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                   "-o", "GlobalKnownHostsFile=/dev/null")
        settings = dict(name=name, host="127.0.0.1", port=self.port, ssh_options=options,
                        remote_dir=str(self.home / "bench dir"), python=sys.executable,
                        threads=(1,), warmup=2, runs=10)
        return Board(**{**settings, **overrides})


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with generated host and user keys."""
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n")
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
    yield FakeBoard(port, d / "user_key", d / "known_hosts", home)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture()
def samples():
    labels = np.arange(16) % 10
    return {"tiny_cnn": (synthetic_images(labels, 1), labels),
            "tiny_mlp": (synthetic_images(labels, 1), labels)}


def test_push_run_collect_then_skip_the_push(sshd, tiny_models, samples, tmp_path):
    board = sshd.board()
    first = bench.bench_board(board, tiny_models, samples, tmp_path / "work")
    assert first["status"] == "ok" and first["runtime"]["name"] == "ai_edge_litert"
    # runner, plan and a model plus its samples per model
    assert len(first["pushed"]) == 2 + 2 * len(tiny_models)
    remote = sshd.home / "bench dir"
    assert (remote / "runner.py").read_bytes() == bench.RUNNER.read_bytes()
    assert not list(remote.glob(".*partial"))
    for r in first["results"]:
        assert r["agreement"] == 1.0 and r["p50_us"] > 0 and r["macs"] > 0
        assert r["sha256"] == bench.sha256_file(tiny_models[f"{r['build']}/{r['variant']}"])
    second = bench.bench_board(board, tiny_models, samples, tmp_path / "work")
    assert second["pushed"] == []
    assert len(second["results"]) == len(first["results"])


def test_quoting_survives_hostile_names(sshd, tmp_path):
    board = sshd.board(remote_dir=str(sshd.home / "a dir; touch pwned"))
    odd = tmp_path / "it's $(touch pwned2).bin"
    odd.write_bytes(b"payload")
    assert bench.push(board, [odd]) == [odd.name]
    assert (sshd.home / "a dir; touch pwned" / odd.name).read_bytes() == b"payload"
    assert not list(sshd.home.glob("pwned*")) and not list(Path.home().glob("pwned*"))


def test_unknown_host_key_is_refused_with_the_fix(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    board = sshd.board(known_hosts=empty, remote_dir=str(sshd.home / "never"))
    with pytest.raises(BoardError) as err:
        bench.push(board, [bench.RUNNER])
    text = str(err.value)
    assert "host key is unknown or changed" in text and "ssh-keyscan -p" in text
    assert f"host 127.0.0.1 port {sshd.port}" in text
    assert not (sshd.home / "never").exists()  # refused before any remote command ran


def test_unreachable_port_fails_fast(sshd, tiny_models, samples, tmp_path):
    board = sshd.board(name="dead", port=free_port(), connect_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(BoardError, match=r"board 'dead' \(host 127.0.0.1 port \d+\): unreachable"
                                         r": .*Connection refused"):
        bench.bench_board(board, tiny_models, samples, tmp_path)
    assert time.monotonic() - started < 30  # refused, not waiting out a timeout


def test_remote_python_without_runtime(sshd, tiny_models, samples, tmp_path):
    import venv

    bare = sshd.home / "bare-venv"
    venv.EnvBuilder(with_pip=False).create(bare)
    board = sshd.board(python=str(bare / "bin" / "python"))
    with pytest.raises(BoardError) as err:
        bench.bench_board(board, tiny_models, samples, tmp_path)
    assert "no TFLite runtime" in str(err.value) and "pip install ai-edge-litert" in str(err.value)


def test_run_records_failure_and_never_shows_old_numbers(sshd, tiny_models, tmp_path):
    from pipeline.preprocess import save_arrays

    labels = np.arange(40) % 10
    data = tmp_path / "d.npz"
    save_arrays(data, {"x_test": synthetic_images(labels, 2), "y_test": labels})
    datasets = {"tiny_cnn": data, "tiny_mlp": data}
    good = sshd.board(name="k1")
    local = Board(name="local", threads=(1, 2), warmup=2, runs=10)
    inventory = [local, good]
    reports = tmp_path / "reports"
    bench.run(local, tiny_models, datasets, 10, tmp_path / "work", reports, inventory)
    bench.run(good, tiny_models, datasets, 10, tmp_path / "work", reports, inventory)
    latency = json.loads((reports / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local", "k1"}
    assert len(latency["rows"]) == len(tiny_models) * 3
    int8 = [r for r in latency["rows"] if r["variant"] == "int8"]
    assert all(r["int8_over_float32"] > 0 for r in int8)
    local_rows = [r for r in latency["rows"] if r["board"] == "local"]
    assert all(r["floor_us"] > 0 and r["p50_over_floor"] > 0 for r in local_rows)
    assert (reports / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    broken = sshd.board(name="k1", port=free_port())
    with pytest.raises(BoardError):
        bench.run(broken, tiny_models, datasets, 10, tmp_path / "work", reports, inventory)
    latency = json.loads((reports / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local"}
    assert latency["failed_boards"][0]["board"] == "k1"
    assert "FAILED" in (reports / "latency.md").read_text()


def test_inventory_validation(tmp_path):
    path = tmp_path / "boards.toml"
    path.write_text('[[boards]]\nname = "k1"\nhost = "k1"\nthreds = [1]\n')
    with pytest.raises(ParamsError, match="boards.threds: unknown key"):
        load_boards(path)
    path.write_text('[[boards]]\nname = "k1"\nhost = "-oProxyCommand=x"\n')
    with pytest.raises(ParamsError, match="must not start with '-'"):
        load_boards(path)
    shipped = load_boards(REPO / "board" / "boards.toml")
    assert [b.name for b in shipped] == ["local"] and shipped[0].is_local


def test_ssh_command_keeps_host_key_checking_and_quotes():
    board = Board(name="k1", host="k1", port=2222, user="bianbu")
    argv = bench.ssh_argv(board, ["ls", "a b", "$(x)"])
    assert "BatchMode=yes" in argv and not any("StrictHostKeyChecking" in a for a in argv)
    assert argv[-1] == "ls 'a b' '$(x)'" and argv[-2] == "k1" and argv[-3] == "--"


def test_doit_continue_runs_local_when_a_board_is_down(smoke_project, tmp_path):
    project = tmp_path / "project"  # a copy: the shared build stays as the other tests expect
    shutil.copytree(smoke_project, project, symlinks=True)
    inventory = tmp_path / "boards.toml"
    inventory.write_text(
        (REPO / "board" / "boards.toml").read_text()
        + f'\n[[boards]]\nname = "down"\nhost = "127.0.0.1"\nport = {free_port()}\n'
          'connect_timeout_s = 5\nssh_options = ["-F", "/dev/null"]\n')
    # Force bench:local to run again by changing its settings.
    text = inventory.read_text().replace("runs = 300", "runs = 50")
    inventory.write_text(text)
    proc = run_doit(project, "--continue", "bench", env={"PIPELINE_BOARDS": str(inventory)})
    assert proc.returncode != 0
    assert executed_tasks(proc.stdout) == {"bench:local", "bench:down"}
    assert "board 'down'" in proc.stdout + proc.stderr and "Connection refused" in (
        proc.stdout + proc.stderr)
    latency = json.loads((project / "artifacts" / "reports" / "latency.json").read_text())
    assert {r["board"] for r in latency["rows"]} == {"local"}
    assert [f["board"] for f in latency["failed_boards"]] == ["down"]
