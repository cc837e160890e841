"""Fixtures for the benchmark suite's tests (and the comparison tests that read its runs).

Import what you need in a test module: `from bench_fixtures import mlflow_server  # noqa: F401`.
`mlflow_server` is a real `mlflow server` (SQLite, proxied artifacts) on a free port in a temp
dir, stopped at the end of the session; `tiny_config` is a benchmark config small enough for tests.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import free_port

REFERENCE_MODELS = Path(__file__).resolve().parent.parent / "benchmarks" / "models"


@contextlib.contextmanager
def running_mlflow_server(workdir, startup_timeout=120):
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log_path = Path(workdir) / "mlflow-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db", "--serve-artifacts",
             "--artifacts-destination", f"{workdir}/artifacts"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{uri}/health", timeout=2).ok:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not up after {startup_timeout}s: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
            yield uri
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)  # a throwaway server: no need to wait out keep-alive connections
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def mlflow_server():
    """Tracking URI of a real MLflow server for this test session."""
    with tempfile.TemporaryDirectory(prefix="aif-bench-mlflow-") as workdir, running_mlflow_server(workdir) as uri:
        yield uri


def tiny_config(results_dir, **sections):
    """A quick-profile config of the digits MLP, with durations cut to fractions of a second."""
    config = {
        "model": {"path": str(REFERENCE_MODELS / "digits_mlp.onnx")},
        "data": {"source": "sklearn:digits"},
        "backends": [{"kind": "onnxruntime", "threads": 1}],
        "scenario": {"profile": "quick", "min_duration_s": 0.2, "min_query_count": 64, "warmup_s": 0.05,
                     "scenarios": ["SingleStream"]},
        "accuracy": {"bootstrap_resamples": 200},
        "mlflow": {"enabled": False},
        "results_dir": str(results_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
