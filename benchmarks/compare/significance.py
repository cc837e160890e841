"""Significance of differences between compared entries, from the raw data the suite stores.

Latency: a bootstrap CI of the percentile difference and a Mann-Whitney p per common scenario,
from each scenario child's latencies.npy. Accuracy: McNemar on the paired per-sample correctness
of predictions.npz. The tests themselves are in ..stats; this module pairs the entries, skips
what cannot be compared (different hardware or datasets, missing artifacts) and says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from ..layout import OFFLINE, SCENARIOS, Artifacts, Tags

SIGNIFICANCE_COLUMNS = ["baseline", "model", "test", "baseline_value", "value", "difference", "ci_low", "ci_high",
                        "pvalue", "method", "verdict", "regression"]


def significance_table(cmp, baseline=None, *, percentile=99, alpha=0.05, n_resamples=1000) -> pd.DataFrame:
    """One row per test of every other entry against `baseline` (default: the leaderboard's first)."""
    if not cmp.entries:
        return pd.DataFrame()
    base = cmp.entry(baseline) if baseline else cmp.leader()
    rows = []
    for other in cmp.entries:
        if other is base:
            continue
        rows += _latency_tests(cmp, base, other, percentile, alpha, n_resamples)
        rows += _token_tests(cmp, base, other, percentile, alpha, n_resamples)
        rows += _accuracy_tests(cmp, base, other, alpha)
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)


def _latency_tests(cmp, base, other, percentile, alpha, n_resamples):
    rows = []
    if base.tag(Tags.HARDWARE) != other.tag(Tags.HARDWARE):
        cmp.note(other.label, f"latency not compared with baseline {base.label}: different hardware")
        return rows
    for scenario in SCENARIOS:
        if scenario not in base.scenario_runs or scenario not in other.scenario_runs:
            continue
        a, b = cmp.latencies(base, scenario), cmp.latencies(other, scenario)
        if a is None or b is None:
            missing = base.label if a is None else other.label
            cmp.note(missing, f"{scenario}: no {Artifacts.LATENCIES} artifact; latency significance skipped")
            continue
        if min(a.size, b.size) < 2:
            # LoadGen's Offline issues every sample as one query: a single latency, no distribution
            cmp.note(other.label, f"{scenario}: {Artifacts.LATENCIES} holds {min(a.size, b.size)} query; "
                     "no latency distribution to test (compare throughput instead)", "info")
            continue
        try:
            result = stats.compare_latency(a, b, percentile, alpha=alpha, n_resamples=n_resamples)
        except ValueError as err:
            cmp.note(other.label, f"{scenario}: {err}")
            continue
        rows.append(_latency_row(base, other, f"latency p{percentile:g} {scenario}", result,
                                 "bootstrap CI of percentile difference; Mann-Whitney U p"))
    return rows


def _token_tests(cmp, base, other, percentile, alpha, n_resamples):
    """TTFT and TPOT distributions per common scenario, from each child's token_latencies.npz."""
    rows = []
    if base.tag(Tags.HARDWARE) != other.tag(Tags.HARDWARE):
        return rows
    for scenario in SCENARIOS:
        if scenario not in base.scenario_runs or scenario not in other.scenario_runs:
            continue
        a = cmp.artifacts.arrays(base.scenario_runs[scenario], Artifacts.TOKEN_LATENCIES)
        b = cmp.artifacts.arrays(other.scenario_runs[scenario], Artifacts.TOKEN_LATENCIES)
        if a is None or b is None:
            continue
        for name, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s")):
            x, y = a[key][np.isfinite(a[key])], b[key][np.isfinite(b[key])]
            if scenario == OFFLINE or min(x.size, y.size) < 2:
                continue
            result = stats.compare_latency(x, y, percentile, alpha=alpha, n_resamples=n_resamples)
            rows.append(_latency_row(base, other, f"{name} p{percentile:g} {scenario}", result,
                                     "bootstrap CI of percentile difference; Mann-Whitney U p (per-query, SUT clock)"))
    return rows


def _latency_row(base, other, test, result, method):
    """One significance row of a latency-like comparison (stats.compare_latency's result)."""
    return {
        "baseline": base.label, "model": other.label, "test": test,
        "baseline_value": result.a_ms, "value": result.b_ms, "difference": result.diff_ms,
        "ci_low": result.ci_low_ms, "ci_high": result.ci_high_ms, "pvalue": result.mannwhitney_p,
        "method": method, "verdict": result.verdict, "regression": result.verdict == "slower",
    }


def _exact_match_test(base, other, pa, pb, alpha):
    """Paired exact match of two generative models on the same prompts: McNemar on per-prompt hits."""
    common, ia, ib = np.intersect1d(pa["sample_index"], pb["sample_index"], return_indices=True)
    if common.size == 0:
        return []
    hits_a, hits_b = pa["correct"][ia].astype(bool), pb["correct"][ib].astype(bool)
    result = stats.compare_accuracy(np.ones(common.size, dtype=bool), hits_a, hits_b, alpha=alpha)
    return [{
        "baseline": base.label, "model": other.label, "test": "exact match (McNemar)",
        "baseline_value": result.accuracy_a, "value": result.accuracy_b,
        "difference": result.accuracy_b - result.accuracy_a, "ci_low": np.nan, "ci_high": np.nan,
        "pvalue": result.pvalue, "method": f"McNemar ({'exact' if result.exact else 'chi-square'}), paired prompts, "
                                          f"table {result.table}",
        "verdict": result.verdict, "regression": result.verdict == "less accurate",
    }]


def _accuracy_tests(cmp, base, other, alpha):
    if base.tag(Tags.DATASET) != other.tag(Tags.DATASET):
        cmp.note(other.label, f"accuracy not compared with baseline {base.label}: different datasets")
        return []
    pa, pb = cmp.predictions(base), cmp.predictions(other)
    if pa is None or pb is None:
        missing = base.label if pa is None else other.label
        cmp.note(missing, f"no {Artifacts.PREDICTIONS} artifact; McNemar test skipped")
        return []
    if "correct" in pa and "correct" in pb:  # text generation: per-prompt exact match
        return _exact_match_test(base, other, pa, pb, alpha)
    try:
        y_true, ya, yb = stats.align_predictions(pa, pb)
        result = stats.compare_accuracy(y_true, ya, yb, alpha=alpha)
    except ValueError as err:
        cmp.note(other.label, str(err))
        return []
    return [{
        "baseline": base.label, "model": other.label, "test": "accuracy (McNemar)",
        "baseline_value": result.accuracy_a, "value": result.accuracy_b,
        "difference": result.accuracy_b - result.accuracy_a, "ci_low": np.nan, "ci_high": np.nan,
        "pvalue": result.pvalue, "method": f"McNemar ({'exact' if result.exact else 'chi-square'}), "
                                          f"table {result.table}",
        "verdict": result.verdict, "regression": result.verdict == "less accurate",
    }]
