import pytest

from pipeline import report

# The K1 tutorial CNN on 28x28x1, counted by hand:
# conv 26*26*32*(3*3*1) + conv 11*11*64*(3*3*32) + conv 3*3*64*(3*3*64) + 576*64 + 64*10
CNN_MACS = 194_688 + 2_230_272 + 331_776 + 36_864 + 640
MLP_MACS = 784 * 128 + 128 * 10


def test_count_macs_matches_the_hand_count(tiny_models):
    for variant in ("float32", "int8"):
        assert report.count_macs(tiny_models[f"tiny_cnn/{variant}"]) == CNN_MACS
        assert report.count_macs(tiny_models[f"tiny_mlp/{variant}"]) == MLP_MACS


def test_compute_floor_from_isa_and_clock():
    cpuinfo = "model name\t: X\ncpu MHz\t\t: 2600.0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    floor = report.compute_floor(cpuinfo, max_khz="")
    assert floor["isa"] == "avx512_vnni" and floor["clock_hz"] == 2.6e9
    assert floor["macs_per_s_per_core"] == {"float32": 32 * 2.6e9, "int8": 128 * 2.6e9}
    assert report.floor_us(CNN_MACS, "int8", 2, floor) == pytest.approx(
        CNN_MACS / (128 * 2.6e9 * 2) * 1e6)
    boosted = report.compute_floor(cpuinfo, max_khz="3700000\n")
    assert boosted["clock_hz"] == 3.7e9 and "cpufreq" in boosted["clock_source"]
    plain = report.compute_floor("flags : sse2\n", max_khz="")
    assert plain["isa"] == "baseline" and "unknown clock" in plain["clock_source"]


def test_int8_ratio_and_stale_rows():
    doc = {"board": "b", "status": "ok", "runtime": {"name": "r", "version": "1"},
           "results": [
               {"build": "m", "variant": "float32", "threads": 1, "p50_us": 40.0, "sha256": "f"},
               {"build": "m", "variant": "int8", "threads": 1, "p50_us": 10.0, "sha256": "old"},
           ]}
    rows = report.latency_rows([doc], {"m/float32": "f", "m/int8": "new"})
    assert rows[1]["int8_over_float32"] == 0.25
    assert [r["fresh"] for r in rows] == [True, False]
    assert "STALE" in report.render_table(rows, "github")


def test_disagreement_is_loud():
    doc = {"board": "k1", "status": "ok", "runtime": {"name": "r", "version": "1"},
           "results": [{"build": "m", "variant": "int8", "threads": 1, "p50_us": 1.0,
                        "sha256": "s", "agreement": 0.9, "disagreements": [3, 7]}]}
    table = report.render_table(report.latency_rows([doc], {"m/int8": "s"}), "github")
    assert "DISAGREES with host on 2 sample(s)" in table
