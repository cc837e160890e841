"""Harness overhead: a null model's SingleStream latency through the suite vs LoadGen alone.

Both sides run the same null model (returns its input slice) under the same LoadGen settings, in
the same process, interleaved A/B several times so machine drift hits both. The figure is
LoadGen's own p50 and mean per-query latency; overhead = suite - bare, in microseconds per query.
Target: <= 2 us/query. Prints JSON.

    .venv/bin/python perf/bench_overhead.py [--seconds 2] [--rounds 5]
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np

from aifactory.benchmarks.backends.null import NullBackend
from aifactory.benchmarks.config import BackendConfig, ScenarioConfig
from aifactory.benchmarks.layout import SINGLE_STREAM, Artifacts
from aifactory.benchmarks.models import LoadedModel
from aifactory.benchmarks.scenarios import ScenarioRunner, read_detail_log
from aifactory.benchmarks.scenarios.loadgen import log_settings, test_settings

N_SAMPLES = 1024


def settings(seconds):
    return {"min_duration_ms": int(seconds * 1000), "max_duration_ms": int(seconds * 4000), "min_query_count": 100,
            "single_stream_expected_latency_ns": 2000}


def bare_loadgen(data, seconds, log_dir):
    """The reference: the cheapest SUT LoadGen offers (its fast interface: ids and indices as int
    lists; one reused response), with the same null model."""
    model = lambda batch: batch  # noqa: E731 - the null model
    response = lg.QuerySampleResponse(0, 0, 0)
    responses = [response]

    def issue(ids, indices):
        index = indices[0]
        model(data[index:index + 1])
        response.id = ids[0]
        lg.QuerySamplesComplete(responses)

    # the same TestSettings/LogSettings the suite builds (outside the timed queries)
    test, log = test_settings(SINGLE_STREAM, settings(seconds)), log_settings(log_dir)
    sut = lg.ConstructFastSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(N_SAMPLES, N_SAMPLES, lambda s: None, lambda s: None)
    lg.StartTestWithLogSettings(sut, qsl, test, log)
    lg.DestroyQSL(qsl)
    lg.DestroyFastSUT(sut)
    return read_detail_log(Path(log_dir) / Artifacts.LOADGEN_DETAIL)


def through_suite(data, seconds, log_root):
    backend = NullBackend(BackendConfig(kind="null"), LoadedModel("null", "torch_module", "null", None), "backends[0]")
    cfg = ScenarioConfig(scenarios=[SINGLE_STREAM], warmup_s=0.05)
    runner = ScenarioRunner(backend, backend.stage(data), N_SAMPLES, cfg, log_root)
    run = runner._execute(SINGLE_STREAM, settings(seconds), 1, SINGLE_STREAM, f"suite-{id(runner)}")
    return run.loadgen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = np.random.default_rng(0).random((N_SAMPLES, 64), dtype=np.float32)
    bare = {"p50": [], "mean": []}
    suite = {"p50": [], "mean": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ((bare, bare_loadgen), (suite, through_suite))
            for side, fn in order if i % 2 == 0 else order[::-1]:  # alternate who runs first
                log_dir = Path(tmp) / f"{fn.__name__}-{i}"
                log_dir.mkdir()
                detail = fn(data, args.seconds, log_dir)
                side["p50"].append(detail["result_50.00_percentile_latency_ns"] / 1e3)
                side["mean"].append(detail["result_mean_latency_ns"] / 1e3)
    median = statistics.median
    result = {
        "metric": "harness_overhead_us_per_query",
        "target_us": 2.0,
        "loadgen_alone_p50_us": median(bare["p50"]),
        "suite_p50_us": median(suite["p50"]),
        "overhead_p50_us": median(suite["p50"]) - median(bare["p50"]),
        "loadgen_alone_mean_us": median(bare["mean"]),
        "suite_mean_us": median(suite["mean"]),
        "overhead_mean_us": median(suite["mean"]) - median(bare["mean"]),
        "ratio_p50_suite_vs_loadgen_alone": median(suite["p50"]) / median(bare["p50"]),
        "rounds": args.rounds, "seconds_per_run": args.seconds,
        "per_round": {"loadgen_alone": bare, "suite": suite},
    }
    result["meets_target"] = result["overhead_p50_us"] <= 2.0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
