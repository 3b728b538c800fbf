"""The board inventory's rules at their boundaries, generated from the schema (the Board
dataclass's param() rules), as tests/test_params.py does for params: a new board setting with
a range gets these tests without anyone writing them."""

import dataclasses
import typing

import pytest

from pipeline.core.boards import Board, load_boards
from pipeline.core.params import ParamsError, rule_of
from tests.test_params import _inside, _number_type, boundary_cases


def board_fields():
    hints = typing.get_type_hints(Board)
    return [pytest.param(spec, hints[spec.name], id=spec.name)
            for spec in dataclasses.fields(Board) if rule_of(spec) != rule_of(
                dataclasses.field())]


def load_one(tmp_path, key, value):
    """The inventory with one board "b" whose `key` is `value` (TOML via the test's writer)."""
    from tests.project import dump_toml

    path = tmp_path / "boards.toml"
    path.write_text(dump_toml({"boards": [{"name": "b", "host": "h", key: value}]}))
    return load_boards(path)[0]


@pytest.mark.parametrize("spec, hint", board_fields())
def test_every_board_rule_holds_at_its_boundaries(spec, hint, tmp_path):
    rule, kind = rule_of(spec), _number_type(hint)
    listed = typing.get_origin(hint) is tuple
    cases = list(boundary_cases(rule, kind))
    assert cases
    for value, accepted in cases:
        given = [value] if listed else value
        if accepted:
            assert getattr(load_one(tmp_path, spec.name, given), spec.name) == (
                (value,) if listed else value)
        else:
            with pytest.raises(ParamsError) as err:
                load_one(tmp_path, spec.name, given)
            assert f"boards[b].{spec.name}" in str(err.value) and rule.describe() in str(
                err.value)
            assert str(tmp_path / "boards.toml") in str(err.value)
    zero = [0] if listed else 0
    if _inside(rule, 0):
        assert getattr(load_one(tmp_path, spec.name, zero), spec.name) == (
            (0,) if listed else 0)
    else:
        with pytest.raises(ParamsError, match=rf"boards\[b\]\.{spec.name}"):
            load_one(tmp_path, spec.name, zero)


@pytest.mark.parametrize("spec, hint", board_fields())
def test_every_board_number_refuses_a_bool(spec, hint, tmp_path):
    listed = typing.get_origin(hint) is tuple
    with pytest.raises(ParamsError, match=rf"boards\.{spec.name}: must be (int|float), got bool"):
        load_one(tmp_path, spec.name, [True] if listed else True)


@pytest.mark.parametrize("spec, hint", [p for p in board_fields()
                                        if rule_of(p.values[0]).distinct])
def test_every_board_list_refuses_duplicates(spec, hint, tmp_path):
    with pytest.raises(ParamsError, match=rf"boards\[b\]\.{spec.name}: items must be distinct"):
        load_one(tmp_path, spec.name, [1, 1])


def test_threads_may_not_be_empty_and_names_may_not_repeat(tmp_path):
    with pytest.raises(ParamsError, match=r"boards\[b\]\.threads: a non-empty list"):
        load_one(tmp_path, "threads", [])
    path = tmp_path / "two.toml"
    path.write_text('[[boards]]\nname = "b"\n\n[[boards]]\nname = "b"\n')
    with pytest.raises(ParamsError, match=r"two.toml: duplicate board names in \['b', 'b'\]"):
        load_boards(path)


def test_board_names_at_their_length_limit():
    assert Board(name="k" * 64).name == "k" * 64
    with pytest.raises(ParamsError, match="must be 1-64 ASCII letters"):
        Board(name="k" * 65)
    with pytest.raises(ParamsError, match="must be 1-64 ASCII letters"):
        Board(name="")


NAME_RULE = ("must be 1-64 ASCII letters, digits, - and _, not starting with - "
             "(it names a task and files)")


def refusal(**settings) -> str:
    with pytest.raises(ParamsError) as err:
        Board(**settings)
    return str(err.value)


def test_a_refused_name_is_shown_whole_up_to_40_characters_then_cut():
    assert refusal(name="!" * 40) == f"boards.name: {'!' * 40!r} {NAME_RULE}"
    assert refusal(name="!" * 41) == f"boards.name: {'!' * 40 + '...'!r} {NAME_RULE}"
    assert refusal(name="-k") == f"boards.name: '-k' {NAME_RULE}"


@pytest.mark.parametrize("remote_dir, message", [
    ("", "must not be empty"),
    ("  ", "must not be empty"),
    ("~k1/bench", "'~k1/bench': only ~/ (the login user's home) is understood; give an "
                  "absolute path instead"),
    ("~", "'~': only ~/ (the login user's home) is understood; give an absolute path instead"),
    ("~/", "'~/' is a home or root directory; name a directory of its own, e.g. tflite-bench"),
    ("~//", "'~//' is a home or root directory; name a directory of its own, e.g. "
            "tflite-bench"),
    ("/", "'/' is a home or root directory; name a directory of its own, e.g. tflite-bench"),
    ("//", "'//' is a home or root directory; name a directory of its own, e.g. "
           "tflite-bench"),
    (".", "'.' is a home or root directory; name a directory of its own, e.g. tflite-bench"),
])
def test_remote_dirs_that_name_no_directory_of_their_own_are_refused(remote_dir, message):
    assert refusal(name="b", remote_dir=remote_dir) == f"boards[b].remote_dir: {message}"


@pytest.mark.parametrize("remote_dir, remote_path", [
    ("~/bench", "bench"), ("./bench", "./bench"), ("/opt/bench/", "/opt/bench/"),
    ("bench~", "bench~"), ("a.", "a."), ("/.", "/."), ("~/X", "X"), ("X/X", "X/X"),
])
def test_remote_dirs_of_their_own_are_accepted(remote_dir, remote_path):
    assert Board(name="b", remote_dir=remote_dir).remote_path == remote_path


def test_a_host_that_ssh_would_read_as_an_option_is_refused():
    assert refusal(name="b", host="-oProxyCommand=x") == \
        "boards[b].host: must not start with '-'"
    assert Board(name="b", host="k1-lab.lan").host == "k1-lab.lan"


def test_an_inventory_without_boards_is_empty_and_other_tables_are_refused(tmp_path):
    path = tmp_path / "boards.toml"
    path.write_text("")
    assert load_boards(path) == ()
    path.write_text('[board]\nname = "b"\n[x]\n')
    with pytest.raises(ParamsError) as err:
        load_boards(path)
    assert str(err.value) == f"{path}: unknown key(s) ['board', 'x']; declare [[boards]] entries"


R = "<redacted>"


@pytest.mark.parametrize("options, shown", [
    (["-i", "/home/me/.ssh/k1"], ["-i", R]),
    (["-i/home/me/.ssh/k1"], [f"-i{R}"]),
    (["-l", "me", "-F", "cfg", "-S", "sock", "-J", "jump"], ["-l", R, "-F", R, "-S", R, "-J", R]),
    (["-o", "IdentityFile=/k"], ["-o", f"IdentityFile={R}"]),
    (["-o", "User me"], ["-o", f"User={R}"]),
    (["-oProxyJump=jump"], [f"-oProxyJump={R}"]),
    (["-o", "StrictHostKeyChecking=yes", "-p", "22", "-v"],
     ["-o", "StrictHostKeyChecking=yes", "-p", "22", "-v"]),
    (["-o", "User"], ["-o", "User"]),   # a keyword without a value has nothing to hide
    (["-i"], ["-i"]),
    (["-C", "-i", "k", "-C"], ["-C", "-i", R, "-C"]),
])
def test_ssh_options_lose_every_value_that_names_a_login_a_key_or_a_file(options, shown):
    from pipeline.core.boards import redacted_ssh_options

    assert redacted_ssh_options(options) == shown


def test_public_settings_hide_the_user_and_the_login_of_the_host_only():
    board = Board(name="b", host="me@k1.lan", user="root", port=2222,
                  ssh_options=("-i", "/k"))
    public = board.public_settings()
    assert public == {**dataclasses.asdict(board), "host": f"{R}@k1.lan", "user": R,
                      "ssh_options": ["-i", R]}
    # ssh splits at the last @: the login itself may hold one (a domain account).
    assert Board(name="b", host="me@corp@k1.lan").public_settings()["host"] == f"{R}@k1.lan"
    plain = Board(name="b", host="k1.lan")
    assert plain.public_settings() == dataclasses.asdict(plain) | {"ssh_options": []}
    assert plain.settings() == dataclasses.asdict(plain)
