"""Token scenarios: a generative backend under the real LoadGen, with token latencies.

The SUT hands each query's prompt to the backend's `generate(batch, stream)` and turns the
stream into LoadGen's calls: `FirstTokenComplete` when a row's first generated token exists and
`QuerySamplesComplete` with `n_tokens` when the row is done. LoadGen then reports TTFT (issue to
first token), TPOT ((latency - TTFT) / (n_tokens - 1) per query) and tokens/s, and in Server judges
TTFT and TPOT at p99 against their bounds. The SUT keeps its own clock of every query too (TTFT,
each inter-token gap, tokens), for ITL and goodput, which LoadGen does not report, and for the
per-query artifact `token_latencies.npz`.

Batching is static: a worker takes what has arrived (Server) or the next chunk of the sorted
samples (Offline), up to `generation.max_batch_size`, and generates them together; each row
completes when it is done, not when the batch is. SingleStream runs in LoadGen's issue thread.
After every test the detail log is scanned for errors (LoadGen logs a missing `n_tokens` there
while its summary still says VALID): any error fails the scenario.
"""

from __future__ import annotations

import queue
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.generation import MIN_SCENARIO_TOKENS
from ..errors import ScenarioError
from ..layout import OFFLINE, SERVER, SINGLE_STREAM, TOKEN_PERCENTILES, Artifacts, Metrics, Tags
from . import server_search
from .runner import ScenarioRun
from . import settings as loadgen_settings
from .loadgen import (early_stopping_text, log_settings, read_detail_log, results_only, scenario_metrics,
                      test_settings)

#: TTFT/TPOT percentile keys of LoadGen's detail log
TTFT_KEYS = {p: f"result_first_token_{p[1:]}.00_percentile_latency_ns" for p in TOKEN_PERCENTILES}
TPOT_KEYS = {p: f"result_time_per_output_token_{p[1:]}.00_percentile_ns" for p in TOKEN_PERCENTILES}
TOKENS_PER_S_KEYS = {SINGLE_STREAM: "result_completed_tokens_per_second",
                     SERVER: "result_completed_tokens_per_second", OFFLINE: "result_tokens_per_second"}
#: queries per test of the token profile: a generated answer takes milliseconds to seconds
TOKEN_QUERY_COUNTS = {"quick": {SINGLE_STREAM: 16, SERVER: 24, OFFLINE: 1},
                      "full": {SINGLE_STREAM: 1024, SERVER: 24_576, OFFLINE: 1}}


class _Query:
    """One query sample in flight, timed by the SUT's clock (perf_counter_ns)."""

    __slots__ = ("response_id", "index", "issued", "first", "stamps", "done", "n_tokens")

    def __init__(self, response_id, index, issued):
        self.response_id, self.index, self.issued = response_id, index, issued
        self.first = self.done = 0
        self.stamps = array("q")
        self.n_tokens = 0


class _BatchStream:
    """The stream a backend reports one batch to: LoadGen's token calls plus the SUT's own clock."""

    def __init__(self, sut, queries):
        self.sut, self.queries = sut, queries
        self._token = np.zeros(1, dtype=np.int64)

    def first_token(self, row, token):
        query = self.queries[row]
        query.first = time.perf_counter_ns()
        self._token[0] = token
        self.sut.first_token_complete([self.sut.response(query.response_id, self._token.ctypes.data, 8)])

    def token(self, row):
        self.queries[row].stamps.append(time.perf_counter_ns())

    def done(self, row, token_ids):
        query = self.queries[row]
        query.done = time.perf_counter_ns()
        query.n_tokens = len(token_ids)
        data = np.asarray(token_ids, dtype=np.int64)
        self.sut.complete(query.response_id, data.ctypes.data, data.nbytes, len(token_ids))
        self.sut.finished.append(query)


class TokenSystemUnderTest:
    """LoadGen SUT for `generate(batch, stream)` backends; see the module docstring."""

    def __init__(self, backend, staged, scenario, max_batch, concurrency=1):
        import mlperf_loadgen as lg

        self.lg, self.backend, self.staged, self.scenario = lg, backend, staged, scenario
        self.max_batch = max_batch
        self.concurrency = concurrency if scenario != SINGLE_STREAM else 0
        self.response = lg.QuerySampleResponse
        self.first_token_complete = lg.FirstTokenComplete
        self.finished = []  # _Query, in completion order (list.append is atomic under the GIL)
        self.error = None
        self._queue = queue.SimpleQueue()
        self._workers = []
        self._lengths = staged.lengths
        self.handle = lg.ConstructFastSUT(self._issue, lambda: None)

    def complete(self, response_id, ptr, size, n_tokens):
        """QuerySamplesComplete with n_tokens (positional, as the binding requires)."""
        self.lg.QuerySamplesComplete([self.response(response_id, ptr, size, n_tokens)])

    # -- issuing -------------------------------------------------------------------------------
    def _issue(self, ids, indices):
        now = time.perf_counter_ns()
        queries = [_Query(r, i, now) for r, i in zip(ids, indices)]
        if self.scenario == SINGLE_STREAM:
            self._run(queries)
        elif self.scenario == OFFLINE:
            for chunk in self._offline_batches(queries):
                self._queue.put(chunk)
        else:
            for query in queries:
                self._queue.put([query])

    def _offline_batches(self, queries):
        """Similar prompt lengths and budgets together: less padding in every static batch."""
        budgets = self.staged.max_new_tokens
        order = sorted(queries, key=lambda q: (budgets[q.index], self._lengths[q.index]))
        return [order[i:i + self.max_batch] for i in range(0, len(order), self.max_batch)]

    def start(self):
        for n in range(self.concurrency):
            worker = threading.Thread(target=self._serve, name=f"aif-token-sut-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self):
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()

    def _serve(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item)
            while self.scenario == SERVER and len(batch) < self.max_batch:  # what has arrived meanwhile
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.extend(nxt)
            self._run(batch)

    def _run(self, queries):
        stream = _BatchStream(self, queries)
        try:
            self.backend.generate(self.staged[np.fromiter((q.index for q in queries), np.int64, len(queries))], stream)
        except Exception as err:  # noqa: BLE001 - must not escape into LoadGen's thread
            self.error = self.error or err
        for query in queries:  # after an error: complete the rest, so LoadGen never waits forever
            if not query.done:
                query.done = time.perf_counter_ns()
                self.complete(query.response_id, 0, 0, 1)

    def destroy(self):
        self.stop()
        self.lg.DestroyFastSUT(self.handle)

    # -- the SUT's own clock ---------------------------------------------------------------------
    def records(self, input_lengths):
        """Per query (completion order): TTFT, TPOT, latency (s), tokens, and every inter-token gap."""
        done = [q for q in self.finished if q.first]
        ttft = np.array([(q.first - q.issued) / 1e9 for q in done])
        latency = np.array([(q.done - q.issued) / 1e9 for q in done])
        tokens = np.array([q.n_tokens for q in done], dtype=np.int64)
        tpot = np.where(tokens > 1, (latency - ttft) / np.maximum(tokens - 1, 1), np.nan)
        gaps = [np.diff(np.frombuffer(q.stamps, dtype=np.int64), prepend=q.first) / 1e9 for q in done if len(q.stamps)]
        return {"ttft_s": ttft, "tpot_s": tpot, "latency_s": latency, "output_tokens": tokens,
                "input_tokens": np.array([input_lengths[q.index] for q in done], dtype=np.int64),
                "sample_index": np.array([q.index for q in done], dtype=np.int64),
                "itl_s": np.concatenate(gaps) if gaps else np.zeros(0)}


#: errors LoadGen logs that say the test ended at its maximum duration (its verdict then says
#: INVALID for too few queries); they end a test early, they do not falsify its figures
DURATION_CAP = "Max test duration reached"


def detail_log_errors(path):
    """Every error LoadGen wrote to its detail log ("is_error": true), as `key: value` lines; the
    maximum-duration notice aside (the verdict reports that one)."""
    import json

    errors = []
    for line in Path(path).read_text().splitlines():
        if line.startswith(":::MLLOG ") and '"is_error": true' in line:
            entry = json.loads(line[len(":::MLLOG "):])
            if DURATION_CAP not in str(entry.get("value")):
                errors.append(f"{entry.get('key')}: {entry.get('value')}")
    return errors


def run_token_loadgen(sut_factory, n_samples, scenario, settings, log_dir, label):
    """One LoadGen test of a token SUT; the detail log must hold no error, or the scenario fails."""
    import mlperf_loadgen as lg

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    test, logs = test_settings(scenario, settings), log_settings(log_dir)
    sut = sut_factory()
    qsl = lg.ConstructQSL(n_samples, min(n_samples, 1024), lambda s: None, lambda s: None)
    try:
        sut.start()
        lg.StartTestWithLogSettings(sut.handle, qsl, test, logs)
    finally:
        sut.destroy()
        lg.DestroyQSL(qsl)
    for name in ("mlperf_log_trace.json", "mlperf_log_accuracy.json"):
        path = log_dir / name
        if path.exists() and path.stat().st_size <= 4:
            path.unlink()
    if sut.error is not None:
        raise ScenarioError(f"{label} failed in {scenario}: {type(sut.error).__name__}: {sut.error}") from sut.error
    detail_path = log_dir / Artifacts.LOADGEN_DETAIL
    errors = detail_log_errors(detail_path)
    if errors:
        shown = "; ".join(sorted(set(errors))[:3])
        raise ScenarioError(f"{label} in {scenario}: LoadGen logged {len(errors)} error(s) in {detail_path} "
                            f"(its summary may still say VALID, but the figures are not to be trusted): {shown}")
    return sut, read_detail_log(detail_path)


def token_metrics(scenario, detail, sut, records, bounds):
    """LoadGen's TTFT/TPOT/tokens-per-second and end-to-end latency; ITL, goodput, lengths from the SUT."""
    from ..text.data import length_statistics

    ms = 1e-6
    metrics = scenario_metrics(scenario, detail, _SutSpan(sut, records))
    if scenario != OFFLINE:  # Offline reports tokens/s only: every query is issued at once
        for p in TOKEN_PERCENTILES:
            if TTFT_KEYS[p] in detail:
                metrics[Metrics.token_latency("ttft", p)] = detail[TTFT_KEYS[p]] * ms
            if TPOT_KEYS[p] in detail:
                metrics[Metrics.token_latency("tpot", p)] = detail[TPOT_KEYS[p]] * ms
        if "result_first_token_mean_latency_ns" in detail:
            metrics[Metrics.TTFT_MEAN] = detail["result_first_token_mean_latency_ns"] * ms
        if "result_time_to_output_token_mean" in detail:
            metrics[Metrics.TPOT_MEAN] = detail["result_time_to_output_token_mean"] * ms
    if TOKENS_PER_S_KEYS[scenario] in detail:
        metrics[Metrics.OUTPUT_TOKENS_PER_S] = float(detail[TOKENS_PER_S_KEYS[scenario]])
    itl = records["itl_s"]
    if itl.size:
        for p in TOKEN_PERCENTILES:
            metrics[Metrics.token_latency("itl", p)] = float(np.percentile(itl, int(p[1:]))) * 1e3
    metrics.update(length_statistics(records["input_tokens"], "input"))
    metrics.update(length_statistics(records["output_tokens"], "output"))
    ttft_ms, tpot_ms = bounds
    if scenario == SERVER and (ttft_ms or tpot_ms):
        metrics.update(goodput(records, ttft_ms, tpot_ms, metrics[Metrics.THROUGHPUT]))
    return metrics


class _SutSpan:
    """What scenario_metrics reads of a SUT (samples completed and the first/last clock stamps)."""

    def __init__(self, sut, records):
        self.samples_completed = len(records["latency_s"])
        queries = [q for q in sut.finished if q.done]
        self.first_issue = min((q.issued for q in queries), default=None)
        self.last_done = max((q.done for q in queries), default=None)


def goodput(records, ttft_ms, tpot_ms, requests_per_s):
    """Requests/s that met every SLO: LoadGen's completed rate times the share of queries whose own
    TTFT and TPOT (the SUT's clock) are within the bounds."""
    ok = np.ones(len(records["ttft_s"]), dtype=bool)
    if ttft_ms:
        ok &= records["ttft_s"] * 1e3 <= ttft_ms
    if tpot_ms:
        ok &= np.nan_to_num(records["tpot_s"], nan=0.0) * 1e3 <= tpot_ms
    share = float(ok.mean()) if ok.size else 0.0
    out = {Metrics.GOODPUT: requests_per_s * share}
    if ttft_ms:
        out[Metrics.TTFT_BOUND] = float(ttft_ms)
    if tpot_ms:
        out[Metrics.TPOT_BOUND] = float(tpot_ms)
    return out


def constraint_tags(scenario, detail, metrics, bounds):
    """LoadGen's verdict on the token bounds (Server): its combined judgement and each bound's p99."""
    if scenario != SERVER:
        return {}
    tags = {Tags.CONSTRAINTS_MET: "yes" if detail.get("result_perf_constraints_met") else "no"}
    for tag, bound, metric in ((Tags.TTFT_CONSTRAINT, bounds[0], Metrics.TTFT_P99),
                               (Tags.TPOT_CONSTRAINT, bounds[1], Metrics.TPOT_P99)):
        if bound and metric in metrics:
            tags[tag] = f"{'met' if metrics[metric] <= bound else 'not met'}: p99 {metrics[metric]:.4g} ms vs {bound:g} ms"
    return tags


def token_early_stopping(detail):
    parts = [f"{name}: {' '.join(str(detail[key]).split())}" for name, key in
             (("TTFT", "early_stopping_ttft_result"), ("TPOT", "early_stopping_tpot_result")) if detail.get(key)]
    return "; ".join(parts) or early_stopping_text(detail)


@dataclass
class TokenScenarioRun(ScenarioRun):
    """One token scenario's outcome: a ScenarioRun with the per-query token records."""

    tags: dict = field(default_factory=dict)
    token_records: dict = field(default_factory=dict)  # -> token_latencies.npz


class TokenScenarioRunner:
    """The configured token scenarios of one generative backend; settings follow the profile."""

    def __init__(self, backend, staged, scfg, gcfg, log_root):
        self.backend, self.staged, self.cfg, self.gcfg = backend, staged, scfg, gcfg
        self.log_root = Path(log_root)
        self.profile = loadgen_settings.profile_settings(scfg)
        if scfg.min_query_count is None:
            self.profile["min_query_count"] = dict(TOKEN_QUERY_COUNTS[scfg.profile])
        self.bounds = loadgen_settings.token_bounds(scfg)
        backend.min_new_tokens = MIN_SCENARIO_TOKENS  # LoadGen: n_tokens must exceed 1
        self.lengths = staged.lengths
        self._single_s = None

    @property
    def single_latency_s(self):
        """Median seconds of one generated answer (the first few samples), to size LoadGen's queries."""
        if self._single_s is None:
            times = []
            for i in range(min(3, len(self.staged))):
                start = time.perf_counter()
                self.backend.generate(self.staged[i:i + 1])
                times.append(time.perf_counter() - start)
            self._single_s = float(np.median(times))
        return self._single_s

    def run(self, scenario, name=None):
        if scenario == SERVER:
            return self.run_server(name)
        if scenario == SINGLE_STREAM:
            settings = {**loadgen_settings.duration_settings(self.profile, SINGLE_STREAM),
                        "single_stream_expected_latency_ns": max(1, int(self.single_latency_s * 0.5e9))}
            return self._execute(SINGLE_STREAM, settings, 1, name or scenario)
        batch = self.gcfg.max_batch_size
        settings = loadgen_settings.offline(self.profile, self._offline_rate(batch))
        return self._execute(OFFLINE, settings, batch, name or scenario)

    def _offline_rate(self, batch):
        """Samples/s of one batch; asked for 1.5x so LoadGen's one query outlasts the minimum duration."""
        start = time.perf_counter()
        self.backend.generate(self.staged[: min(batch, len(self.staged))])
        seconds = time.perf_counter() - start
        return 1.5 * min(batch, len(self.staged)) / max(seconds, 1e-6)

    def _execute(self, scenario, settings, batch, name, log_name=None):
        from ..trackers import track

        settings = loadgen_settings.with_token_latencies(settings, *self.bounds)
        self.backend.warmup(self.staged, (min(batch, len(self.staged)),), iterations=1)
        if hasattr(self.backend, "reset_peak_kv"):
            self.backend.reset_peak_kv()
        label = self.backend.label

        def factory():
            return TokenSystemUnderTest(self.backend, self.staged, scenario, batch, self.gcfg.concurrency)

        with track(self.backend) as measured:
            sut, detail = run_token_loadgen(factory, len(self.staged), scenario, settings,
                                            self.log_root / (log_name or name), label)
        records = sut.records(self.lengths)
        metrics = token_metrics(scenario, detail, sut, records, self.bounds)
        metrics.update(measured.metrics(len(records["latency_s"])))
        self._resources(metrics, measured, records)
        return TokenScenarioRun(
            scenario=scenario, batch_size=batch, settings=settings, loadgen=results_only(detail), metrics=metrics,
            validity=detail.get("result_validity", "UNKNOWN"), early_stopping=token_early_stopping(detail),
            latencies_s=records["latency_s"], log_dir=self.log_root / (log_name or name),
            samples_completed=len(records["latency_s"]), tags=constraint_tags(scenario, detail, metrics, self.bounds),
            token_records=records)

    def _resources(self, metrics, measured, records):
        tokens = int(records["output_tokens"].sum())
        if measured.energy_j and tokens:
            metrics[Metrics.ENERGY_PER_OUTPUT_TOKEN] = measured.energy_j / tokens
        per_token = getattr(self.backend, "kv_bytes_per_token", None)
        if per_token:
            metrics[Metrics.KV_CACHE_PER_TOKEN] = float(per_token)
            peak = self.backend.kv_cache_peak_mb()
            if peak:
                metrics[Metrics.KV_CACHE_PEAK] = peak

    # -- Server ------------------------------------------------------------------------------------
    def run_server(self, name=None):
        """Server at a target QPS; with TTFT/TPOT bounds and server_search, the highest QPS meeting both."""
        cfg, profile = self.cfg, self.profile
        batch = self.gcfg.max_batch_size

        def trial(qps, duration_ms, log_name):
            settings = loadgen_settings.server(profile, qps, 0, duration_ms)
            if settings["max_duration_ms"]:  # room for the minimum query count at a low rate
                needed_ms = 3000 * settings["min_query_count"] / qps
                settings["max_duration_ms"] = int(max(settings["max_duration_ms"], needed_ms))
            return self._execute(SERVER, settings, batch, name or SERVER, log_name)

        searching = cfg.server_search and any(self.bounds)
        if not searching:
            qps = cfg.server_target_qps or 0.5 / self.single_latency_s
            return trial(qps, profile["min_duration_ms"], name or SERVER)
        start_qps = cfg.server_target_qps or 0.5 / self.single_latency_s
        best, trials = server_search.search(
            lambda q: trial(q, profile["server_trial_ms"], f"{SERVER}/qps-{q:.3g}"), start_qps,
            max(1, profile["search_bisections"] - 1))
        if best is not None and profile["server_confirm"]:
            best = server_search.confirm(lambda q: trial(q, profile["min_duration_ms"], f"{SERVER}/confirm-{q:.3g}"),
                                         best, trials)
        if best is None:
            best = min(trials, key=server_search.target_qps)
        else:
            best.metrics[Metrics.SERVER_MAX_VALID_QPS] = best.metrics[Metrics.SERVER_TARGET_QPS]
        best.search = [{**s, Metrics.TTFT_P99: t.metrics.get(Metrics.TTFT_P99),
                        Metrics.TPOT_P99: t.metrics.get(Metrics.TPOT_P99)}
                       for s, t in zip(server_search.search_summary(trials), trials)]
        return best
