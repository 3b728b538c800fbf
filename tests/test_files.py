import hashlib
import json

import pytest

from pipeline.core.files import atomic_path, sha256_file, write_json


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


def test_outputs_together_appear_all_or_none(tmp_path):
    from pipeline.core.files import outputs_together, write_text

    a, b = tmp_path / "a.md", tmp_path / "b.csv"
    with outputs_together():
        write_text(a, "one")
        assert not a.exists()  # nothing is renamed before the whole set is complete
        write_text(b, "two")
    assert a.read_text() == "one" and b.read_text() == "two"
    with pytest.raises(RuntimeError):
        with outputs_together():
            write_text(a, "new one")
            with outputs_together():  # a nested block joins the outer one
                write_text(b, "new two")
            raise RuntimeError("the stage failed after writing both")
    assert a.read_text() == "one" and b.read_text() == "two"  # the previous set, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.csv"]  # no temporaries


def test_a_full_disk_is_one_line_naming_the_file_and_the_space_needed(small_disk):
    from pipeline.core.files import DiskFullError, outputs_together, write_bytes, write_text

    disk = small_disk(64)
    write_text(disk / "old.md", "previous report")
    with pytest.raises(DiskFullError) as err:
        with outputs_together():
            write_text(disk / "old.md", "new report")
            write_bytes(disk / "big.bin", b"x" * 200_000)
    message = str(err.value)
    assert "\n" not in message
    assert f"writing {disk / 'big.bin'}" in message
    needed = float(message.split("need more than ")[1].split(" MiB")[0])
    free = float(message.split("MiB, ")[1].split(" MiB free")[0])
    # At least the 200,000-byte payload; free is what the tmpfs has (64 KiB) once cleaned.
    assert 200_000 / 2**20 <= needed + 0.05 and needed < 0.3
    assert abs(free - 64 / 1024) <= 0.05
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert (disk / "old.md").read_text() == "previous report"  # the set did not half-happen
    assert sorted(p.name for p in disk.iterdir()) == ["old.md"]


def test_changed_targets_notice_truncation_and_other_bytes_but_not_a_touch(tmp_path):
    import os

    from pipeline.core.files import changed_targets, target_stamps

    model, other = tmp_path / "m.tflite", tmp_path / "n.tflite"
    model.write_bytes(b"0123456789")
    other.write_bytes(b"abc")
    stamps = target_stamps([model, other])
    assert stamps[str(model)][0] == 10
    assert stamps[str(model)][2] == hashlib.sha256(b"0123456789").hexdigest()
    assert changed_targets(stamps, [model, other]) == []
    os.utime(model, ns=(1, 1))  # touched, same bytes: intact
    assert changed_targets(stamps, [model]) == []
    model.write_bytes(b"0123456788")  # same size, other bytes (and a new time)
    assert changed_targets(stamps, [model]) == [
        f"{model} has changed since it was written (same size, other bytes)"]
    with open(model, "r+b") as fh:
        fh.truncate(4)
    assert changed_targets(stamps, [model, other]) == [
        f"{model} is 4 bytes, 10 when it was written"]
    other.unlink()  # missing: doit itself reruns the task for that
    assert changed_targets(stamps, [other]) == []
    assert changed_targets({}, [model]) == []  # never recorded (an older build): no verdict
