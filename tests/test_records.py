"""@record against @dataclass(frozen=True): the same class written both ways must behave the
same under every use the schema makes of it (construction, defaults, factories,
__post_init__, equality, hashing, repr, frozenness, dataclasses.fields/replace/asdict)."""

import dataclasses
from dataclasses import field
from typing import ClassVar

import pytest

from pipeline.core.records import record


def twins():
    """The same class as a frozen dataclass and as a record."""
    made = []
    for decorate in (dataclasses.dataclass(frozen=True), record):
        class Base:
            KEY: ClassVar[str] = "base"

            def __post_init__(self):
                if self.count < 0:
                    raise ValueError(f"{self.KEY}: count must be >= 0")

        @decorate
        class Point(Base):
            KEY: ClassVar[str] = "point"
            name: str
            count: int = field(default=1, metadata={"doc": "how many"})
            tags: tuple[str, ...] = ()
            extra: dict = field(default_factory=dict)
            note: str | None = None

        made.append(Point)
    return made


CASES = [(("a",), {}), (("a", 2), {}), (("a",), {"tags": ("x", "y"), "note": "n"}),
         ((), {"name": "b", "count": 0, "extra": {"k": [1, 2]}})]


@pytest.mark.parametrize("args,kwargs", CASES)
def test_a_record_is_built_shown_and_read_as_the_dataclass(args, kwargs):
    dc, rec = twins()
    a, b = dc(*args, **kwargs), rec(*args, **kwargs)
    assert repr(b) == repr(a)
    assert dataclasses.asdict(b) == dataclasses.asdict(a)
    assert vars(b) == vars(a) and list(vars(b)) == list(vars(a))
    assert [(f.name, f.type, f.default, f.default_factory, dict(f.metadata))
            for f in dataclasses.fields(b)] == [
        (f.name, f.type, f.default, f.default_factory, dict(f.metadata))
        for f in dataclasses.fields(a)]
    assert dataclasses.is_dataclass(b) and dataclasses.is_dataclass(rec)
    assert rec.__match_args__ == dc.__match_args__
    changed = dataclasses.replace(b, count=7)
    assert type(changed) is rec and changed.count == 7
    assert repr(changed) == repr(dataclasses.replace(a, count=7)).replace(dc.__qualname__,
                                                                          rec.__qualname__)


def test_equality_and_hash_follow_the_field_values():
    dc, rec = twins()
    assert rec("a", 2, ("x",)) == rec("a", 2, ("x",)) and rec("a") != rec("a", 2)
    assert (rec("a") == dc("a")) is False  # another class is never equal, as with dataclasses
    for cls in (dc, rec):  # a dict field: unhashable, as the dataclass is
        with pytest.raises(TypeError, match="unhashable type: 'dict'"):
            hash(cls("a"))
    hashable = [decorate(type("Pair", (), {"__annotations__": {"a": "int", "b": "tuple"},
                                           "b": ()}))
                for decorate in (dataclasses.dataclass(frozen=True), record)]
    assert hash(hashable[1](1, (2,))) == hash(hashable[0](1, (2,))) == hash((1, (2,)))
    assert len({hashable[1](1), hashable[1](1), hashable[1](2)}) == 2


def test_defaults_live_on_the_class_and_factories_make_a_new_value_each_time():
    dc, rec = twins()
    assert rec.count == dc.count == 1 and rec.tags == dc.tags == ()
    assert not hasattr(rec, "extra") and not hasattr(dc, "extra")
    assert rec("a").extra is not rec("a").extra


def test_frozen_post_init_and_wrong_calls_fail_as_the_dataclass_does():
    dc, rec = twins()
    for cls in (dc, rec):
        obj = cls("a")
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'count'"):
            obj.count = 3
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'name'"):
            del obj.name
        with pytest.raises(ValueError, match="point: count must be >= 0"):
            cls("a", -1)
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'name'"):
            cls()
        with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
            cls("a", colour=1)
        with pytest.raises(TypeError, match="multiple values for argument 'name'"):
            cls("a", name="b")
        with pytest.raises(TypeError, match="positional arguments but 7 were given"):
            cls("a", 1, (), {}, None, 5)


def test_a_record_refuses_what_a_dataclass_refuses_when_declared():
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Listed:
            items: list = []  # noqa: RUF012
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @record
        class Ordered:
            a: int = 1
            b: int


def test_the_schema_classes_are_records():
    """The classes dodo.py's modules declare: no @dataclass is created when dodo.py loads
    (what this saves is in docs/measured/noop_doit.md)."""
    from pipeline.core import (boards, datasets, declared, formats, layout, models, params,
                               variants)

    classes = [params.Rule, params.DownloadParams, params.TrainParams, params.ConvertParams,
               params.EvaluateParams, params.AnalysisParams, params.LayersParams,
               params.BenchParams, params.NightlyParams, params.Build, declared.DatasetDecl,
               params.Params, boards.Board, datasets.RemoteFile, datasets.DatasetSpec,
               formats.ModelFormat, layout.Layout, models.ModelSource, variants.Variant]
    assert all("__dataclass_params__" not in vars(cls) and "__record_names__" in vars(cls)
               for cls in classes)
