"""LoadGen test settings: the profiles, and each scenario's settings sized from a calibration pass.

Profiles: "quick" for notebooks and tests (seconds), "full" = MLPerf's minimum run rules. Server
QPS search trials are short in both; "full" then confirms the found QPS with one run of the full
minimum duration, which is the run reported.
"""

from __future__ import annotations

import time

import numpy as np

from ..layout import MULTI_STREAM, OFFLINE, SERVER, SINGLE_STREAM

QUICK = {"min_duration_ms": 1000, "max_duration_ms": 10000, "server_trial_ms": 500, "server_confirm": False,
         "min_query_count": {SINGLE_STREAM: 100, MULTI_STREAM: 100, SERVER: 100, OFFLINE: 1},
         "search_bisections": 2}
FULL = {"min_duration_ms": 600_000, "max_duration_ms": 0, "server_trial_ms": 10_000, "server_confirm": True,
        "min_query_count": {SINGLE_STREAM: 1024, MULTI_STREAM: 270_336, SERVER: 270_336, OFFLINE: 1},
        "search_bisections": 5}


def profile_settings(cfg):
    """The profile of a ScenarioConfig, with its duration and query-count overrides applied."""
    base = dict(QUICK if cfg.profile == "quick" else FULL)
    base["min_query_count"] = dict(base["min_query_count"])
    if cfg.min_duration_s is not None:
        base["min_duration_ms"] = int(cfg.min_duration_s * 1000)
        base["server_trial_ms"] = min(base["server_trial_ms"], base["min_duration_ms"])
    if cfg.max_duration_s is not None:
        base["max_duration_ms"] = int(cfg.max_duration_s * 1000)
    if cfg.min_query_count is not None:
        base["min_query_count"] = {k: (1 if k == OFFLINE else cfg.min_query_count) for k in base["min_query_count"]}
    return base


def calibrate(backend, staged, batch_size, seconds=0.2, max_iterations=200):
    """Median seconds per batch, gathered the way the SUT gathers, to size LoadGen's queries."""
    rng = np.random.default_rng(0)
    n = len(staged)
    backend.infer(staged[:batch_size])
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < max_iterations):
        start = time.perf_counter_ns()
        if batch_size == 1:
            index = int(rng.integers(n))
            backend.infer(staged[index:index + 1])
        else:
            backend.infer(staged[rng.integers(0, n, batch_size)])
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1e9


def duration_settings(profile, scenario, duration_ms=None):
    """What every scenario's test sets: how long it runs and how many queries it needs at least."""
    return {"min_duration_ms": duration_ms or profile["min_duration_ms"],
            "max_duration_ms": profile["max_duration_ms"],
            "min_query_count": profile["min_query_count"][scenario]}


def single_stream(profile, latency_s):
    # Under-estimate so LoadGen pre-generates enough queries for the minimum duration.
    return {**duration_settings(profile, SINGLE_STREAM),
            "single_stream_expected_latency_ns": max(1, int(latency_s * 0.5e9))}


def multi_stream(profile, samples_per_query, query_latency_s):
    return {**duration_settings(profile, MULTI_STREAM), "multi_stream_samples_per_query": samples_per_query,
            "multi_stream_expected_latency_ns": max(1, int(query_latency_s * 0.5e9))}


def offline(profile, expected_qps):
    return {**duration_settings(profile, OFFLINE), "offline_expected_qps": expected_qps}


def offline_probe(batch_size, batch_s, probe_ms):
    """A short Offline test that measures the rate the real one is sized from."""
    return {"min_duration_ms": probe_ms, "min_query_count": 1, "offline_expected_qps": batch_size / batch_s}


def server(profile, qps, latency_ns, duration_ms):
    return {**duration_settings(profile, SERVER, duration_ms), "server_target_qps": float(qps),
            "server_target_latency_ns": latency_ns}


# -- token latencies (text-generation) --------------------------------------------------------------
#: MLPerf Inference's Server constraints for LLMs, (TTFT ms, TPOT ms) at p99, as LoadGen's built-in
#: mlperf.conf sets them (tests/test_genai_scenarios.py reads them back from LoadGen itself, in a
#: fresh process each: TestSettings.FromConfig applies mlperf.conf only on its first call in a
#: process, which is why the suite never relies on FromConfig and sets every field itself).
SLO_PRESETS = {
    "llama2-70b": (2000.0, 200.0),
    "llama2-70b-interactive": (450.0, 40.0),
    "llama3.1-8b": (2000.0, 100.0),
    "llama3.1-8b-interactive": (500.0, 30.0),
    "llama3.1-405b": (6000.0, 175.0),
    "mixtral-8x7b": (2000.0, 200.0),
}
#: the model name mlperf.conf uses for each preset
LOADGEN_MODEL_NAMES = {"llama3.1-8b": "llama3_1-8b", "llama3.1-8b-interactive": "llama3_1-8b-interactive",
                       "llama3.1-405b": "llama3_1-405b"}


def token_bounds(cfg):
    """(TTFT ms, TPOT ms) the Server scenario is held to: the preset, overridden field by field; None
    where neither sets one."""
    ttft, tpot = SLO_PRESETS.get(cfg.slo_preset, (None, None)) if cfg.slo_preset else (None, None)
    return (cfg.ttft_ms if cfg.ttft_ms is not None else ttft), (cfg.tpot_ms if cfg.tpot_ms is not None else tpot)


def with_token_latencies(settings, ttft_ms=None, tpot_ms=None):
    """A scenario's settings with LoadGen's token latencies on. In Server, LoadGen then judges TTFT and
    TPOT at p99 ("performance constraints satisfied"); the end-to-end bound is switched off (0), as
    MLPerf's LLM benchmarks do, so only the token bounds decide."""
    out = {**settings, "use_token_latencies": True}
    if "server_target_qps" in settings:
        out["server_target_latency_ns"] = 0
        # LoadGen needs both bounds set in Server; a missing one is not a constraint (an hour)
        out["ttft_latency"] = int((ttft_ms if ttft_ms is not None else 3_600_000) * 1e6)
        out["tpot_latency"] = int((tpot_ms if tpot_ms is not None else 3_600_000) * 1e6)
    return out
