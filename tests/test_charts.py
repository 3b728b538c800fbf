import math
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.nightly.charts import (MAX_BUILD_COLUMNS, MAX_RUN_TICKS, MIN_SPAN_PT, Gates,
                                     nightly_figure, run_dates)

BUILDS, BOARDS, THREADS = ("b_cnn", "b_mlp"), ("k1", "local"), (1, 4)
VARIANTS = ("keras", "float32", "int8", "float16", "dynamic_range")


def history(n_runs=3, builds=BUILDS, dated=True):
    """Runs whose every figure is a distinct, known number (p50 = 1000 b + 100 v + 10 t + run),
    one night apart from 2026-11-21 02:01 on (run r at 02:0r for the first nine)."""
    runs, figures = [], {}
    for run in range(1, n_runs + 1):
        day = datetime(2026, 11, 20, 2, run % 10, tzinfo=timezone.utc) + timedelta(days=run)
        runs.append({"id": run, **({"started_utc": day.strftime("%Y-%m-%dT%H:%M:%SZ")}
                                   if dated else {})})
        acc, lat = {}, {}
        for b, build in enumerate(builds):
            for v, variant in enumerate(VARIANTS):
                # Keras and float32 equal, as they usually are: they must stay distinguishable.
                value = 0.98 + 0.001 * run + (0 if variant in ("keras", "float32") else -0.002 * v)
                acc[(build, variant)] = {"accuracy": value, "drift_pt": -0.1 * v - 0.01 * run}
                if variant == "keras":
                    continue
                for board in BOARDS:
                    for t in THREADS:
                        lat[(build, variant, board, t)] = {
                            "p50_us": 1000.0 * (b + 1) + 100 * v + 10 * t + run}
        figures[run] = {"accuracy": acc, "latency": lat, "boards": {}}
    return runs, figures


def looks(ax):
    return [(line.get_color(), line.get_marker(), line.get_linestyle(), line.get_linewidth(),
             line.get_alpha()) for line in ax.lines if line.get_label() != "_nolegend_"
            and not line.get_label().startswith("_")]


def test_small_multiples_one_column_per_build_one_latency_row_per_board():
    fig = nightly_figure(*history())
    axes = fig.axes
    assert len(axes) == (2 + len(BOARDS)) * len(BUILDS)
    titles = [ax.get_title() for ax in axes]
    assert titles[:2] == ["b_cnn: test accuracy", "b_mlp: test accuracy"]
    assert "b_mlp on local: p50 latency" in titles
    latency = [ax for ax in axes if "latency" in ax.get_title()]
    assert all(ax.get_yscale() == "log" for ax in latency)


def test_every_series_in_a_panel_has_its_own_look_and_keras_stays_visible():
    fig = nightly_figure(*history())
    for ax in fig.axes:
        styles = looks(ax)
        assert len(styles) == len(set(styles)), ax.get_title()
    acc = fig.axes[0]
    keras, float32 = (next(line for line in acc.lines if line.get_label().startswith(name))
                      for name in ("keras", "float32"))
    assert list(keras.get_ydata()) == list(float32.get_ydata())  # the same figures...
    assert keras.get_linewidth() >= 3 * float32.get_linewidth()  # ...drawn as a band under it
    assert keras.get_zorder() < float32.get_zorder()
    # Big pale dots as well: with a single run there is no line to see.
    assert keras.get_marker() == "o" and keras.get_markersize() > 2 * float32.get_markersize()
    # 4 variants x 2 thread counts in every latency panel, 8 distinct looks.
    latency = next(ax for ax in fig.axes if ax.get_title() == "b_cnn on k1: p50 latency")
    assert len(looks(latency)) == 8


def test_plotted_values_are_the_figures():
    runs, figures = history()
    fig = nightly_figure(runs, figures)
    latency = next(ax for ax in fig.axes if ax.get_title() == "b_mlp on local: p50 latency")
    line = next(line for line in latency.lines if line.get_label() == "int8 ×4")
    # b_mlp: b = 1, int8: v = 2, 4 threads: 2000 + 200 + 40 + run.
    assert list(line.get_ydata()) == pytest.approx([2241.0, 2242.0, 2243.0])
    acc = fig.axes[0]
    int8 = next(line for line in acc.lines if line.get_label() == "int8")
    assert list(int8.get_ydata()) == pytest.approx([100 * (0.98 + 0.001 * r - 0.004)
                                                    for r in (1, 2, 3)])
    drift = fig.axes[len(BUILDS)]
    assert [line.get_label() for line in drift.lines if not line.get_label().startswith("_")] \
        == ["int8"]  # only the drift-gated variants


def test_the_x_axis_shows_dates_and_run_numbers():
    runs, figures = history()
    fig = nightly_figure(runs, figures)
    assert run_dates(runs)[0] == datetime(2026, 11, 21, 2, 1, tzinfo=timezone.utc)
    bottom = fig.axes[-1]
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert labels == ["2026-11-21\n02:01 #1", "2026-11-22\n02:02 #2", "2026-11-23\n02:03 #3"]
    assert list(bottom.lines[0].get_xdata()) == run_dates(runs)  # placed at their dates
    # Without start times (an old database), the run numbers.
    fig = nightly_figure(*history(dated=False))
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["1", "2", "3"]


def test_a_missing_figure_is_a_gap_not_a_zero():
    runs, figures = history()
    del figures[2]["latency"][("b_cnn", "int8", "k1", 1)]
    fig = nightly_figure(runs, figures)
    ax = next(ax for ax in fig.axes if ax.get_title() == "b_cnn on k1: p50 latency")
    line = next(line for line in ax.lines if line.get_label() == "int8 ×1")
    ys = list(line.get_ydata())
    assert ys[0] == 1211.0 and math.isnan(ys[1]) and ys[2] == 1213.0


def test_many_builds_are_capped_and_the_title_says_so():
    builds = tuple(f"b{i}" for i in range(MAX_BUILD_COLUMNS + 2))
    fig = nightly_figure(*history(2, builds))
    assert len(fig.axes) == (2 + len(BOARDS)) * MAX_BUILD_COLUMNS
    assert f"first {MAX_BUILD_COLUMNS} of {len(builds)} builds" in fig._suptitle.get_text()


def panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def flat_history(n_runs, accuracy=0.9923, drift=-0.02):
    """Nights on which nothing changed: the same accuracy and drift every run."""
    runs, figures = history(n_runs, builds=("b",))
    for run in figures.values():
        for key in run["accuracy"]:
            run["accuracy"][key] = {"accuracy": accuracy, "drift_pt": drift}
    return runs, figures


def test_an_unchanged_model_is_a_flat_line_not_a_cliff():
    fig = nightly_figure(*flat_history(5))
    for title, value in (("b: test accuracy", 99.23), ("b: int8 drift vs Keras", -0.02)):
        lo, hi = panel(fig, title).get_ylim()
        assert hi - lo >= MIN_SPAN_PT  # at least ±0.5 points, whatever the data's spread
        assert lo < value - 0.4 and value + 0.4 < hi  # the flat line in the middle


def test_gate_lines_are_drawn_where_the_gates_are():
    gates = Gates({"float": 98.5, "int8": 98.0}, max_drift_pt=1.0)
    fig = nightly_figure(*flat_history(5), gates)
    acc, drift = panel(fig, "b: test accuracy"), panel(fig, "b: int8 drift vs Keras")
    assert sorted(line.get_ydata()[0] for line in acc.lines if line.get_gid() == "gate") \
        == [98.0, 98.5]
    assert [line.get_ydata()[0] for line in drift.lines if line.get_gid() == "gate"] == [-1.0]
    # Within reach of the data (99.23 %, -0.02 pt): inside the panel.
    assert acc.get_ylim()[0] < 98.0 and drift.get_ylim()[0] < -1.0


def test_a_far_gate_is_named_at_the_edge_and_does_not_squash_the_data():
    fig = nightly_figure(*flat_history(5), Gates({"float": 70.0, "int8": 70.0}, 5.0))
    acc = panel(fig, "b: test accuracy")
    lo, hi = acc.get_ylim()
    assert hi - lo < 5  # the data's scale, not 70..100
    labels = [t.get_text() for t in acc.texts if t.get_gid() == "gate-label"]
    assert labels == ["float and int8 floor 70 % (below)"]  # equal floors: one line


def test_many_nights_keep_the_run_axis_readable():
    runs, figures = history(40, builds=("b",))
    fig = nightly_figure(runs, figures)
    fig.canvas.draw()
    bottom = fig.axes[-1]
    labels = [t for t in bottom.get_xticklabels() if t.get_text()]
    assert 2 <= len(labels) <= MAX_RUN_TICKS
    assert labels[-1].get_text().endswith("#40")  # the latest night is always labelled
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # no two labels overlap
    line = next(line for line in bottom.lines if line.get_gid() != "gate")
    assert len(line.get_xdata()) == 40  # every night keeps its point


def test_coinciding_series_nest_instead_of_the_last_one_hiding_the_others():
    """Variants often score the same (float32 and its ONNX export; int8 and its ONNX forms):
    in a panel where every series has the same figures, each later variant is a size larger
    and drawn behind, so every marker and line shows a ring around the one in front."""
    fig = nightly_figure(*flat_history(3))
    acc = panel(fig, "b: test accuracy")
    series = [line for line in acc.lines if line.get_gid() != "gate"
              and not line.get_label().startswith(("_", "keras"))]
    assert len({tuple(line.get_ydata()) for line in series}) == 1  # all on one line
    front_to_back = sorted(series, key=lambda line: -line.get_zorder())
    assert [line.get_label() for line in front_to_back] \
        == ["float32", "int8", "float16", "dynamic_range"]  # registry order, first in front
    sizes = [line.get_markersize() for line in front_to_back]
    widths = [line.get_linewidth() for line in front_to_back]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    assert all(a < b for a, b in zip(widths, widths[1:])), widths


def test_a_rerun_soon_after_a_night_does_not_put_its_label_on_the_nights():
    """Real nights are not evenly spaced (here runs 1 and 2 were three minutes apart, the
    others a week): no two run labels overlap, and the latest is labelled."""
    runs, figures = history(6, builds=("b",))
    start = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
    offsets = [timedelta(0), timedelta(minutes=3)] + [timedelta(days=7 * k) for k in range(1, 5)]
    for run, offset in zip(runs, offsets):
        run["started_utc"] = (start + offset).strftime("%Y-%m-%dT%H:%M:%SZ")
    fig = nightly_figure(runs, figures)
    fig.canvas.draw()
    labels = [t for t in fig.axes[-1].get_xticklabels() if t.get_text()]
    assert labels[-1].get_text().endswith("#6")
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]


def test_a_chart_that_cannot_be_written_leaves_no_figure_open(tmp_path):
    """A failed write (here: the folder is a file) raises, and pyplot keeps no figure: a
    process drawing many charts would otherwise pile them up."""
    import matplotlib.pyplot as plt

    from pipeline.nightly.charts import write_nightly_chart

    (tmp_path / "not-a-dir").write_text("")
    before = plt.get_fignums()
    with pytest.raises(OSError):
        write_nightly_chart(*history(), tmp_path / "not-a-dir" / "nightly.png")
    assert plt.get_fignums() == before
