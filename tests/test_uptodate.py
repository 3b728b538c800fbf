"""A task's code-and-settings check, in a real doit project of one task (run in this
process): it runs when a file's hash or a setting changed and says which, not otherwise.
And the bench task's other check: a board's last result is a success, and fresh."""

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.core.uptodate import CODE_KEY, SETTINGS_KEY, CodeAndSettings, changes, settings_digest


def doit(tmp_path: Path, capsys, code: dict[str, str], *args: str, epochs: int = 1) -> str:
    """Run doit in this process (a mutant of the module is active only here) on a project
    of one task checked by CodeAndSettings; what it printed."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    def make():
        with open(tmp_path / "log.txt", "a") as log:
            log.write("made\n")

    def task_make():
        return {"actions": [make], "targets": [str(tmp_path / "log.txt")],
                "uptodate": [CodeAndSettings(dict(code), {"epochs": epochs})]}

    # `run` writes to its outfile (doit binds sys.stdout as its default when first imported,
    # which may be before this test's capture), `info` to sys.stdout as it is now.
    out = tmp_path / "doit.out"
    config = {"dep_file": str(tmp_path / ".doit.db"), "backend": "json", "verbosity": 2,
              "outfile": str(out)}
    out.write_text("")
    capsys.readouterr()
    DoitMain(ModuleTaskLoader({"task_make": task_make, "DOIT_CONFIG": config})).run(list(args))
    return out.read_text() + capsys.readouterr().out


def test_a_task_reruns_on_another_file_hash_or_setting_and_doit_info_names_it(tmp_path, capsys):
    code = {"a.py": "1", "b.py": "2"}
    assert doit(tmp_path, capsys, code) == ".  make\n"
    assert doit(tmp_path, capsys, code) == "-- make\n"  # up to date
    assert doit(tmp_path, capsys, dict(code)) == "-- make\n"  # the same hashes, another dict
    edited = {"a.py": "1", "b.py": "3", "c.py": "4"}
    info = doit(tmp_path, capsys, edited, "info", "make")
    assert "changed since the last run: b.py edited; c.py added (args" in info
    assert doit(tmp_path, capsys, edited) == ".  make\n"
    assert doit(tmp_path, capsys, edited) == "-- make\n"
    assert "changed since the last run: its settings (args" in doit(
        tmp_path, capsys, edited, "info", "make", epochs=2)
    assert doit(tmp_path, capsys, edited, epochs=2) == ".  make\n"
    assert (tmp_path / "log.txt").read_text() == "made\n" * 3
    # What it wrote is kept in doit's database (the next run compares with it).
    [record] = json.loads((tmp_path / ".doit.db").read_text()).values()
    assert record["_values_:"][CODE_KEY] == edited
    assert record["_values_:"][SETTINGS_KEY] == settings_digest({"epochs": 2})
    log = tmp_path / "log.txt"
    assert record["_values_:"]["targets"] == {str(log): [
        log.stat().st_size, log.stat().st_mtime_ns, hashlib.sha256(log.read_bytes()).hexdigest()]}
    # A target changed behind doit's back: made again, and said why.
    log.write_text("truncated")
    out = doit(tmp_path, capsys, edited, epochs=2)
    assert out.count(".  make\n") == 1, out
    assert f"{log} is 9 bytes, 15 when it was written: rerunning make\n" in out


def test_a_target_not_as_its_task_wrote_it_reruns_the_task_and_says_so(tmp_path, capsys):
    """The check records each target's stamps (stamps.target_stamps) after a successful
    run; a target truncated since then makes the check say "run", naming the file."""
    from types import SimpleNamespace

    from pipeline.core.stamps import target_stamps

    model = tmp_path / "m.tflite"
    model.write_bytes(b"12345678")
    check = CodeAndSettings({"a.py": "1"})
    assert repr(check) == "changed since the last run: nothing"  # not asked yet
    task = SimpleNamespace(name="convert:m", targets=[str(model)])
    values = {CODE_KEY: {"a.py": "1"}, SETTINGS_KEY: settings_digest(None),
              "targets": target_stamps([model])}
    assert check(task, values) is True and repr(check) == "changed since the last run: nothing"
    model.write_bytes(b"1234")
    assert check(task, values) is False
    line = f"{model} is 4 bytes, 8 when it was written"
    assert capsys.readouterr().out == f"{line}: rerunning convert:m\n"
    assert repr(check) == f"changed since the last run: {line}"
    assert check(task, {**values, "targets": {}}) is True  # nothing recorded: nothing to say
    assert check(task, {**values, CODE_KEY: {"a.py": "0"}}) is False  # both, in that order
    assert repr(check) == f"changed since the last run: a.py edited; {line}"


def test_changes_name_each_file_added_removed_or_edited_then_the_settings():
    old = {"a.py": "1", "b.py": "2", "c.py": "3"}
    assert changes(old, "s", dict(old), "s") == []
    assert changes(old, "s", {"a.py": "1", "b.py": "9", "d.py": "4"}, "t") == [
        "b.py edited", "c.py removed", "d.py added", "its settings"]
    assert changes(None, None, old, "s") == [
        "not recorded (a first run, or the task last ran under an older pipeline)"]
    assert changes({}, "s", {}, "s") == []


def test_the_settings_digest_is_the_md5_of_their_sorted_json():
    import hashlib

    assert settings_digest({"b": 1, "a": [1.5, None]}) == hashlib.md5(
        b'{"a": [1.5, null], "b": 1}').hexdigest()
    assert settings_digest(None) == hashlib.md5(b"null").hexdigest()


def test_a_check_recorded_with_its_digest_is_the_check_made_from_its_settings():
    """The cached task graph keeps a check as its code and settings digest
    (pipeline/graph/cache.py): made again from those, it answers as the original."""
    code, settings = {"a.py": "1"}, {"k": [1, 2]}
    made = CodeAndSettings(code, settings)
    recorded = CodeAndSettings.recorded(code, settings_digest(settings))
    assert type(recorded) is CodeAndSettings
    assert (recorded.code, recorded.settings, recorded.changes) == (code, made.settings, [])
    values = {CODE_KEY: code, SETTINGS_KEY: made.settings}
    assert recorded(None, values) is True and recorded.changes == []
    assert recorded(None, {**values, SETTINGS_KEY: "other"}) is False
    assert recorded.changes == ["its settings"]


def test_the_stated_signature_is_that_of_call():
    """doit passes `task` and `values` by the names in the check's signature."""
    import inspect

    def names_and_kinds(signature):
        return [(p.name, p.kind) for p in signature.parameters.values()]

    check = CodeAndSettings({})
    assert names_and_kinds(inspect.signature(check)) == names_and_kinds(
        inspect.signature(check.__call__)) == [
        ("task", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("values", inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def test_only_the_targets_that_exist_are_stamped(tmp_path):
    """A task that succeeded without writing one of its targets: the others are stamped,
    the missing one is left to doit (which reruns a task whose target is missing)."""
    from pipeline.core.stamps import target_stamps

    written, missing = tmp_path / "written.json", tmp_path / "missing.json"
    written.write_text("{}")
    record = CodeAndSettings({"a.py": "1"}, {"k": 1}).record([str(written), str(missing)])
    assert record == {CODE_KEY: {"a.py": "1"}, SETTINGS_KEY: settings_digest({"k": 1}),
                      "targets": target_stamps([written])}


# The bench task's freshness check and what counts as a board's success (moved here from
# boards.py with the functions: a no-op `doit` runs them from the cached graph).
NO_RUNTIME = {"error": "NO RUNTIME: no TFLite runtime on this board"}


@pytest.mark.parametrize("doc, succeeded", [
    ({"status": "ok"}, True),
    ({"status": "failed", "errors": [], "missing": [NO_RUNTIME]}, False),
    ({"status": "partial", "errors": [], "missing": [NO_RUNTIME]}, True),
    ({"status": "partial", "errors": [], "missing": [NO_RUNTIME, NO_RUNTIME]}, True),
    ({"status": "partial", "missing": [NO_RUNTIME]}, False),
    ({"status": "partial", "errors": ["x"], "missing": [NO_RUNTIME]}, False),
    ({"status": "partial", "errors": [], "missing": []}, False),
    ({"status": "partial", "errors": [], "missing": NO_RUNTIME}, False),
    ({"status": "partial", "errors": []}, False),
    ({"status": "partial", "errors": [], "missing": [NO_RUNTIME, {"error": "timed out"}]},
     False),
    ({"status": "partial", "errors": [], "missing": [NO_RUNTIME, "NO RUNTIME: x"]}, False),
    ({"status": "partial", "errors": [], "missing": [{}]}, False),
    (["ok"], False),
    ({}, False),
])
def test_a_bench_succeeded_when_ok_or_only_runtimes_are_missing(doc, succeeded):
    from pipeline.core.uptodate import bench_succeeded

    assert bench_succeeded(doc) is succeeded


@pytest.mark.parametrize("age_s, hours, fresh", [
    (3600 - 60, 1, True), (3600 + 60, 1, False), (2 * 3600 - 60, 2, True),
    (2 * 3600 + 60, 2, False), (0.5 * 3600 - 60, 0.5, True), (0.5 * 3600 + 60, 0.5, False),
    (-60, 1, False),   # measured in the future: a clock set wrong
    (0, 1, True),      # measured this second
    (100 * 3600 + 30, 100, False),
])
def test_a_result_is_fresh_for_hours_after_it_was_measured(tmp_path, age_s, hours, fresh):
    import datetime as dt
    import json

    from pipeline.core.uptodate import measured_within

    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)
    path = tmp_path / "board.json"
    path.write_text(json.dumps({"status": "ok", "measured_utc": when.strftime(
        "%Y-%m-%dT%H:%M:%SZ")}))
    assert measured_within(path, hours) is fresh
    path.write_text(json.dumps({"status": "failed", "measured_utc": when.strftime(
        "%Y-%m-%dT%H:%M:%SZ")}))
    assert measured_within(path, hours) is False


@pytest.mark.parametrize("text", ["", "{", "[]", '{"status": "ok"}',
                                  '{"status": "ok", "measured_utc": "yesterday"}',
                                  '{"status": "ok", "measured_utc": 5}'])
def test_an_unreadable_result_is_never_fresh(tmp_path, text):
    from pipeline.core.uptodate import measured_within

    path = tmp_path / "board.json"
    path.write_text(text)
    assert measured_within(path, 24) is False
    assert measured_within(tmp_path / "missing.json", 24) is False


def test_measured_within_reads_only_utc_now_stamps_and_ages_them_by_the_clock(tmp_path):
    """The bench task's freshness check parses measured_utc without strptime: the stamps
    utc_now() writes are read to the second (aged against datetime's own clock), anything
    else is not fresh."""
    import datetime as dt
    import json

    from pipeline.core.uptodate import measured_within

    result = tmp_path / "local.json"

    def fresh(stamp, hours=1.0):
        result.write_text(json.dumps({"status": "ok", "measured_utc": stamp}))
        return measured_within(result, hours)

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731 (utc_now's format)
    assert fresh(stamp(now - dt.timedelta(minutes=59)))
    assert not fresh(stamp(now - dt.timedelta(minutes=61)))
    assert fresh(stamp(now - dt.timedelta(minutes=30)), hours=0.51)
    assert not fresh(stamp(now - dt.timedelta(minutes=31)), hours=0.51)
    for bad in ("2026-12-06 10:00:00", "2026-12-06T10:00:00", "2026-13-01T00:00:00Z",
                "2026-12-06T10:00:00.5Z", "2026-12-06T10:00:00+00:00", 5, None, ""):
        assert not fresh(bad), bad
