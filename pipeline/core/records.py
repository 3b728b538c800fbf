"""Frozen record classes that behave as frozen dataclasses, without @dataclass's cost.

`@dataclass` writes each class's __init__, __repr__, __eq__, __hash__, __setattr__ and
__delattr__ as source text and compiles it with exec(): about 1 ms a class, and the 19
classes of the modules dodo.py loads (params, boards, datasets, models, formats, variants,
layout) were 18-26 ms of every no-op `doit` (issue 22; docs/measured/noop_doit.md). A
`@record` class gets shared, generic methods instead, and the same `__dataclass_fields__`
(dataclasses.Field objects), so `dataclasses.fields`, `replace`, `asdict` and
`is_dataclass` work on it as on a frozen dataclass. It behaves as one
(tests/test_records.py compares each behaviour with a real frozen dataclass): positional or
keyword construction, defaults and default factories, `__post_init__`, equality and hashing
by field values, the same repr, `FrozenInstanceError` on assignment or deletion.

Not supported (no schema class uses them): InitVar, field(init=False/repr=False/
compare=False/hash=False), kw_only, slots, order.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, ClassVar, TypeVar, get_origin

T = TypeVar("T", bound=type)
MISSING: Any = dataclasses.MISSING


def _is_classvar(annotation: Any) -> bool:
    """A ClassVar annotation (a string under `from __future__ import annotations`), which
    names a class attribute, not a field (as dataclasses decides)."""
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or get_origin(annotation) is ClassVar


def _own_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields `cls` itself annotates, as dataclasses records them; their defaults become
    class attributes (a field with only a default factory has none), as with @dataclass."""
    fields = {}
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, dataclasses.Field) else dataclasses.field(default=value)
        if spec.default is not MISSING and spec.default.__class__.__hash__ is None:
            raise ValueError(f"mutable default {type(spec.default)} for field {name} is not "
                             "allowed: use default_factory")
        spec.name, spec.type = name, annotation
        spec._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
        if isinstance(value, dataclasses.Field):
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        fields[name] = spec
    return fields


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names, fields = cls.__record_names__, cls.__dataclass_fields__
    if len(args) > len(names):
        raise TypeError(f"{cls.__qualname__}.__init__() takes {len(names) + 1} positional "
                        f"arguments but {len(args) + 1} were given")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in fields:
            raise TypeError(f"{cls.__qualname__}.__init__() got an unexpected keyword "
                            f"argument {key!r}")
        if key in values:
            raise TypeError(f"{cls.__qualname__}.__init__() got multiple values for argument "
                            f"{key!r}")
        values[key] = value
    state = self.__dict__
    for name in names:
        if name in values:
            state[name] = values[name]
        elif fields[name].default is not MISSING:
            state[name] = fields[name].default
        elif fields[name].default_factory is not MISSING:
            state[name] = fields[name].default_factory()
        else:
            raise TypeError(f"{cls.__qualname__}.__init__() missing 1 required positional "
                            f"argument: {name!r}")
    if hasattr(cls, "__post_init__"):
        self.__post_init__()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in type(self).__record_names__)


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(_values(self))


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_names__)
    return f"{type(self).__qualname__}({shown})"


def _setattr(self: Any, name: str, value: Any) -> None:
    if "__record_names__" in type(self).__dict__ or name in type(self).__dataclass_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    if "__record_names__" in type(self).__dict__ or name in type(self).__dataclass_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


def record(cls: T) -> T:
    """`cls` as a frozen record (what `@dataclass(frozen=True)` makes, cheaply)."""
    fields: dict[str, dataclasses.Field] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(getattr(base, "__dataclass_fields__", {}))
    fields.update(_own_fields(cls))
    names = tuple(fields)
    defaulted = [n for n in names if fields[n].default is not MISSING
                 or fields[n].default_factory is not MISSING]
    required_after = [n for n in names[names.index(defaulted[0]):]
                      if n not in defaulted] if defaulted else []
    if required_after:
        raise TypeError(f"non-default argument {required_after[0]!r} follows default argument")
    own = cls.__dict__
    methods = {"__init__": _init, "__repr__": _repr, "__eq__": _eq}
    for name, method in methods.items():
        if name not in own:
            setattr(cls, name, method)
    # @dataclass(frozen=True)'s rule: keep a __hash__ the class wrote, else hash the fields
    # (a class that defines __eq__ alone has __hash__ = None, which is not its own).
    if own.get("__hash__", None) is None:
        cls.__hash__ = _hash  # type: ignore[assignment]
    for name in ("__setattr__", "__delattr__"):
        if name in own:
            raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
    cls.__setattr__ = _setattr  # type: ignore[assignment]
    cls.__delattr__ = _delattr  # type: ignore[assignment]
    cls.__dataclass_fields__ = fields  # type: ignore[attr-defined]
    cls.__record_names__ = names  # type: ignore[attr-defined]
    cls.__match_args__ = names  # type: ignore[attr-defined]
    return cls
