"""verdict.py: the ratio, its interval, the p-value and the word, each against an independent
computation (a brute-force permutation count, a hand-counted U, a numpy bootstrap) and each
threshold at its boundary."""

import itertools
import math

import numpy as np
import pytest

from pipeline.core import verdict


def rounds(rng: np.random.Generator, n: int, median_us: float) -> np.ndarray:
    """Per-round medians as a busy machine gives them: a gamma-shaped right tail."""
    return median_us * (1 + 0.01 * rng.standard_normal(n) + rng.gamma(1.0, 0.01, n))


def brute_force_p(a, b) -> float:
    """Exact two-sided permutation p of the rank-sum statistic: every split of the pooled
    values into groups of len(a) and len(b), counted (no ties: distinct values)."""
    pooled = list(a) + list(b)
    ranks = {v: r for r, v in enumerate(sorted(pooled), 1)}
    n, m = len(a), len(b)
    observed = sum(ranks[v] for v in a)
    centre = n * (n + m + 1) / 2
    extreme = total = 0
    for chosen in itertools.combinations(range(n + m), n):
        total += 1
        rank_sum = sum(ranks[pooled[i]] for i in chosen)
        extreme += abs(rank_sum - centre) >= abs(observed - centre) - 1e-9
    return extreme / total


def test_p_is_the_exact_permutation_p():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.02, 0.05):
        a = rounds(rng, 6, 100.0)
        b = rounds(rng, 7, 100.0 * (1 + shift))
        assert verdict.mann_whitney_p(a, b) == pytest.approx(brute_force_p(b, a), rel=1e-9)


def test_p_of_complete_separation_is_counted_by_hand():
    # 5 vs 5, every candidate slower: U = 25, the only split as extreme either way is the
    # mirrored one, so p = 2 / C(10, 5) = 2 / 252.
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    assert verdict.mann_whitney_p(a, b) == pytest.approx(2 / math.comb(10, 5), rel=1e-12)


def test_ratio_and_interval_against_a_numpy_bootstrap():
    rng = np.random.default_rng(2)
    a, b = rounds(rng, 30, 200.0), rounds(rng, 30, 220.0)
    assert verdict.ratio_of_medians(a, b) == pytest.approx(np.median(b) / np.median(a))
    low, high = verdict.ratio_interval(a, b, 0.99)
    # Independent: 20,000 resamples by hand with another generator.
    gen = np.random.default_rng(99)
    ra = a[gen.integers(0, len(a), (20000, len(a)))]
    rb = b[gen.integers(0, len(b), (20000, len(b)))]
    ratios = np.median(rb, axis=1) / np.median(ra, axis=1)
    ref_low, ref_high = np.percentile(ratios, [0.5, 99.5])
    assert low == pytest.approx(ref_low, rel=0.005)
    assert high == pytest.approx(ref_high, rel=0.005)
    assert low < verdict.ratio_of_medians(a, b) < high


def test_a_ten_percent_slower_model_is_slower_and_breaches_a_ten_percent_gate():
    rng = np.random.default_rng(3)
    a, b = rounds(rng, 30, 100.0), rounds(rng, 30, 110.0)
    v = verdict.judge(a, b, same_bytes=False)
    assert v.word == "slower" and v.p < 0.01 and v.low <= 1.10 <= v.high
    assert verdict.gate_breached(v, 10)
    assert (v.low, v.high) == verdict.ratio_interval(a, b, 0.99)  # the level is 1 - alpha
    # the same samples from identical bytes are the board's, not the model's
    aa = verdict.judge(a, b, same_bytes=True)
    assert aa.word == "environment" and not verdict.gate_breached(aa, 10)
    assert verdict.judge(b, a, same_bytes=False).word == "faster"


def test_unchanged_is_same():
    rng = np.random.default_rng(4)
    v = verdict.judge(rounds(rng, 30, 100.0), rounds(rng, 30, 100.0), same_bytes=False)
    assert v.word == "same" and not verdict.gate_breached(v, 10)


def test_word_at_the_significance_level_the_minimum_effect_and_the_interval():
    alpha, effect = 0.01, 0.02
    slow, low, high = 1 + effect, 1.01, 1.03
    word = verdict.word_for
    assert word(slow, low, high, alpha, False, alpha, effect) == "same"  # p == alpha: not <
    assert word(slow, low, high, math.nextafter(alpha, 0), False, alpha, effect) == "slower"
    assert word(math.nextafter(slow, 0), low, high, 0.001, False, alpha, effect) == "same"
    assert word(slow, 1.0, high, 0.001, False, alpha, effect) == "same"  # interval holds 1
    assert word(slow, math.nextafter(1.0, 2), high, 0.001, False, alpha, effect) == "slower"
    fast = 1 / (1 + effect)
    assert word(fast, 0.97, 0.99, 0.001, False, alpha, effect) == "faster"
    assert word(fast, 0.97, 1.0, 0.001, False, alpha, effect) == "same"
    assert word(math.nextafter(fast, 2), 0.97, 0.99, 0.001, False, alpha, effect) == "same"
    assert word(2.0, 1.9, 2.1, 0.0, True, alpha, effect) == "environment"


def test_two_levels_in_the_rounds_give_no_slower_word_when_the_interval_holds_1():
    # A preempted stretch: half of the candidate's rounds 30 % slow. The medians' ratio and
    # p look like a slowdown (p < 0.01, ratio 1.15); the interval still reaches 1.
    rng = np.random.default_rng(6)
    a = rounds(rng, 30, 100.0)
    b = np.concatenate([rounds(rng, 15, 100.0), rounds(rng, 15, 130.0)])
    v = verdict.judge(a, b, same_bytes=False)
    assert v.p < 0.01 and v.ratio > 1.1 and v.high > 1.1
    assert v.low <= 1 and v.word == "same" and not verdict.gate_breached(v, 10)


def test_gate_at_the_interval_boundary():
    edge = 1 + 10 / 100
    row = {"ratio": 1.05, "low": 1.03, "high": edge, "p": 0.001, "word": "slower"}
    assert verdict.gate_breached(row, 10)  # the interval reaches the gate: breach
    assert not verdict.gate_breached({**row, "high": math.nextafter(edge, 0)}, 10)
    assert not verdict.gate_breached({**row, "word": "same"}, 10)
    assert not verdict.gate_breached({**row, "word": "environment", "high": 3.0}, 10)
    assert not verdict.gate_breached(None, 10)


def test_too_few_rounds_or_non_finite_samples_give_no_verdict():
    four = [1.0, 2.0, 3.0, 4.0]
    assert verdict.judge(four, [5.0, 6.0, 7.0, 8.0], False) is None
    assert verdict.judge([1.0] * 5 + [float("nan")], [2.0] * 6, False) is None
    v = verdict.judge([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0], False)
    assert v.rounds == 5 and v.word == "slower"  # p = 2/252 < 0.01


def test_describe_shows_every_figure():
    v = verdict.Verdict(1.1034, 1.0912, 1.1181, 0.00012, "slower", 30)
    assert verdict.describe(v) == "1.103 [1.091, 1.118] p=0.00012 slower"
    assert verdict.describe(None) == ""


def numpy_interval(a, b, confidence: float, resamples: int = 20000) -> tuple[float, float]:
    """Percentile bootstrap of the ratio of medians by hand: each sample resampled on its own."""
    gen = np.random.default_rng(123)
    ra = a[gen.integers(0, len(a), (resamples, len(a)))]
    rb = b[gen.integers(0, len(b), (resamples, len(b)))]
    ratios = np.median(rb, axis=1) / np.median(ra, axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def test_interval_is_the_99_percent_percentile_bootstrap_of_unpaired_rounds():
    """Rounds drifting together (a machine warming up) and a skewed tail: resampling the
    rounds as pairs, another level, or a bias-corrected method each move an endpoint by more
    than a tenth of the interval's width; 2,000 resamples stay well within it."""
    rng = np.random.default_rng(8)
    drift = np.linspace(0, 0.3, 24)
    a = 100 * (1 + drift + rng.gamma(0.5, 0.04, 24))
    b = 110 * (1 + drift + rng.gamma(0.5, 0.04, 24))
    low, high = verdict.ratio_interval(a, b, 0.99)
    ref_low, ref_high = numpy_interval(a, b, 0.99)
    tolerance = 0.1 * (ref_high - ref_low)
    assert abs(low - ref_low) <= tolerance and abs(high - ref_high) <= tolerance
    # the check can tell: a 95 % interval is outside that tolerance
    other_low, other_high = numpy_interval(a, b, 0.95)
    assert max(abs(other_low - ref_low), abs(other_high - ref_high)) > tolerance
    # judge asks for the interval at 1 - alpha
    v = verdict.judge(a, b, same_bytes=False, alpha=0.05)
    ref95 = numpy_interval(a, b, 0.95)
    assert abs(v.low - ref95[0]) <= tolerance and abs(v.high - ref95[1]) <= tolerance


def test_faster_needs_p_strictly_below_the_level():
    alpha, effect = 0.01, 0.02
    fast = 1 / (1 + effect)
    assert verdict.word_for(fast, 0.97, 0.99, alpha, False, alpha, effect) == "same"
    assert verdict.word_for(fast, 0.97, 0.99, math.nextafter(alpha, 0), False, alpha,
                            effect) == "faster"


def test_describe_and_the_gate_take_the_dict_a_report_stores():
    v = verdict.Verdict(0.9512, 0.94, 0.9634, 0.0021, "faster", 20)
    assert verdict.describe(v.as_dict()) == verdict.describe(v) == \
        "0.951 [0.940, 0.963] p=0.0021 faster"
    slower = verdict.Verdict(1.2, 1.15, 1.25, 0.001, "slower", 20)
    assert verdict.gate_breached(slower.as_dict(), 10) and verdict.gate_breached(slower, 10)
    assert not verdict.gate_breached(slower, 25.000001)


def test_interval_is_the_percentile_method_not_a_bias_corrected_one():
    """Few rounds with a heavy tail: the medians jump between a few values, the bootstrap
    distribution is skewed, and BCa's endpoints move by half the interval's width from the
    plain percentiles that a hand bootstrap gives."""
    rng = np.random.default_rng(9)
    a = 100 * (1 + rng.gamma(0.3, 0.2, 15))
    b = 110 * (1 + rng.gamma(0.3, 0.2, 15))
    low, high = verdict.ratio_interval(a, b, 0.99)
    ref_low, ref_high = numpy_interval(a, b, 0.99)
    tolerance = 0.1 * (ref_high - ref_low)
    assert abs(low - ref_low) <= tolerance and abs(high - ref_high) <= tolerance
