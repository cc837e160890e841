"""LoadGen's side of a scenario: the sample library (QSL), the system under test (SUT), one test.

LoadGen owns the clock, the query schedule and the verdict; this module supplies the SUT (runs
the backend on the samples LoadGen names) and the QSL (the dataset, already staged where the
backend reads it), then reads LoadGen's own logs back. Every latency percentile reported is
LoadGen's figure from its detail log, never recomputed here.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from array import array
from pathlib import Path

import numpy as np

from ..errors import ScenarioError
from ..layout import LATENCY_PERCENTILES, MULTI_STREAM, OFFLINE, SERVER, SINGLE_STREAM, Artifacts, Metrics

#: metric name -> the percentile as LoadGen's detail log spells it
PERCENTILE_KEYS = {Metrics.latency(p): f"{p[1:]}.00" for p in LATENCY_PERCENTILES}


class SampleLibrary:
    """LoadGen's QSL over data already staged where the backend reads it. Loading a sample makes
    its one-sample view before LoadGen starts the clock: a per-query slice cost a 200 us torch MLP
    7-16 us per query (the slice itself ~2 us, the model call on a fresh view the rest)."""

    def __init__(self, staged):
        self.staged = staged
        self.views = {}

    def load(self, indices):
        for index in indices:
            self.views[index] = self.staged[index:index + 1]

    def unload(self, indices):
        for index in indices:
            self.views.pop(index, None)


class SystemUnderTest:
    """LoadGen's SUT: runs the backend on the queried samples, completes them, times each query.

    Built on LoadGen's "fast" SUT interface, which hands the issue callback the response ids and
    sample indices as two lists of ints instead of one QuerySample object per sample: cheaper to
    convert, and that conversion is inside the latency LoadGen reports (1.5% of a 180 us model's
    SingleStream p50 on the 2-core CI machine; docs/PERFORMANCE.md)."""

    def __init__(self, backend, library, batch_size, server=False):
        import mlperf_loadgen as lg

        self.lg = lg
        self.backend = backend
        self.infer = backend.infer
        self.staged = library.staged
        self.views = library.views
        self.batch_size = batch_size
        # Per-query clock stamps in flat int64 arrays: no Python int kept per query, so the
        # bookkeeping between queries reuses the same memory instead of touching new cache lines.
        self._starts, self._dones = array("q"), array("q")
        self.samples_completed = 0
        self.error = None
        self._complete_samples = lg.QuerySamplesComplete
        self._response = lg.QuerySampleResponse(0, 0, 0)
        self._one_response = [self._response]
        self._queue = queue.SimpleQueue() if server else None
        self._worker = None
        issue = self._enqueue if server else self._issue
        self.handle = lg.ConstructFastSUT(issue, self._flush)

    def _issue(self, ids, indices):
        start = time.perf_counter_ns()
        if len(ids) == 1:
            self._issue_one(ids[0], indices[0])
        else:
            self._issue_many(ids, indices)
        self._dones.append(time.perf_counter_ns())
        self._starts.append(start)
        self.samples_completed += len(ids)

    def _issue_one(self, response_id, index):
        """SingleStream: the loaded view, completed with one reused response. Everything between
        LoadGen's issue and complete is in the latency it reports, and it runs with caches the
        model has just cooled, so this path allocates nothing it can avoid."""
        try:
            self.infer(self.views[index])
        except Exception as err:  # noqa: BLE001 - must not escape into LoadGen's C++ thread
            self.error = self.error or err
        self._response.id = response_id  # LoadGen copies the responses; the object can be reused
        self._complete_samples(self._one_response)

    def _issue_many(self, ids, indices):
        self._completed = 0
        try:
            self._run_batches(ids, indices)
        except Exception as err:  # noqa: BLE001 - must not escape into LoadGen's C++ thread
            self.error = self.error or err
        if self._completed < len(ids):  # all, normally; after an error, the rest, so LoadGen never waits forever
            self._complete_ids(ids[self._completed:])

    def _complete_ids(self, ids):
        response = self.lg.QuerySampleResponse
        self._complete_samples([response(i, 0, 0) for i in ids])

    def _run_batches(self, ids, indices):
        """Batches of a multi-sample query, pipelined: batch k+1 is launched before batch k's
        samples are completed, so on a GPU the host's per-sample work hides behind compute."""
        device_indices = self.backend.device_indices(np.asarray(indices, dtype=np.int64))
        pending = None
        for begin in range(0, len(ids), self.batch_size):
            handle = self.backend.launch(self.staged[device_indices[begin:begin + self.batch_size]])
            if pending is not None:
                self._complete(ids, *pending)
            pending = (handle, begin, min(begin + self.batch_size, len(ids)))
        self._complete(ids, *pending)

    def _complete(self, ids, handle, begin, end):
        self.backend.wait(handle)
        self._complete_ids(ids[begin:end])
        self._completed = end

    # Server: LoadGen's issuing thread only enqueues, so arrivals keep their Poisson schedule;
    # one worker drains the queue and batches whatever has arrived, up to batch_size.
    def start_worker(self):
        self._worker = threading.Thread(target=self._serve, name="aif-sut-server", daemon=True)
        self._worker.start()

    def stop_worker(self):
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()

    def _enqueue(self, ids, indices):
        self._queue.put((ids, indices, time.perf_counter_ns()))

    def _serve(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            items, count = [item], len(item[0])
            while count < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after serving what has arrived
                    break
                items.append(nxt)
                count += len(nxt[0])
            self._serve_items(items)

    def _serve_items(self, items):
        ids = [i for query_ids, _, _ in items for i in query_ids]
        indices = [i for _, query_indices, _ in items for i in query_indices]
        try:
            if len(indices) == 1:
                self.infer(self.views[indices[0]])
            else:
                self.infer(self.staged[np.asarray(indices, dtype=np.int64)])
        except Exception as err:  # noqa: BLE001
            self.error = self.error or err
        self._complete_ids(ids)
        done = time.perf_counter_ns()
        for _, _, arrived in items:
            self._starts.append(arrived)
            self._dones.append(done)
        self.samples_completed += len(ids)

    @property
    def latencies_ns(self):
        """Each query's issue (Server: arrival) to completion, as the SUT's own clock saw it."""
        return np.frombuffer(self._dones, dtype=np.int64) - np.frombuffer(self._starts, dtype=np.int64)

    @property
    def first_issue(self):
        return self._starts[0] if self._starts else None

    @property
    def last_done(self):
        return self._dones[-1] if self._dones else None

    def _flush(self):
        pass

    def destroy(self):
        self.stop_worker()
        self.lg.DestroyFastSUT(self.handle)


def test_settings(scenario, settings):
    """LoadGen's TestSettings for a performance test of `scenario` with these fields set."""
    import mlperf_loadgen as lg

    test = lg.TestSettings()
    test.scenario = getattr(lg.TestScenario, scenario)
    test.mode = lg.TestMode.PerformanceOnly
    for key, value in settings.items():
        setattr(test, key, value)
    return test


def log_settings(log_dir):
    """LoadGen's LogSettings: summary and detail logs into `log_dir`, no trace, nothing on stdout."""
    import mlperf_loadgen as lg

    output = lg.LogOutputSettings()
    output.outdir = str(log_dir)
    output.copy_summary_to_stdout = False
    logs = lg.LogSettings()
    logs.log_output = output
    logs.enable_trace = False
    return logs


def run_loadgen(backend, staged, n_samples, scenario, settings, log_dir, batch_size):
    """One LoadGen test: returns the SUT (its timings) and LoadGen's parsed detail log."""
    import mlperf_loadgen as lg

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    test, logs = test_settings(scenario, settings), log_settings(log_dir)
    library = SampleLibrary(staged)
    sut = SystemUnderTest(backend, library, batch_size, server=scenario == SERVER)
    performance_count = min(n_samples, 1024)
    qsl = lg.ConstructQSL(n_samples, performance_count, library.load, library.unload)
    try:
        if scenario == SERVER:
            sut.start_worker()
        lg.StartTestWithLogSettings(sut.handle, qsl, test, logs)
    finally:
        sut.destroy()
        lg.DestroyQSL(qsl)
    _drop_empty_logs(log_dir)
    if sut.error is not None:
        raise ScenarioError(f"{backend.label} failed in {scenario}: {type(sut.error).__name__}: {sut.error}") from sut.error
    return sut, read_detail_log(log_dir / Artifacts.LOADGEN_DETAIL)


def _drop_empty_logs(log_dir):
    for name in ("mlperf_log_trace.json", "mlperf_log_accuracy.json"):
        path = log_dir / name
        if path.exists() and path.stat().st_size <= 4:  # "[\n]\n" or empty
            path.unlink()


def read_detail_log(path):
    """LoadGen's detail log: one `:::MLLOG {json}` per line; later keys win."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG "):])
            values[entry["key"]] = entry["value"]
    return values


# where each scenario's throughput is in LoadGen's detail log (MultiStream has none)
THROUGHPUT_KEYS = {SINGLE_STREAM: "result_qps_with_loadgen_overhead", OFFLINE: "result_samples_per_second",
                   SERVER: "result_completed_samples_per_sec"}


def scenario_metrics(scenario, detail, sut):
    """The layout's metrics of one test, all from LoadGen's detail log (MultiStream's rate aside)."""
    ns_to_ms = 1e-6
    metrics = {name: detail[f"result_{p}_percentile_latency_ns"] * ns_to_ms for name, p in PERCENTILE_KEYS.items()
               if f"result_{p}_percentile_latency_ns" in detail}
    metrics[Metrics.LATENCY_MEAN] = detail["result_mean_latency_ns"] * ns_to_ms
    metrics[Metrics.LATENCY_MAX] = detail["result_max_latency_ns"] * ns_to_ms
    if scenario == MULTI_STREAM:  # LoadGen reports no rate; queries are back to back, so use the SUT's span
        span_s = (sut.last_done - sut.first_issue) / 1e9 if sut.first_issue else 0
        metrics[Metrics.THROUGHPUT] = sut.samples_completed / span_s if span_s else 0.0
    else:
        metrics[Metrics.THROUGHPUT] = float(detail[THROUGHPUT_KEYS[scenario]])
    if scenario == SERVER:
        metrics[Metrics.SERVER_TARGET_QPS] = float(detail.get("effective_target_qps", 0))
    metrics[Metrics.LOADGEN_QUERY_COUNT] = float(detail.get("result_query_count", 0))
    return metrics


def results_only(detail):
    keep = ("result_", "early_stopping", "effective_", "loadgen_version", "num_errors")
    return {k: v for k, v in detail.items() if k.startswith(keep)}


def early_stopping_text(detail):
    text = detail.get("early_stopping_result")
    if text is None:
        return "not reported"
    return " ".join(str(text).split())
