"""A one-off override of params keys (PIPELINE_SET="train.epochs=1;convert.onnx=false"),
each checked (key, type and rule) on its own. Called by `load_params` only when there is an
override: a module of its own so that loading dodo.py (every `doit`) does not compile it.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.params import OVERRIDE_ENV, ParamsError, parse_section, sections, tomllib


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {why}")


def _override_value(text: str) -> Any:
    """A TOML value (`1`, `false`, `["float16"]`, `"x"`), or else the bare text as a string."""
    try:
        return tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def apply_overrides(doc: dict[str, Any], text: str, origin: str = OVERRIDE_ENV
                    ) -> dict[str, Any]:
    """`doc` with the `section.key=value;...` items of `text` set, each checked (key, type
    and rule) on its own so that a refusal names `origin` and the key, not the file."""
    doc = dict(doc)
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, raw = item.partition("=")
        section, _, name = key.strip().partition(".")
        _check(bool(sep and section and name), origin,
               f"{item!r}: write section.key=value (e.g. train.epochs=1), items separated by ;")
        known = sections()
        _check(section in known, f"{origin}: {section}",
               f"unknown section (known: {', '.join(known)})")
        value = _override_value(raw)
        try:
            parse_section(known[section], section, {name: value})
        except ParamsError as exc:
            raise ParamsError(f"{origin}: {exc}") from None
        table = doc.get(section, {})
        _check(isinstance(table, dict), section, "must be a table")
        doc[section] = {**table, name: value}
    return doc
