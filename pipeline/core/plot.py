"""matplotlib helpers shared by every chart (matplotlib is imported inside, on use)."""

from __future__ import annotations

from typing import Any


def plain_log_labels(axis: Any) -> None:
    """Tick labels on a log axis as plain numbers (20, not 2 x 10^1), and between decades
    only at 2x, 3x and 5x, so the labels never overlap."""
    import matplotlib.ticker

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    axis.set_tick_params(which="minor", labelsize=7)
