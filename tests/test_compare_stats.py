"""Pareto sets, significance tests and SLO parsing on constructed data (no server needed)."""

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from aifactory.benchmarks import stats
from aifactory.benchmarks.compare import pareto, parse_tags
from aifactory.benchmarks.compare.slo import parse_slo


def test_pareto_set_on_constructed_example():
    # (latency ms, accuracy): a and c trade off; b is dominated by a; d is dominated by c;
    # e ties a exactly (on the front with it); f has no latency (never on the front).
    points = {"a": (2.0, 0.90), "b": (3.0, 0.89), "c": (5.0, 0.97), "d": (5.0, 0.95),
              "e": (2.0, 0.90), "f": (np.nan, 0.99), "g": (9.0, 0.97)}
    latency, accuracy = zip(*points.values())
    mask = pareto.pareto_mask(latency, accuracy)
    assert {name for name, on in zip(points, mask) if on} == {"a", "c", "e"}


def test_pareto_front_is_computed_per_hardware_group():
    frame = pd.DataFrame({
        "model": ["fast", "slow-accurate", "gpu-fast", "gpu-slow"],
        "hardware": ["cpu", "cpu", "cuda", "cuda"],
        "p99": [1.0, 4.0, 0.2, 0.5],
        "accuracy": [0.90, 0.95, 0.80, 0.70],
    })
    front = pareto.pareto_front(frame, x="p99", y="accuracy")
    # Across groups gpu-fast would dominate nothing on cpu; within cuda gpu-slow is dominated.
    assert front.set_index("model")["pareto"].to_dict() == {
        "fast": True, "slow-accurate": True, "gpu-fast": True, "gpu-slow": False}


def test_mcnemar_pvalue_equals_statsmodels_on_the_same_table():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 10, 400)
    y_a = np.where(rng.random(400) < 0.85, y_true, (y_true + 1) % 10)
    y_b = np.where(rng.random(400) < 0.97, y_true, (y_true + 3) % 10)
    result = stats.compare_accuracy(y_true, y_a, y_b)
    # The same table built independently with pandas.
    table = pd.crosstab(pd.Series(y_a == y_true, name="a"), pd.Series(y_b == y_true, name="b"))
    table = table.reindex(index=[True, False], columns=[True, False]).to_numpy()
    assert result.table == table.tolist()
    expected = mcnemar(table, exact=result.exact, correction=True)
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.verdict == "more accurate" and result.pvalue < 0.05


def test_mcnemar_uses_exact_test_when_few_pairs_disagree():
    y = np.arange(100) % 10
    a = y.copy()
    b = y.copy()
    b[:3] = (b[:3] + 1) % 10
    result = stats.compare_accuracy(y, a, b)
    assert result.exact and result.table == [[97, 3], [0, 0]]
    assert result.pvalue == pytest.approx(mcnemar(np.array(result.table), exact=True).pvalue)
    assert result.verdict == "no significant difference"


def test_latency_bootstrap_detects_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(3)
    a = rng.lognormal(np.log(2e-3), 0.25, 3000)
    faster = a * 0.7
    same = rng.lognormal(np.log(2e-3), 0.25, 3000)
    result = stats.compare_latency(a, faster, 99)
    assert result.verdict == "faster" and result.ci_high_ms < 0
    assert result.diff_ms == pytest.approx(np.percentile(faster, 99) * 1e3 - np.percentile(a, 99) * 1e3)
    assert stats.compare_latency(a, same, 99).verdict == "no significant difference"


def test_latency_comparison_rejects_too_few_queries():
    with pytest.raises(ValueError, match="at least 2 queries"):
        stats.compare_latency([0.001], [0.001, 0.002])


def test_align_predictions_pairs_by_sample_index():
    a = {"y_true": np.array([0, 1, 2, 3]), "y_pred": np.array([0, 1, 2, 0]), "sample_index": np.array([0, 1, 2, 3])}
    b = {"y_pred": np.array([3, 2, 1]), "sample_index": np.array([3, 2, 1])}
    y_true, ya, yb = stats.align_predictions(a, b)
    assert y_true.tolist() == [1, 2, 3] and ya.tolist() == [1, 2, 0] and yb.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="no 'y_true'"):
        stats.align_predictions({"y_pred": a["y_pred"]}, b)


@pytest.mark.parametrize("text, metric, value, scenario, qps", [
    ("p99 <= 15 ms at 200 QPS", "latency_p99_ms", 15.0, "Server", 200.0),
    ("p90 < 0.005 s in singlestream", "latency_p90_ms", 5.0, "SingleStream", None),
    ("mean <= 800us", "latency_mean_ms", 0.8, None, None),
    ("accuracy >= 95%", "accuracy", 0.95, None, None),
    ("throughput >= 1000 samples/s in Offline", "throughput_samples_per_s", 1000.0, "Offline", None),
])
def test_slo_parsing(text, metric, value, scenario, qps):
    slo = parse_slo(text)
    assert (slo.metric, slo.value, slo.scenario, slo.qps) == (metric, pytest.approx(value), scenario, qps)


@pytest.mark.parametrize("text, message", [
    ("p99 15 ms", "expected '<p50"),
    ("p99 <= 15 parsecs", "expected '<p50"),
    ("p99.9 <= 15 ms", "not logged"),
    ("p99 <= 15 ms in Warp", "unknown scenario 'Warp'"),
    ("accuracy >= 3 ms", "fraction or a percentage"),
])
def test_slo_parsing_errors_name_the_target_and_the_syntax(text, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_slo(text)
    assert repr(text) in str(err.value)


def test_tag_filter_syntax():
    assert parse_tags(["aif.backend=torch:eager", " a = b=c "]) == {"aif.backend": "torch:eager", "a": "b=c"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_tags(["novalue"])
