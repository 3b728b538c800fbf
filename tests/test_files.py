import hashlib
import json

import pytest

from pipeline.files import atomic_path, sha256_file, write_json


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half written")
            raise RuntimeError("interrupted")
    assert list((tmp_path / "sub").iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"  # the previous good file survives
    with atomic_path(target, suffix=".h5") as tmp:
        assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".partial.h5")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list((tmp_path / "sub").iterdir())) == 1


def test_write_json_and_sha256(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    data = (tmp_path / "a.json").read_bytes()
    assert sha256_file(tmp_path / "a.json") == hashlib.sha256(data).hexdigest()


def test_temporary_names_are_unique_and_never_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "out.bin"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".out.bin.partial").symlink_to(victim)
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second  # two writers of one file (doit -n) never share a name
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert target.read_bytes() == b"one" and victim.read_text() == "precious"
