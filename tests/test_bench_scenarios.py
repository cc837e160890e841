"""All four LoadGen scenarios on a real model: every reported figure is LoadGen's own."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from aifactory.benchmarks import BenchmarkResult, run
from aifactory.benchmarks.errors import ScenarioError
from aifactory.benchmarks.testing import tiny_config

PERCENTILE_KEYS = {"latency_p50_ms": "50.00", "latency_p90_ms": "90.00", "latency_p95_ms": "95.00",
                   "latency_p99_ms": "99.00"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    config = tiny_config(
        tmp_path_factory.mktemp("results"),
        scenario={"scenarios": ["SingleStream", "MultiStream", "Server", "Offline"], "batch_sizes": [1, 16],
                  "multistream_samples_per_query": 4, "server_latency_ms": 20.0})
    return run(config, progress=False)


def _detail(result, child):
    """LoadGen's detail log, parsed here independently of the suite."""
    values = {}
    for line in result.artifact(child, "mlperf_log_detail.txt").read_text().splitlines():
        if line.startswith(":::MLLOG"):
            entry = json.loads(line.split(" ", 1)[1])
            values[entry["key"]] = entry["value"]
    return values


def _scenario_children(result):
    return [c for c in result.children if c.scenario != "Accuracy"]


def test_every_scenario_ran_and_the_sweep_gave_one_offline_run_per_batch_size(result):
    names = [(c.scenario, c.batch_size) for c in _scenario_children(result)]
    assert names == [("SingleStream", 1), ("MultiStream", 4), ("Server", 8), ("Offline", 1), ("Offline", 16)]
    offline = [c for c in result.children if c.scenario == "Offline"]
    assert [c.tags["aif.batch_size"] for c in offline] == ["1", "16"]


def test_reported_percentiles_equal_loadgen_detail_log(result):
    for child in _scenario_children(result):
        detail = _detail(result, child)
        assert detail["effective_scenario"] == child.scenario
        for metric, percentile in PERCENTILE_KEYS.items():
            assert child.metrics[metric] == pytest.approx(detail[f"result_{percentile}_percentile_latency_ns"] / 1e6,
                                                          rel=1e-12), (child.name, metric)
        assert child.metrics["latency_max_ms"] == pytest.approx(detail["result_max_latency_ns"] / 1e6)
        assert child.tags["aif.loadgen.result_valid"] == detail["result_validity"]


def test_headline_percentile_matches_loadgen_summary(result):
    """SingleStream's p90 and the other scenarios' p99, as LoadGen's human summary prints them."""
    headline = {"SingleStream": ("90.00", "latency_p90_ms"), "MultiStream": ("99.00", "latency_p99_ms"),
                "Server": ("99.00", "latency_p99_ms"), "Offline": ("99.00", "latency_p99_ms")}
    for child in _scenario_children(result):
        percentile, metric = headline[child.scenario]
        summary = result.artifact(child, "mlperf_log_summary.txt").read_text()
        ns = int(re.search(rf"^{re.escape(percentile)} percentile latency \(ns\)\s*: (\d+)", summary, re.M).group(1))
        assert child.metrics[metric] == pytest.approx(ns / 1e6)


def test_early_stopping_verdict_is_reported_not_hidden(result):
    for child in _scenario_children(result):
        detail = _detail(result, child)
        statement = child.tags["aif.loadgen.early_stopping"]
        if "early_stopping_result" in detail:
            assert statement == " ".join(str(detail["early_stopping_result"]).split())
        summary = result.artifact(child, "mlperf_log_summary.txt").read_text()
        if child.scenario == "SingleStream":
            assert "Early stopping 90.0th percentile estimate" in statement
            assert "Early Stopping Result" in summary


def test_throughput_is_loadgens_figure(result):
    for child in _scenario_children(result):
        detail = _detail(result, child)
        key = {"SingleStream": "result_qps_with_loadgen_overhead", "Offline": "result_samples_per_second",
               "Server": "result_completed_samples_per_sec"}.get(child.scenario)
        if key:
            assert child.metrics["throughput_samples_per_s"] == pytest.approx(float(detail[key]))
        else:  # MultiStream: samples over the span of the run
            assert child.metrics["throughput_samples_per_s"] > 0


def test_latencies_artifact_has_one_entry_per_loadgen_query(result):
    for child in _scenario_children(result):
        detail = _detail(result, child)
        latencies = np.load(result.artifact(child, "latencies.npy"))
        assert latencies.dtype == np.float64
        assert len(latencies) == detail["result_query_count"]
        assert (latencies > 0).all()
        if child.scenario == "SingleStream":
            # harness clock vs LoadGen's: same queries, LoadGen's includes its own issue overhead
            assert np.median(latencies) * 1e3 <= child.metrics["latency_p50_ms"] * 1.5 + 0.05


def test_multistream_uses_the_configured_samples_per_query(result):
    child = result.child(scenario="MultiStream")
    assert _detail(result, child)["effective_samples_per_query"] == 4


def test_server_search_reports_the_highest_qps_meeting_the_bound(result):
    child = result.child(scenario="Server")
    trials = child.extra["server_search"]
    assert len(trials) >= 2
    meeting = [t["target_qps"] for t in trials if t["meets_bound"]]
    assert meeting, trials
    assert child.metrics["server_max_valid_qps"] == max(meeting)
    assert child.metrics["server_target_qps"] == max(meeting)
    detail = _detail(result, child)
    assert detail["result_perf_constraints_met"] is True
    assert detail["effective_target_latency_ns"] == 20_000_000
    assert detail["result_99.00_percentile_latency_ns"] <= 20_000_000
    # every trial that broke the bound was at a higher QPS than some trial that met it
    for t in trials:
        if not t["meets_bound"]:
            assert t["target_qps"] > min(meeting)


def test_peak_host_memory_is_measured(result):
    for child in _scenario_children(result):
        assert 10 < child.metrics["peak_host_mem_mb"] < 64_000
        assert "energy_j_per_inference" not in child.metrics  # no GPU here: absent, not zero


def test_result_round_trips_and_plots(result, tmp_path):
    again = BenchmarkResult.from_json(Path(result.results_dir) / "results.json")
    assert again.to_frame().equals(result.to_frame())
    assert again.fingerprint["loadgen"] and again.fingerprint["config"]["scenario"]["batch_sizes"] == [1, 16]
    ax = again.plot("latency_p99_ms")
    assert len(ax.patches) == len(_scenario_children(result))
    ax.figure.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


FAILS_MID_TEST = '''
import torch


class FailsOnce(torch.nn.Module):
    """A digits-shaped model that raises on one call, well inside the LoadGen test."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1000:
            raise RuntimeError("device lost on call 1000")
        return self.linear(x)


def make():
    return FailsOnce()
'''


def test_a_model_failing_inside_loadgen_fails_the_run_and_leaves_no_result(tmp_path, monkeypatch):
    (tmp_path / "fails_mid_test.py").write_text(FAILS_MID_TEST)
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "results"
    config = tiny_config(results, model={"path": "fails_mid_test:make", "input_shape": [64]},
                         backends=[{"kind": "torch", "threads": 1}], accuracy={"enabled": False},
                         scenario={"min_duration_s": 1.0})
    # LoadGen is not left waiting for the failed query: the test ends and the error names it
    with pytest.raises(ScenarioError, match=r"failed in SingleStream: RuntimeError: device lost on call 1000"):
        run(config, progress=False)
    assert not list(results.glob("*/results.json")), "a failed run must not leave a result"
    assert not list(results.iterdir()), "no partial result directory"
