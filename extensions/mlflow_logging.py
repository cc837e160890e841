"""Buffered MLflow logging for platform sessions: a naive `mlflow.log_metric` loop at memory speed.

The tracking store of users' sessions (chosen by mlflow_store.tracking_store). With asynchronous
logging on (MLFLOW_ENABLE_ASYNC_LOGGING, a session default) every `log_metric` / `log_param` /
`set_tag` / `log_batch` call is validated and appended to one in-process buffer, and a
background thread ships the buffer as large `runs/log-batch` requests. MLflow's own async queue
costs a thread-pool hand-off per call; this costs a list append.

What is buffered is sent before any other request of the process's buffering stores (so a read
sees every point logged before it, and a run ends after its points), at
`mlflow.flush_async_logging()`, and at exit. A request the server refuses is not dropped: its
points stay in this process, are sent again at the next flush, a warning names the run and the
server's answer at once, at flush and at end_run, and the run ends FAILED rather than FINISHED.
"""

import atexit
import logging
import math
import os
import threading
from collections import deque

from mlflow.entities import Metric, RunStatus
from mlflow.protos.service_pb2 import GetMetricHistory, LogBatch
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.async_logging.run_operations import RunOperations
from mlflow.utils.rest_utils import http_request, verify_rest_response
from mlflow.utils.validation import _validate_batch_log_data

log = logging.getLogger("mlflow.aifactory")

# MLflow's own knob for how long async logging gathers points; here: the longest a point waits
BUFFER_SECONDS_ENV = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"
# MLflow's limits per log-batch request
MAX_METRICS = 1000
MAX_PARAMS_OR_TAGS = 100
TERMINAL = {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED}


class BufferedRestStore(RestStore):
    """MLflow's REST store with asynchronous logging through the process's one `Shipper`."""

    def __init__(self, get_host_creds):
        super().__init__(get_host_creds)
        self._shipper = Shipper.instance()
        self._operations = {}  # run_id -> RunOperations handed back by every async call
        self._valid_keys = set()  # metric names MLflow's validation has accepted

    # --- asynchronous logging: a validated append ---

    def log_batch_async(self, run_id, metrics, params, tags):
        # a refused point must fail here, in the user's call, not later with its whole batch
        if params or tags or not self._plainly_valid(metrics):
            metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
            self._valid_keys.update(m.key for m in metrics)
        self._shipper.append(self, run_id, metrics, params, tags)
        operations = self._operations.get(run_id)
        if operations is None:
            operations = self._operations[run_id] = PendingOperations(self._shipper, run_id)
        return operations

    def _plainly_valid(self, metrics):
        """What MLflow's validation would accept, checked at a fraction of its cost: a name it
        accepted before, a float value, non-negative int timestamp, int step."""
        return all(m.key in self._valid_keys and type(m.value) is float and type(m.timestamp) is int
                   and m.timestamp >= 0 and type(m.step) is int for m in metrics)

    def flush_async_logging(self):
        self._shipper.flush(retry=True, warn=True)

    def end_async_logging(self):
        self._shipper.flush()

    def shut_down_async_logging(self):
        self._shipper.flush()

    # --- everything else sees what was logged before it ---

    def _call_endpoint(self, *args, **kwargs):
        self._shipper.flush()
        return super()._call_endpoint(*args, **kwargs)

    def update_run_info(self, run_id, run_status, end_time, run_name):
        if run_status in TERMINAL:
            self._shipper.flush(retry=True)
            unsent = self._shipper.unsent(run_id)
            if unsent:
                if run_status == RunStatus.FINISHED:
                    run_status = RunStatus.FAILED
                log.warning("MLflow run %s ends %s: %s", run_id, RunStatus.to_string(run_status), unsent)
        return super().update_run_info(run_id, run_status, end_time, run_name)

    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        """MLflow's request, read straight into Metric objects (MLflow's protobuf JSON parser
        costs ~25 us per point: a third of a second for a 10,000-step history)."""
        self._shipper.flush()
        endpoint, method = self._METHOD_TO_INFO[GetMetricHistory]
        params = {"run_id": run_id, "run_uuid": run_id, "metric_key": metric_key}
        if max_results is not None:
            params["max_results"] = max_results
        if page_token:
            params["page_token"] = page_token
        response = verify_rest_response(http_request(self.get_host_creds(), endpoint, method, params=params), endpoint)
        payload = response.json()
        history = [_metric_from_json(m) for m in payload.get("metrics", [])]
        return PagedList(history, payload.get("next_page_token") or None)

    def send_batch(self, payload):
        """One log-batch request (the shipper calls this, past the flush-first hook)."""
        endpoint, method = self._METHOD_TO_INFO[LogBatch]
        verify_rest_response(http_request(self.get_host_creds(), endpoint, method, json=payload), endpoint)


class PendingOperations(RunOperations):
    """What an asynchronous logging call returns: `wait()` sends the buffer and raises if any of
    the run's data could not be stored."""

    def __init__(self, shipper, run_id):
        super().__init__([])
        self._shipper, self._run_id = shipper, run_id

    def wait(self):
        from mlflow.exceptions import MlflowException

        self._shipper.flush(retry=True)
        unsent = self._shipper.unsent(self._run_id)
        if unsent:
            raise MlflowException(f"MLflow run {self._run_id}: {unsent}")


class Shipper:
    """The process's buffer of logged data and the thread that sends it."""

    _instance = None
    _instance_lock = threading.Lock()

    @classmethod
    def instance(cls):
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        self.pending = deque()  # (store, run_id, metrics, params, tags), appended by any thread
        self._queued = 0  # items appended since the last send; approximate, only decides when to wake
        self._failed = []  # entries the server refused, in logging order, sent again at a flush
        self._errors = {}  # run_id -> the server's last answer for the run's refused data
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._seconds = _buffer_seconds()
        atexit.register(self._flush_at_exit)
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def append(self, store, run_id, metrics, params, tags):
        self.pending.append((store, run_id, metrics, params, tags))
        if self._thread is None:
            self._start()
        self._queued += len(metrics) + len(params) + len(tags)
        if self._queued >= MAX_METRICS:  # a full request waiting: send it now, not at the timer
            self._wake.set()

    def _start(self):
        with self._instance_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aif-mlflow-shipper", daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            full = self._wake.wait(self._seconds)
            self._wake.clear()
            if self.pending:
                try:
                    # woken by a full batch: send whole batches only, the rest joins the next one
                    self._send(warn_now=True, whole_batches=full)
                except Exception:  # never let the thread die: flushes would still work, the timer not
                    log.exception("MLflow: the background sender failed")

    def flush(self, retry=False, warn=False):
        """Send everything buffered (and, with `retry`, what was refused before) before returning;
        a send already in flight finishes first (the lock), so nothing logged earlier is missed."""
        self._send(retry=retry)
        if warn and self._failed:
            for run_id in dict.fromkeys(entry[1] for entry in self._failed):
                log.warning("MLflow run %s: %s", run_id, self.unsent(run_id))

    def unsent(self, run_id):
        """A sentence on the run's data that the server refused; empty when there is none."""
        entries = [e for e in self._failed if e[1] == run_id]
        if not entries:
            return ""
        counts = [sum(len(e[i]) for e in entries) for i in (2, 3, 4)]
        what = ", ".join(f"{n} {kind}" for n, kind in zip(counts, ("metric points", "params", "tags")) if n)
        return (f"{what} could not be stored ({self._errors.get(run_id)}); they are kept in this "
                "process and sent again at the next mlflow.flush_async_logging()")

    def _send(self, retry=False, warn_now=False, whole_batches=False):
        with self._send_lock:  # one send at a time
            entries = self._take(whole_batches)
            if retry:
                entries, self._failed = self._failed + entries, []
            for (store, run_id), (metrics, params, tags) in _by_run(entries).items():
                self._send_run(store, run_id, metrics, params, tags, warn_now)

    def _take(self, whole_batches):
        """Pending entries to send now; with `whole_batches`, only enough to fill whole requests."""
        if not whole_batches:
            self._queued = 0
            return [self.pending.popleft() for _ in range(len(self.pending))]
        target = self._queued - self._queued % MAX_METRICS
        entries, items = [], 0
        while items < target and self.pending:
            entries.append(self.pending.popleft())
            items += sum(len(part) for part in entries[-1][2:])
        self._queued -= items
        return entries

    def _send_run(self, store, run_id, metrics, params, tags, warn_now):
        # params and tags in requests of their own: a refused tag must not take points with it
        batches = [([], p, t) for p, t in _param_tag_chunks(params, tags)]
        batches += [(metrics[i:i + MAX_METRICS], [], []) for i in range(0, len(metrics), MAX_METRICS)]
        for m, p, t in batches:
            try:
                store.send_batch(_batch_body(run_id, m, p, t))
            except Exception as err:  # kept, reported, sent again: never dropped
                self._failed.append((store, run_id, m, p, t))
                self._errors[run_id] = _error_text(err)
                if warn_now:
                    log.warning("MLflow run %s: %d metric points, %d params, %d tags not stored yet: %s",
                                run_id, len(m), len(p), len(t), self._errors[run_id])

    def _flush_at_exit(self):
        try:
            self.flush(retry=True, warn=True)
        except Exception as err:  # the interpreter is going; say what is lost
            log.warning("MLflow: buffered data could not be sent at exit: %s", err)

    def _forget_after_fork(self):
        # the parent sends its own buffer; a child sending it too would duplicate every point
        self.pending, self._queued, self._failed, self._errors = deque(), 0, [], {}
        self._send_lock, self._wake, self._thread = threading.Lock(), threading.Event(), None


def _by_run(entries):
    """Entries grouped per (store, run), in first-logged order."""
    runs = {}
    for store, run_id, metrics, params, tags in entries:
        group = runs.setdefault((store, run_id), ([], [], []))
        group[0].extend(metrics)
        group[1].extend(params)
        group[2].extend(tags)
    return runs


def _param_tag_chunks(params, tags):
    """Requests of params and tags: within MLflow's limits, and no key twice in one request (the
    server refuses duplicate param keys; a tag set twice keeps its last value)."""
    chunks, p, t = [], {}, {}
    for kind, item in [("p", x) for x in params] + [("t", x) for x in tags]:
        bucket = p if kind == "p" else t
        if item.key in bucket or len(bucket) >= MAX_PARAMS_OR_TAGS:
            chunks.append((list(p.values()), list(t.values())))
            p, t = {}, {}
            bucket = p if kind == "p" else t
        bucket[item.key] = item
    if p or t:
        chunks.append((list(p.values()), list(t.values())))
    return chunks


def _batch_body(run_id, metrics=(), params=(), tags=()):
    """A LogBatch request's JSON, built directly (MLflow's protobuf JSON costs ~10x more)."""
    body = {"run_id": run_id}
    if metrics:
        body["metrics"] = [_metric_json(m) for m in metrics]
    if params:
        body["params"] = [{"key": p.key, "value": p.value} for p in params]
    if tags:
        body["tags"] = [{"key": t.key, "value": t.value} for t in tags]
    return body


def _metric_json(metric):
    value = metric.value
    if not math.isfinite(value):  # protobuf JSON spells these as strings
        value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    item = {"key": metric.key, "value": value, "timestamp": metric.timestamp, "step": metric.step}
    for field in ("model_id", "dataset_name", "dataset_digest"):
        if getattr(metric, field):
            item[field] = getattr(metric, field)
    return item


def _metric_from_json(item):
    """A Metric from its protobuf JSON, as Metric.from_proto reads the message."""
    return Metric(item.get("key", ""), float(item.get("value", 0.0)), int(item.get("timestamp", 0)),
                  int(item.get("step", 0)), model_id=item.get("model_id") or None,
                  dataset_name=item.get("dataset_name") or None, dataset_digest=item.get("dataset_digest") or None,
                  run_id=item.get("run_id") or None)


def _error_text(err):
    return getattr(err, "message", None) or str(err)


def _buffer_seconds():
    try:
        return max(0.05, float(os.environ.get(BUFFER_SECONDS_ENV) or 1))
    except ValueError:
        return 1.0

