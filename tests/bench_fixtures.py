"""Pytest fixtures of the benchmark suite's tests (and of the comparison tests that read its runs).

`mlflow_server` is a real `mlflow server` (SQLite, proxied artifacts) on a free port in a temp
dir, stopped at the end of the session (conftest.py makes it available to every test). Helpers
that perf/ scripts use as well (`tiny_config`, `REFERENCE_MODELS`, `log_benchmark`, ...) live in
the importable module `aifactory.benchmarks.testing`.
"""

import tempfile

import pytest

from aifactory.benchmarks import testing


@pytest.fixture(scope="session")
def mlflow_server():
    """Tracking URI of a real MLflow server for this test session."""
    with tempfile.TemporaryDirectory(prefix="aif-bench-mlflow-") as workdir, testing.mlflow_server(workdir) as uri:
        yield uri
