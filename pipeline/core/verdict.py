"""Latency verdict: is tonight's model slower than its reference, timed side by side?

The board times both models in one session, interleaved in rounds (board/runner.py), and
keeps each round's median invoke time per model. From those per-round medians:

- ratio: median(candidate) / median(reference), the ratio of medians;
- interval: a bootstrap confidence interval of that ratio (scipy.stats.bootstrap, percentile
  method, fixed seed so a verdict recomputed from the same samples is the same);
- p: the two-sided Mann-Whitney U test of the two sets of round medians (scipy.stats), the test
  Go's benchstat and Google Benchmark's compare.py use;
- word: "environment" when both are the same bytes (an A/A pair measures the board and its
  software, never a model), else "slower" / "faster" when p < alpha and the ratio is beyond the
  minimum effect either way with the interval on that side of 1, else "same".

The gate (`gate_breached`) fires on a "slower" verdict whose interval reaches the gate's ratio:
the data cannot rule out a regression of the gated size. A significant 3 % slowdown measured
tightly stays a "slower" row without failing the night; a real 10 % one fails it.

Pure functions of numbers; scipy is imported inside them (dodo.py imports core modules).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

WORDS = ("faster", "same", "slower", "environment")
# Resamples of the bootstrap interval: its endpoints move by well under 0.5 % between seeds at
# 20-40 rounds (measured in tests/test_verdict.py against a 20,000-resample reference).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 19
# Fewer round medians than this per model and Mann-Whitney U cannot reach p < 0.01 at all
# (4 vs 4: the smallest two-sided exact p is 2/70 = 0.029), so no verdict is given.
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Verdict:
    ratio: float          # median(candidate) / median(reference)
    low: float            # confidence interval of the ratio
    high: float
    p: float              # two-sided Mann-Whitney U p-value
    word: str             # one of WORDS
    rounds: int           # round medians per model (the smaller count)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_of_medians(reference: Sequence[float], candidate: Sequence[float]) -> float:
    import numpy as np

    return float(np.median(candidate) / np.median(reference))


def ratio_interval(reference: Sequence[float], candidate: Sequence[float],
                   confidence: float, seed: int = BOOTSTRAP_SEED,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the ratio of medians, each sample resampled on its own
    (rounds are not paired: the order inside a round is shuffled)."""
    import numpy as np
    from scipy import stats

    def statistic(ref, cand, axis=-1):
        return np.median(cand, axis=axis) / np.median(ref, axis=axis)

    result = stats.bootstrap((np.asarray(reference, float), np.asarray(candidate, float)),
                             statistic, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, paired=False,
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mann_whitney_p(reference: Sequence[float], candidate: Sequence[float]) -> float:
    from scipy import stats

    return float(stats.mannwhitneyu(candidate, reference, alternative="two-sided").pvalue)


def word_for(ratio: float, low: float, high: float, p: float, same_bytes: bool,
             alpha: float, min_effect: float) -> str:
    """The one word of a row. Slower: p < alpha (strictly), the interval above 1 (low > 1)
    and ratio >= 1 + min_effect; faster the mirror image. Both the test and the interval must
    agree: rounds split between two levels (a preempted stretch) can give a small p with an
    interval that still holds 1 - measured: one such unchanged night out of 80 on this host
    breached a 10 % gate when p alone decided."""
    if same_bytes:
        return "environment"
    if p < alpha and low > 1 and ratio >= 1 + min_effect:
        return "slower"
    if p < alpha and high < 1 and ratio <= 1 / (1 + min_effect):
        return "faster"
    return "same"


def judge(reference: Sequence[float], candidate: Sequence[float], same_bytes: bool,
          alpha: float = 0.01, min_effect: float = 0.02) -> Verdict | None:
    """The verdict on two sets of per-round medians (None with fewer than MIN_ROUNDS each).
    The interval's confidence is 1 - alpha, so it agrees with the test's level."""
    import numpy as np

    rounds = min(len(reference), len(candidate))
    if rounds < MIN_ROUNDS or not (np.all(np.isfinite(reference))
                                   and np.all(np.isfinite(candidate))):
        return None
    ratio = ratio_of_medians(reference, candidate)
    low, high = ratio_interval(reference, candidate, 1 - alpha)
    p = mann_whitney_p(reference, candidate)
    return Verdict(ratio, low, high, p,
                   word_for(ratio, low, high, p, same_bytes, alpha, min_effect), rounds)


def gate_breached(verdict: dict[str, Any] | Verdict | None, max_regression_pct: float) -> bool:
    """A latency breach: a "slower" verdict whose interval reaches 1 + max_regression_pct/100
    (inclusive). An environment (A/A) row never breaches: it measured no model."""
    if verdict is None:
        return False
    v = verdict.as_dict() if isinstance(verdict, Verdict) else verdict
    return v.get("word") == "slower" and v["high"] >= 1 + max_regression_pct / 100


def describe(verdict: dict[str, Any] | Verdict | None) -> str:
    """'1.103 [1.091, 1.118] p=0.0001 slower' - how every report shows a verdict."""
    if verdict is None:
        return ""
    v = verdict.as_dict() if isinstance(verdict, Verdict) else verdict
    return f"{v['ratio']:.3f} [{v['low']:.3f}, {v['high']:.3f}] p={v['p']:.2g} {v['word']}"
