"""The board's sshd side on hand-written inputs: the guest's /proc/cpuinfo, the port read back
from a previous sshd_config, the up record (no root, no sshd: fast; the running board is
tested in tests/test_virtual_k1.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.virtual_k1 import sshd as vk_sshd
from pipeline.virtual_k1.host import QEMU_CPU
from pipeline.virtual_k1.paths import BoardPaths


def test_cpuinfo_is_one_paragraph_per_cpu_numbered_from_0():
    one = ("model name\t: riscv64 emulated by qemu-user (virtual K1, not a SpacemiT X60)\n"
           "isa\t\t: rv64imafdcv_zicsr_zifencei_zvl256b\nmmu\t\t: sv39\n"
           f"uarch\t\t: qemu,{QEMU_CPU}\n\n")
    assert vk_sshd.cpuinfo_text(2) == (f"processor\t: 0\nhart\t\t: 0\n{one}"
                                       f"processor\t: 1\nhart\t\t: 1\n{one}")
    assert vk_sshd.cpuinfo_text(0) == ""


def test_cpuinfo_says_vlen_256_as_the_k1():
    # zvl256b: vectors of at least 256 bits; qemu is told the same.
    assert "_zvl256b\n" in vk_sshd.cpuinfo_text(1) and "vlen=256" in QEMU_CPU


def layout_with(tmp_path, sshd_config: str | None) -> BoardPaths:
    layout = BoardPaths(tmp_path / "cache", tmp_path / "state")
    layout.state.mkdir()
    if sshd_config is not None:
        layout.state_file("sshd_config").write_text(sshd_config)
    return layout


def test_the_previous_port_is_read_back_from_the_config_written(tmp_path):
    layout = layout_with(tmp_path, None)
    layout.state_file("sshd_config").write_text(vk_sshd.sshd_config(layout, 40321, "root"))
    assert vk_sshd.previous_port(layout) == 40321


@pytest.mark.parametrize("text, port", [
    ("Port 2222\n", 2222),
    ("# x\nListenAddress 127.0.0.1\nPort 65535\nPidFile p\n", 65535),
    ("#Port 2222\n", 0),
    ("Port 2222 \n", 0),
    ("Port\n", 0),
    ("Port abc\n", 0),
    ("ListenAddress 127.0.0.1\n", 0),
    ("", 0),
])
def test_previous_port_is_the_whole_port_line_or_0(tmp_path, text, port):
    assert vk_sshd.previous_port(layout_with(tmp_path, text)) == port


def test_previous_port_without_a_config_is_0(tmp_path):
    assert vk_sshd.previous_port(layout_with(tmp_path, None)) == 0


def test_read_record(tmp_path):
    layout = layout_with(tmp_path, None)
    assert vk_sshd.read_record(layout) == {}
    layout.record.write_text(json.dumps({"port": 2222, "tag": "t"}))
    assert vk_sshd.read_record(layout) == {"port": 2222, "tag": "t"}
    layout.record.write_text("{broken")
    assert vk_sshd.read_record(layout) == {}
