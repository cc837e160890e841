"""Fixtures for the benchmark suite's tests (and the comparison tests that read its runs).

Import what you need in a test module: `from bench_fixtures import mlflow_server  # noqa: F401`.
`mlflow_server` is a real `mlflow server` (SQLite, proxied artifacts) on a free port in a temp
dir, stopped at the end of the session; `tiny_config` is a benchmark config small enough for tests.
"""

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
import compare_fixtures  # noqa: E402  (the one throwaway-MLflow-server helper, shared with perf/)

REFERENCE_MODELS = Path(__file__).resolve().parent.parent / "benchmarks" / "models"


@pytest.fixture(scope="session")
def mlflow_server():
    """Tracking URI of a real MLflow server for this test session."""
    with tempfile.TemporaryDirectory(prefix="aif-bench-mlflow-") as workdir, compare_fixtures.mlflow_server(workdir) as uri:
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
