"""latency.png: real and emulated boards never share an axis, NO RUNTIME rows are marked gaps,
and every point sits at its row's p50 (read back from the Figure before it is saved)."""

import pytest

from pipeline.bench.latency_chart import LABEL_ROOM, WHISKER_REACH, chart_panels, latency_figure


def row(variant, board, threads, p50, emulated=False):
    """A timed row: p10 and p90 10 % either side of the p50."""
    return {"build": "b", "variant": variant, "board": board, "threads": threads,
            "p10_us": 0.9 * p50, "p50_us": p50, "p90_us": 1.1 * p50, "emulated": emulated}


def no_runtime(variant, board, threads, emulated=False):
    return {"build": "b", "variant": variant, "board": board, "threads": threads,
            "missing": "NO RUNTIME: no TFLite runtime on this board - build one from source",
            "emulated": emulated}


ROWS = [row("float32", "k1", 1, 120.0), row("int8", "k1", 1, 80.0),
        row("onnx_int8", "k1", 1, 95.0), row("float32", "local", 2, 40.0),
        row("onnx_int8", "virtual-k1", 1, 48_000.0, emulated=True),
        no_runtime("int8", "virtual-k1", 1, emulated=True),
        {"build": "", "variant": "", "board": "x", "threads": "", "error": "unreachable"}]


def panels_of(fig):
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def points(ax):
    """{case gid: (x, y)} of the timed points of a panel."""
    return {line.get_gid(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
            if line.get_gid() and not line.get_gid().startswith("gap")}


def test_a_real_board_never_shares_an_axis_with_an_emulated_one():
    fig = latency_figure(ROWS)
    panels = panels_of(fig)
    assert list(panels) == ["b real", "b emulated"]
    real, emulated = panels["b real"], panels["b emulated"]
    assert points(real) == {"float32 k1 x1": (120.0, pytest.approx(0, abs=0.5)),
                            "int8 k1 x1": (80.0, pytest.approx(1, abs=0.5)),
                            "onnx_int8 k1 x1": (95.0, pytest.approx(2, abs=0.5)),
                            "float32 local x2": (40.0, pytest.approx(0, abs=0.5))}
    # The real panel is sized by the real boards: the slowest p90 (132 us) plus label room,
    # not the emulator's 52,800.
    assert real.get_xlim() == pytest.approx((0, 1.1 * 120.0 * LABEL_ROOM))
    assert set(points(emulated)) == {"onnx_int8 virtual-k1 x1"}
    assert emulated.get_xlim()[1] == pytest.approx(1.1 * 48_000.0 * LABEL_ROOM)
    assert "EMULATED" in emulated.get_title(loc="left")


def test_points_keep_the_registry_order_top_to_bottom():
    real = panels_of(latency_figure(ROWS))["b real"]
    labels = [t.get_text().split("\n")[0] for t in real.get_yticklabels()]
    assert labels == ["float32", "int8", "onnx_int8"]
    assert real.get_ylim() == (2.5, -0.5)


def test_no_runtime_rows_are_marked_gaps():
    emulated = panels_of(latency_figure(ROWS))["b emulated"]
    gap = next(line for line in emulated.lines if line.get_gid() == "gap int8 virtual-k1 x1")
    labels = {t.get_text() for t in emulated.texts if t.get_gid() == "gap-label"}
    assert labels == {"NO RUNTIME: no TFLite runtime on this board (virtual-k1 x1)"}
    assert gap.get_xdata()[0] == 0 and gap.get_markerfacecolor() == "none"
    # Its row is int8's (registry order: int8 before onnx_int8): y = 0.
    assert gap.get_ydata()[0] == pytest.approx(0, abs=0.5)
    assert not gap.get_clip_on()  # a marker at x = 0 is drawn whole


def test_panels_hold_only_rows_with_a_build():
    panels = chart_panels(ROWS)
    assert [(build, emulated, len(rows)) for build, emulated, rows in panels] == [
        ("b", False, 4), ("b", True, 2)]


def test_no_results_is_said():
    fig = latency_figure([])
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["no timed results"]


def test_one_noisy_p90_does_not_squash_the_panel():
    noisy = {**row("onnx_int8", "local", 2, 200.0), "p90_us": 4400.0}
    real = panels_of(latency_figure([row("int8", "local", 1, 2.0), noisy]))["b real"]
    # The axis reaches 3x the slowest p50 (600 us), not the 4,400 us whisker...
    assert real.get_xlim() == pytest.approx((0, WHISKER_REACH * 200.0 * LABEL_ROOM))
    # ...and the cut whisker says where it ends.
    cut = [t.get_text() for t in real.texts if t.get_gid() == "cut-whisker"]
    assert cut == ["200.0 µs  (p90 4400.0 µs, off the axis ▸)"]


def test_a_chart_that_cannot_be_written_leaves_no_figure_open(tmp_path):
    """A failed write (here: the folder is a file) raises, and pyplot keeps no figure."""
    import matplotlib.pyplot as plt

    from pipeline.bench.latency_chart import write_latency_chart

    (tmp_path / "not-a-dir").write_text("")
    before = plt.get_fignums()
    with pytest.raises(OSError):
        write_latency_chart([], tmp_path / "not-a-dir" / "latency.png")
    assert plt.get_fignums() == before
