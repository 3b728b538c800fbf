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
