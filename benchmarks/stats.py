"""Significance tests for model comparisons, from raw data rather than summaries.

Latency: bootstrap confidence interval of the difference of a percentile between two
independent samples of per-query latencies (scipy.stats.bootstrap), plus a Mann-Whitney U
test of the whole distributions (scipy.stats.mannwhitneyu).
Accuracy: McNemar's test on paired per-sample correctness (statsmodels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

DEFAULT_ALPHA = 0.05


@dataclass
class LatencyComparison:
    """Is B faster than A at a percentile? Differences are B - A, in milliseconds."""

    percentile: float
    a_ms: float
    b_ms: float
    diff_ms: float
    ci_low_ms: float
    ci_high_ms: float
    mannwhitney_p: float
    alpha: float

    @property
    def verdict(self) -> str:
        # The percentile CI decides; a CI that straddles 0 means "no evidence either way".
        if self.ci_high_ms < 0:
            return "faster"
        if self.ci_low_ms > 0:
            return "slower"
        return "no significant difference"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


@dataclass
class AccuracyComparison:
    """McNemar's test on who got which sample right: A's and B's accuracy on the same samples."""

    table: list  # [[both right, only A right], [only B right, both wrong]]
    n: int
    accuracy_a: float
    accuracy_b: float
    statistic: float
    pvalue: float
    exact: bool
    alpha: float

    @property
    def verdict(self) -> str:
        if self.pvalue >= self.alpha:
            return "no significant difference"
        return "more accurate" if self.accuracy_b > self.accuracy_a else "less accurate"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _percentile_difference(percentile):
    def statistic(a, b, axis=-1):
        return np.percentile(b, percentile, axis=axis) - np.percentile(a, percentile, axis=axis)

    return statistic


def compare_latency(
    latencies_a_s,
    latencies_b_s,
    percentile: float = 99,
    *,
    alpha: float = DEFAULT_ALPHA,
    n_resamples: int = 1000,
    seed: int = 0,
) -> LatencyComparison:
    """Compare two samples of per-query latencies (seconds, as in `latencies.npy`)."""
    a = np.asarray(latencies_a_s, dtype=np.float64) * 1e3
    b = np.asarray(latencies_b_s, dtype=np.float64) * 1e3
    if a.size < 2 or b.size < 2:
        raise ValueError(f"latencies: need at least 2 queries per model, got {a.size} and {b.size}")
    statistic = _percentile_difference(percentile)
    boot = sps.bootstrap(
        (a, b),
        statistic,
        paired=False,
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, int(2e7 // (a.size + b.size))),  # bound memory on long runs
        confidence_level=1 - alpha,
        method="percentile",  # BCa's jackknife is O(n^2) on 10^5 queries
        rng=np.random.default_rng(seed),
    )
    mw = sps.mannwhitneyu(a, b, alternative="two-sided")
    return LatencyComparison(
        percentile=float(percentile),
        a_ms=float(np.percentile(a, percentile)),
        b_ms=float(np.percentile(b, percentile)),
        diff_ms=float(statistic(a, b)),
        ci_low_ms=float(boot.confidence_interval.low),
        ci_high_ms=float(boot.confidence_interval.high),
        mannwhitney_p=float(mw.pvalue),
        alpha=alpha,
    )


def correctness_table(correct_a, correct_b) -> np.ndarray:
    """2x2 table of paired correctness: rows A right/wrong, columns B right/wrong."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"predictions: A has {a.size} samples and B {b.size}; McNemar needs the same samples")
    return np.array(
        [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]],
        dtype=np.int64,
    )


def compare_accuracy(y_true, y_pred_a, y_pred_b, *, alpha: float = DEFAULT_ALPHA) -> AccuracyComparison:
    """McNemar's test; exact binomial when few samples disagree, chi-square otherwise."""
    y_true = np.asarray(y_true)
    correct_a = np.asarray(y_pred_a) == y_true
    correct_b = np.asarray(y_pred_b) == y_true
    table = correctness_table(correct_a, correct_b)
    # The usual rule: the chi-square approximation needs >= 25 discordant pairs.
    exact = bool(table[0, 1] + table[1, 0] < 25)
    result = mcnemar(table, exact=exact, correction=True)
    return AccuracyComparison(
        table=table.tolist(),
        n=int(table.sum()),
        accuracy_a=float(correct_a.mean()),
        accuracy_b=float(correct_b.mean()),
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        exact=exact,
        alpha=alpha,
    )


def align_predictions(a: dict, b: dict):
    """Pair two `predictions.npz` contents by `sample_index`; returns (y_true, y_pred_a, y_pred_b).

    Raises ValueError naming what is missing when the two cannot be paired.
    """
    for name, p in (("A", a), ("B", b)):
        if "y_pred" not in p:
            raise ValueError(f"predictions.npz of {name} has no 'y_pred'")
    if "y_true" not in a and "y_true" not in b:
        raise ValueError("predictions.npz has no 'y_true' for either model: accuracy cannot be compared")
    idx_a = np.asarray(a.get("sample_index", np.arange(len(a["y_pred"]))))
    idx_b = np.asarray(b.get("sample_index", np.arange(len(b["y_pred"]))))
    common, ia, ib = np.intersect1d(idx_a, idx_b, assume_unique=False, return_indices=True)
    if common.size == 0:
        raise ValueError("predictions.npz: the two models share no sample_index")
    y_true = np.asarray(a["y_true"])[ia] if "y_true" in a else np.asarray(b["y_true"])[ib]
    return y_true, np.asarray(a["y_pred"])[ia], np.asarray(b["y_pred"])[ib]
