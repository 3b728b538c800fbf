import math
from datetime import datetime, timezone

import pytest

from pipeline.nightly.charts import MAX_BUILD_COLUMNS, nightly_figure, run_dates

BUILDS, BOARDS, THREADS = ("b_cnn", "b_mlp"), ("k1", "local"), (1, 4)
VARIANTS = ("keras", "float32", "int8", "float16", "dynamic_range")


def history(n_runs=3, builds=BUILDS, dated=True):
    """Runs whose every figure is a distinct, known number (p50 = 1000 b + 100 v + 10 t + run)."""
    runs, figures = [], {}
    for run in range(1, n_runs + 1):
        runs.append({"id": run, **({"started_utc": f"2026-11-2{run}T02:0{run}:00Z"}
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
