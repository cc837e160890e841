"""Token latencies under the real LoadGen: every TTFT/TPOT figure is LoadGen's own, checked here
against its summary and detail logs; TTFT against an independent timing of the first token; the
n_tokens trap fails the run; the SLO presets are LoadGen's mlperf.conf values."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from aifactory.benchmarks.backends import create_backend
from aifactory.benchmarks.config import BackendConfig, DataConfig, GenerationConfig, ModelConfig, ScenarioConfig
from aifactory.benchmarks.errors import ScenarioError
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.scenarios import generation as token_scenarios
from aifactory.benchmarks.scenarios.settings import LOADGEN_MODEL_NAMES, SLO_PRESETS
from aifactory.benchmarks.text.data import load_text_dataset, tokenize

SUMMARY_LINES = {"ttft_p50_ms": "50.00 percentile first token latency (ns)",
                 "ttft_p99_ms": "99.00 percentile first token latency (ns)",
                 "tpot_p50_ms": "50.00 percentile time to output token (ns)",
                 "tpot_p99_ms": "99.00 percentile time to output token (ns)",
                 "latency_p99_ms": "99.00 percentile latency (ns)"}


class TimedBackend:
    """Wraps a backend: times each generate call's start and its rows' first tokens, independently."""

    def __init__(self, backend):
        object.__setattr__(self, "inner", backend)
        object.__setattr__(self, "first_token_ms", [])

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):  # what the runner sets (min_new_tokens) reaches the backend
        setattr(self.inner, name, value)

    def generate(self, batch, stream=None):
        start = time.perf_counter_ns()
        outer = self

        class Timing(type(stream) if stream is not None else object):
            def __init__(self):
                pass

            def first_token(self, row, token):
                outer.first_token_ms.append((time.perf_counter_ns() - start) / 1e6)
                if stream is not None:
                    stream.first_token(row, token)

            def token(self, row):
                if stream is not None:
                    stream.token(row)

            def done(self, row, ids):
                if stream is not None:
                    stream.done(row, ids)

        return self.inner.generate(batch, Timing())


@pytest.fixture(scope="module")
def lm(reference_lm):
    model = load_model(ModelConfig(path=str(reference_lm["lm"])))
    generation = GenerationConfig(max_new_tokens=8, max_batch_size=4)
    prompts = tokenize(load_text_dataset(DataConfig(source=str(reference_lm["prompts"]), limit=24), model.task),
                       model, generation)
    backend = create_backend(BackendConfig(kind="transformers", threads=1), model, "backends[0]")
    backend.configure_generation(generation)
    yield backend, prompts, generation
    backend.close()


def _runner(lm, tmp_path, **scenario):
    backend, prompts, generation = lm
    cfg = ScenarioConfig(min_duration_s=0.2, min_query_count=12, warmup_s=0.05, **scenario)
    return token_scenarios.TokenScenarioRunner(backend, prompts, cfg, generation, tmp_path)


def _summary(run):
    return (run.log_dir / "mlperf_log_summary.txt").read_text()


def _summary_ns(text, label):
    return float(re.search(re.escape(label) + r"\s*:\s*(\d+)", text).group(1))


def _detail(run):
    values = {}
    for line in (run.log_dir / "mlperf_log_detail.txt").read_text().splitlines():
        if line.startswith(":::MLLOG"):
            entry = json.loads(line.split(" ", 1)[1])
            values[entry["key"]] = entry["value"]
    return values


@pytest.fixture(scope="module")
def single_stream(lm, tmp_path_factory):
    timed = TimedBackend(lm[0])
    runner = _runner((timed, lm[1], lm[2]), tmp_path_factory.mktemp("ss"))
    return runner.run("SingleStream"), timed


def test_single_stream_token_figures_are_loadgens_summary_and_detail(single_stream):
    run, _ = single_stream
    summary, detail = _summary(run), _detail(run)
    for metric, label in SUMMARY_LINES.items():
        assert run.metrics[metric] == pytest.approx(_summary_ns(summary, label) / 1e6, rel=1e-6), metric
    assert run.metrics["ttft_mean_ms"] == pytest.approx(detail["result_first_token_mean_latency_ns"] / 1e6)
    assert run.metrics["output_tokens_per_s"] == pytest.approx(detail["result_completed_tokens_per_second"])
    assert detail["requested_use_token_latencies"] is True and detail["num_errors"] == 0
    # LoadGen's TPOT is (latency - TTFT) / (n_tokens - 1) per query: the SUT's own clock agrees
    records = run.token_records
    assert set(records["output_tokens"]) <= set(range(1, 9))
    assert np.median(records["tpot_s"][records["output_tokens"] > 1]) * 1e3 == pytest.approx(
        run.metrics["tpot_p50_ms"], rel=0.25)


def test_ttft_matches_an_independent_timing_of_the_first_token(single_stream):
    """SingleStream runs generate in LoadGen's issue thread: TTFT = generate's first token + the
    issue call's own overhead (microseconds), never less than the independent timing."""
    run, timed = single_stream
    independent = np.median(timed.first_token_ms[-len(run.token_records["ttft_s"]):])
    assert run.metrics["ttft_p50_ms"] >= independent * 0.97
    assert run.metrics["ttft_p50_ms"] == pytest.approx(independent, rel=0.15, abs=0.5)


def test_server_search_holds_ttft_and_tpot_bounds_and_reports_goodput(lm, tmp_path):
    run = _runner(lm, tmp_path, slo_preset="llama3.1-8b", ttft_ms=60.0).run("Server")
    detail = _detail(run)
    assert detail["requested_server_ttft_latency"] == 60_000_000
    assert detail["requested_server_tpot_latency"] == 100_000_000  # the preset's TPOT
    assert detail["requested_server_target_latency_ns"] == 0  # only the token bounds decide
    assert len(run.search) >= 2 and any(t["meets_bound"] for t in run.search)
    assert run.metrics["server_max_valid_qps"] == max(t["target_qps"] for t in run.search if t["meets_bound"])
    assert run.tags["aif.loadgen.constraints_met"] == "yes"
    assert run.tags["aif.loadgen.ttft_constraint"].startswith("met: p99")
    assert run.metrics["ttft_p99_ms"] == pytest.approx(detail["result_first_token_99.00_percentile_latency_ns"] / 1e6)
    assert 0 < run.metrics["goodput_requests_per_s"] <= run.metrics["throughput_samples_per_s"]
    assert (run.metrics["ttft_bound_ms"], run.metrics["tpot_bound_ms"]) == (60.0, 100.0)


def test_offline_reports_loadgens_tokens_per_second(lm, tmp_path):
    run = _runner(lm, tmp_path).run("Offline")
    detail = _detail(run)
    assert run.metrics["output_tokens_per_s"] == pytest.approx(detail["result_tokens_per_second"])
    assert "ttft_p50_ms" not in run.metrics  # LoadGen reports no TTFT/TPOT in Offline
    assert run.samples_completed == detail["generated_samples_per_query"]  # LoadGen's one Offline query
    tokens = int(run.token_records["output_tokens"].sum())
    seconds = tokens / run.metrics["output_tokens_per_s"]  # LoadGen's rate: all tokens over its test time
    assert 0 < seconds <= run.token_records["latency_s"].max() * 1.05
    assert run.metrics["kv_cache_bytes_per_token"] == 2048 and run.metrics["kv_cache_peak_mb"] > 0


def test_a_response_without_n_tokens_fails_the_scenario(lm, tmp_path, monkeypatch):
    """The trap: LoadGen logs 'n_tokens argument missing' in its detail log only; the summary still
    reads VALID. The suite scans the detail log and fails the run."""
    def complete_without_n_tokens(self, response_id, ptr, size, n_tokens):
        self.lg.QuerySamplesComplete([self.response(response_id, ptr, size)])

    monkeypatch.setattr(token_scenarios.TokenSystemUnderTest, "complete", complete_without_n_tokens)
    with pytest.raises(ScenarioError, match=r"LoadGen logged \d+ error\(s\) in .*mlperf_log_detail\.txt.*n_tokens"):
        _runner(lm, tmp_path).run("SingleStream")


def test_slo_presets_are_loadgens_own_mlperf_conf_and_from_config_applies_it_once():
    """Each preset read back from LoadGen's built-in mlperf.conf, one fresh process per model: a
    second FromConfig in the same process gets the defaults, which is why the suite never uses it."""
    script = (
        "import sys, tempfile, mlperf_loadgen as lg\n"
        "conf = tempfile.NamedTemporaryFile('w', suffix='.conf', delete=False); conf.write('\\n'); conf.close()\n"
        "for attempt in range(2):\n"
        "    t = lg.TestSettings(); t.FromConfig(conf.name, sys.argv[1], 'Server')\n"
        "    print(t.ttft_latency / 1e6, t.tpot_latency / 1e6, t.use_token_latencies)\n")
    for preset, (ttft, tpot) in SLO_PRESETS.items():
        name = LOADGEN_MODEL_NAMES.get(preset, preset)
        out = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, check=True)
        first, second = out.stdout.split("\n")[:2]
        assert first == f"{ttft} {tpot} True", (preset, first)
        assert second != first  # the trap: mlperf.conf is applied on the first call only


def test_one_token_answers_get_a_second_token_so_loadgen_can_define_tpot(lm, reference_lm, tmp_path):
    """LoadGen logs an error for n_tokens == 1 (no TPOT); the scenarios generate at least two tokens."""
    backend, _, _ = lm
    data = load_text_dataset(DataConfig(source=str(reference_lm["prompts"])), "text-generation")
    prompts = tokenize(data, backend.model, GenerationConfig())
    one_token = prompts[np.flatnonzero(prompts.max_new_tokens == 1)[:8]]
    assert len(one_token) == 8  # the model_exact group: one-word references
    runner = token_scenarios.TokenScenarioRunner(backend, one_token, ScenarioConfig(min_duration_s=0.1,
                                                 min_query_count=8), GenerationConfig(), tmp_path)
    run = runner.run("SingleStream")
    assert run.token_records["output_tokens"].min() == 2 and run.metrics["tpot_p50_ms"] > 0
