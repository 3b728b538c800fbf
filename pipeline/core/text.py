"""Text and time helpers every subsystem uses: UTC stamps and ages, untrusted text made safe
for a terminal or markdown, the one rule for formatting a figure, and the emulated label."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

# ANSI/OSC escape sequences first (so their payload goes too), then any other C0/C1 control.
_ESCAPES = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b.?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]|~])")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean_text(text: str) -> str:
    """Untrusted text without terminal escape sequences or control characters (\\n kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def escape_md(text: Any) -> str:
    """Untrusted text as literal markdown/HTML: no links, tags, emphasis or table breaks."""
    cleaned = clean_text(str(text)).replace("\n", " ")
    cleaned = cleaned.replace("&", "&amp;")
    return _MARKDOWN.sub(r"\\\1", cleaned).replace("<", "&lt;").replace(">", "&gt;")


def age_hours(stamp: str | None, now: dt.datetime | None = None) -> float | None:
    if not stamp:
        return None
    try:
        when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return ((now or dt.datetime.now(dt.timezone.utc)) - when).total_seconds() / 3600


def is_old(stamp: str | None, max_age_hours: float | None) -> bool:
    """Older than max_age_hours, of unknown age, or from the future (a wrong clock: such a
    row would otherwise count as fresh until that date plus max_age_hours)."""
    if max_age_hours is None:
        return False
    age = age_hours(stamp)
    return age is None or age < 0 or age > max_age_hours


def fmt_value(value: Any, spec: str, scale: float = 1.0) -> str:
    """`value` * `scale` formatted with `spec`, or "" for no value (every report's one rule).

    With `spec` "," the value is rounded to a whole number first (a median of byte counts
    can be a half)."""
    if value is None:
        return ""
    scaled = value if scale == 1 else value * scale  # an int stays an int for "d"
    return format(round(scaled) if spec == "," else scaled, spec)


# An emulated board's latency is the emulator's: every place that shows a board's figures
# names it so (board column, board line, chart), and nothing compares it with a real board.
EMULATED = "EMULATED"


def board_label(r: dict) -> str:
    return f"{r['board']} ({EMULATED})" if r.get("emulated") else r["board"]
