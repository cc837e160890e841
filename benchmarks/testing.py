"""Test helpers of the benchmark suite, shared by tests/ and perf/ (import them; never edit sys.path).

- `mlflow_server(workdir)`: a real `mlflow server` (SQLite + served artifacts) on a free port,
  stopped (process group) on exit; tests/bench_fixtures.py wraps it as the `mlflow_server` fixture.
- `tiny_config(results_dir, **sections)`: a benchmark config of the shipped digits MLP, small
  enough for a test (`REFERENCE_MODELS` is where the shipped models are).
- `log_benchmark(...)`: writes one benchmark laid out as docs/mlflow-layout.md says (parent
  run, one child per scenario, an Accuracy child with predictions.npz), from given data.
- `measure_sklearn_model(...)`: real predictions and real per-query latencies of a scikit-learn
  classifier on the bundled digits dataset, to feed `log_benchmark` without the suite's own runs.
- `reference_language()`: the reference LM, untrained LM, encoder and their data files, built on
  first use into the cache (about half a minute) and reused after; `tiny_lm_config(...)` a
  benchmark config of that LM small enough for a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from aifactory.common.net import free_port
from aifactory.common.procutil import stop_process_group

from .fingerprint import cpu_model
from .layout import (ACCURACY, KIND_BENCHMARK, KIND_CHILD, LATENCY_PERCENTILES, OFFLINE, SINGLE_STREAM, Artifacts,
                     Metrics, Tags)
from .reference import MODELS_DIR as REFERENCE_MODELS

HARDWARE = f"cpu:{cpu_model()}"  # the layout's fingerprint of this machine


@contextlib.contextmanager
def mlflow_server(workdir, startup_timeout=180):
    """Yield the tracking URI of a fresh MLflow server under `workdir`; always stop it."""
    import requests

    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(os.path.join(workdir, "mlflow-server.log"), "wb")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
         "--serve-artifacts", "--artifacts-destination", os.path.join(workdir, "artifacts")],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # the GenAI job runner (four huey processes) is not used by these servers
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log.name}")
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within {startup_timeout}s; see {log.name}")
            time.sleep(0.3)
        yield uri
    finally:
        stop_process_group(proc, timeout=5)  # a throwaway server: no need for its slow graceful shutdown
        log.close()


def tiny_config(results_dir, **sections):
    """A quick-profile config of the digits MLP, with durations cut to fractions of a second."""
    config = {
        "model": {"path": str(REFERENCE_MODELS / "digits_mlp.onnx")},
        "data": {"source": "sklearn:digits"},
        "backends": [{"kind": "onnxruntime", "threads": 1}],
        "scenario": {"profile": "quick", "min_duration_s": 0.2, "min_query_count": 64, "warmup_s": 0.05,
                     "scenarios": [SINGLE_STREAM]},
        "accuracy": {"bootstrap_resamples": 200},
        "mlflow": {"enabled": False},
        "results_dir": str(results_dir),
    }
    return _with_sections(config, sections)


@dataclass
class ModelResult:
    """What a benchmark measured for one model under one backend (data, not summaries)."""

    model: str
    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray
    latencies_s: dict  # scenario -> per-query latencies (s)
    throughput: dict = field(default_factory=dict)  # scenario -> samples/s
    extra_metrics: dict = field(default_factory=dict)  # scenario -> {metric: value}
    robustness: dict | None = None
    backend: str = "sklearn:float64"
    precision: str = "fp64"


def _bootstrap_ci(correct, seed=0):
    from scipy.stats import bootstrap

    res = bootstrap((correct.astype(float),), np.mean, n_resamples=1000, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def accuracy_metrics(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    metrics = {
        Metrics.ACCURACY: accuracy_score(y_true, y_pred),
        Metrics.F1_MACRO: f1_score(y_true, y_pred, average="macro"),
        Metrics.PRECISION_MACRO: precision_score(y_true, y_pred, average="macro", zero_division=0),
        Metrics.RECALL_MACRO: recall_score(y_true, y_pred, average="macro", zero_division=0),
    }
    low, high = _bootstrap_ci(np.asarray(y_true) == np.asarray(y_pred))
    metrics[Metrics.ci_low(Metrics.ACCURACY)], metrics[Metrics.ci_high(Metrics.ACCURACY)] = low, high
    return {k: float(v) for k, v in metrics.items()}


def latency_metrics(latencies_s) -> dict:
    ms = np.asarray(latencies_s) * 1e3
    out = {Metrics.latency(p): float(np.percentile(ms, int(p[1:]))) for p in LATENCY_PERCENTILES}
    out.update({Metrics.LATENCY_MEAN: float(ms.mean()), Metrics.LATENCY_MAX: float(ms.max())})
    return out


def _log_arrays(client, run_id, name, save, tmp):
    path = os.path.join(tmp, name)
    save(path)
    client.log_artifact(run_id, path)


def log_benchmark(client, experiment_id, result: ModelResult, *, dataset="sklearn:digits",
                  hardware=None, command=None, with_artifacts=True, reference: ModelResult | None = None,
                  parent_id=None):
    """Log one benchmark as docs/mlflow-layout.md lays it out; returns the parent run id.

    With `parent_id` (and `reference`, the first backend's result) it adds another backend's
    children to an existing benchmark instead.
    """
    from mlflow.entities import Metric, Param

    hardware = hardware or HARDWARE
    common = {Tags.MODEL: result.model, Tags.DATASET: dataset, Tags.TASK: "classification",
              Tags.HARDWARE: hardware, Tags.ENVIRONMENT: "test"}
    command = command or f"aif bench run --model {result.model} --dataset {dataset}"
    now = int(time.time() * 1000)
    acc = accuracy_metrics(result.y_true, result.y_pred)
    if reference is not None:
        acc[Metrics.AGREEMENT_TOP1] = float(np.mean(reference.y_pred == result.y_pred))
        acc[Metrics.AGREEMENT_MAX_ABS_DIFF] = float(np.max(np.abs(reference.scores - result.scores)))

    pid = parent_id
    if pid is None:
        parent = client.create_run(experiment_id, run_name=result.model,
                                   tags={**common, Tags.KIND: KIND_BENCHMARK, Tags.COMMAND: command})
        pid = parent.info.run_id
        client.log_batch(pid, metrics=[Metric(k, v, now, 0) for k, v in acc.items()],
                         params=[Param("model.name", result.model), Param("dataset.name", dataset)])
    child_base = {**common, Tags.KIND: KIND_CHILD, Tags.BACKEND: result.backend,
                  Tags.PRECISION: result.precision, Tags.PARENT_RUN_ID: pid}
    with tempfile.TemporaryDirectory() as tmp:
        acc_run = client.create_run(experiment_id, run_name=f"{result.model}/{result.backend}/{ACCURACY}",
                                    tags={**child_base, Tags.SCENARIO: ACCURACY})
        acc_metrics = dict(acc)
        if result.robustness:
            acc_metrics[Metrics.ROBUSTNESS_MAX_DROP] = max(
                lv["accuracy_drop"] for lv in result.robustness["levels"])
        client.log_batch(acc_run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in acc_metrics.items()])
        if with_artifacts:
            _log_arrays(client, acc_run.info.run_id, Artifacts.PREDICTIONS, lambda p: np.savez_compressed(
                p, y_true=result.y_true, y_pred=result.y_pred, scores=result.scores.astype(np.float32),
                sample_index=np.arange(len(result.y_pred))), tmp)
            if result.robustness:
                _log_arrays(client, acc_run.info.run_id, Artifacts.ROBUSTNESS, lambda p: open(p, "w").write(
                    json.dumps(result.robustness)), tmp)
        client.set_terminated(acc_run.info.run_id)
        children = {}
        for scenario, lat in result.latencies_s.items():
            run = client.create_run(experiment_id, run_name=f"{result.model}/{result.backend}/{scenario}",
                                    tags={**child_base, Tags.SCENARIO: scenario, Tags.RESULT_VALID: "VALID"})
            metrics = latency_metrics(lat)
            metrics[Metrics.THROUGHPUT] = result.throughput.get(scenario, len(lat) / float(np.sum(lat)))
            metrics.update(result.extra_metrics.get(scenario, {}))
            client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            if with_artifacts:
                _log_arrays(client, run.info.run_id, Artifacts.LATENCIES,
                            lambda p, lat=lat: np.save(p, np.asarray(lat, dtype=np.float64)), tmp)
            client.set_terminated(run.info.run_id)
            children[scenario] = metrics
        if with_artifacts and parent_id is None:
            results = {"model": result.model, "command": command,
                       "fingerprint": {"hardware": hardware, "python": platform.python_version(),
                                       "platform": platform.platform(), "numpy": np.__version__},
                       "accuracy": acc, "scenarios": children}
            _log_arrays(client, pid, Artifacts.RESULTS, lambda p: open(p, "w").write(json.dumps(results)), tmp)
    if parent_id is None:
        client.set_terminated(pid)
    return pid


def _rss_mb():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def digits_split(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)


def measure_sklearn_model(name, estimator, split, *, queries=200, noise_levels=(0.1, 0.3, 0.6),
                          backend="sklearn:float64", dtype=np.float64, fit=True) -> ModelResult:
    """Fit, predict the test split, and time single-sample queries (SingleStream) and a batch (Offline).

    `dtype` casts the inputs, as a second "backend" of lower precision would.
    """
    x_train, x_test, y_train, y_test = split
    x_test = x_test.astype(dtype)
    if fit:
        estimator.fit(x_train, y_train)
    scores = estimator.predict_proba(x_test)
    y_pred = estimator.classes_[np.argmax(scores, axis=1)]
    single = []
    for i in range(queries):
        sample = x_test[i % len(x_test)][None, :]
        t0 = time.perf_counter()
        estimator.predict(sample)
        single.append(time.perf_counter() - t0)
    # Offline as LoadGen sees it: every query issued at t0, each done when its batch is done
    offline_lat = np.empty(len(x_test))
    t0 = time.perf_counter()
    for start in range(0, len(x_test), 32):
        estimator.predict(x_test[start:start + 32])
        offline_lat[start:start + 32] = time.perf_counter() - t0
    offline_s = time.perf_counter() - t0
    clean = float(np.mean(y_pred == y_test))
    std = x_train.std(axis=0)
    rng = np.random.default_rng(0)
    levels = []
    for level in noise_levels:
        noisy = x_test + rng.normal(size=x_test.shape) * std * level
        acc = float(np.mean(estimator.predict(noisy) == y_test))
        levels.append({"level": level, "accuracy": acc, "accuracy_drop": clean - acc})
    return ModelResult(
        model=name, y_true=y_test, y_pred=y_pred, scores=scores,
        latencies_s={SINGLE_STREAM: np.array(single), OFFLINE: offline_lat},
        throughput={OFFLINE: len(x_test) / offline_s},
        extra_metrics={s: {Metrics.PEAK_HOST_MEM: _rss_mb()} for s in (SINGLE_STREAM, OFFLINE)},
        robustness={"perturbation": "gaussian_noise", "relative_to": "feature_std", "levels": levels},
        backend=backend, precision="fp64" if dtype == np.float64 else "fp32",
    )


def reference_language():
    """Paths of the reference language models and data (reference/language.py), built once per cache."""
    from .reference.language import ensure_built

    return ensure_built()


def tiny_lm_config(results_dir, model=None, **sections):
    """A quick config of the reference LM: a few prompts, short tests, one thread, MLflow off."""
    paths = reference_language()
    config = {
        "model": {"path": str(model or paths["lm"])},
        "data": {"source": str(paths["prompts"]), "limit": 16},
        "backends": [{"kind": "transformers", "threads": 1}],
        "scenario": {"profile": "quick", "min_duration_s": 0.2, "min_query_count": 8, "warmup_s": 0.05,
                     "scenarios": [SINGLE_STREAM]},
        "generation": {"max_batch_size": 4},
        "accuracy": {"bootstrap_resamples": 200},
        "mlflow": {"enabled": False},
        "results_dir": str(results_dir),
    }
    return _with_sections(config, sections)


def _with_sections(config, sections):
    """`config` with each section merged over its own (a dict) or replacing it (anything else)."""
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
