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


# --- the figures of the disk-full message, against statvfs and hand sums ------------------
# Sizes sit at a rounding boundary of the message's 0.1 MiB: 52,428 bytes print "0.0 MiB" and
# 52,429 print "0.1 MiB", so a count that is off by one byte changes the message.
EDGE = 52_428


def _free(where) -> int:
    import os

    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def _message(path, needed: int, free: int) -> str:
    return (f"no space left on the device writing {path}: this task's files need more than "
            f"{needed / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB free there; free some space "
            "and rerun (nothing partial was kept, the previous files are unchanged)")


def test_free_bytes_is_statvfs_of_the_nearest_existing_directory(small_disk):
    from pipeline.core.files import free_bytes

    disk = small_disk(1024)
    (disk / "filler").write_bytes(bytes(100_000))  # a tmpfs: nobody else writes there
    assert free_bytes(disk / "not" / "yet" / "made.bin") == _free(disk)
    assert free_bytes(disk) == _free(disk) < 1024 * 1024 - 100_000 + 4096


def test_disk_full_message_counts_each_input_exactly(small_disk):
    from pipeline.core.files import disk_full_message

    disk = small_disk(1024)
    done = disk / ".done.partial"
    done.write_bytes(bytes(EDGE))
    out = disk / "out.bin"
    # Finished temporaries only (no payload, no current file, nothing replaced): EDGE bytes.
    assert disk_full_message(out, [done]) == _message(out, EDGE, _free(disk) + EDGE)
    # A current temporary that is gone counts 0 bytes, as does a finished one that is gone.
    assert disk_full_message(out, [done, disk / "gone"], disk / "gone too") == _message(
        out, EDGE, _free(disk) + EDGE)
    # What the current temporary reached, or the payload when larger.
    current = disk / ".out.bin.partial"
    current.write_bytes(bytes(1000))
    assert disk_full_message(out, [done], current) == _message(
        out, EDGE + 1000, _free(disk) + EDGE + 1000)
    assert disk_full_message(out, [done], current, payload=300_000) == _message(
        out, EDGE + 300_000, _free(disk) + EDGE + 1000)
    # The file it would replace, when larger than everything written.
    out.write_bytes(bytes(400_000))
    assert disk_full_message(out, [done]) == _message(out, 400_000, _free(disk) + EDGE)


def test_disk_full_message_counts_the_files_a_set_would_replace(small_disk):
    from pipeline.core import files

    disk = small_disk(1024)
    (disk / "report.md").write_bytes(bytes(300_000))  # the previous set's file
    with files.outputs_together():
        files.write_text(disk / "report.md", "new")
        temporary = files._pending.get()[disk / "report.md"]
        # report.md's temporary is finished: the file it replaces (300,000 bytes) counts.
        assert files.disk_full_message(disk / "x.bin", [temporary]) == _message(
            disk / "x.bin", 300_000, _free(disk) + 3)


def test_write_json_writes_indented_json_in_the_objects_order(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": 1,\n  "a": [\n    1\n  ]\n}\n'


def test_a_file_past_the_first_read_is_hashed_whole_and_its_change_noticed(tmp_path):
    """sha256_file reads in 1 MiB blocks: a file of 3 MiB and one byte has hashlib's digest
    of all its bytes, and a target whose last byte changed (same size) is reported."""
    import os

    from pipeline.core.files import changed_targets, target_stamps

    data = bytes(range(256)) * (3 * 4096) + b"!"
    model = tmp_path / "big.tflite"
    model.write_bytes(data)
    assert sha256_file(model) == hashlib.sha256(data).hexdigest()
    assert sha256_file(model, chunk=7) == hashlib.sha256(data).hexdigest()
    stamps = target_stamps([model])
    assert stamps[str(model)] == [len(data), os.stat(model).st_mtime_ns,
                                  hashlib.sha256(data).hexdigest()]
    model.write_bytes(data[:-1] + b"?")
    os.utime(model, ns=(1, 1))  # another time, as any rewrite gives
    assert changed_targets(stamps, [model]) == [
        f"{model} has changed since it was written (same size, other bytes)"]


def test_changed_targets_reads_past_unrecorded_and_missing_files(tmp_path):
    from pipeline.core.files import changed_targets, target_stamps

    kept, changed, gone = tmp_path / "k", tmp_path / "c", tmp_path / "g"
    for path in (kept, changed, gone):
        path.write_bytes(b"12345")
    stamps = target_stamps([changed, gone])
    gone.unlink()
    changed.write_bytes(b"123")
    assert changed_targets(stamps, [kept, gone, changed]) == [
        f"{changed} is 3 bytes, 5 when it was written"]
