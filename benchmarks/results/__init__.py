"""Where results go: the local results directory always (local.py), MLflow when reachable (mlflow.py).

A new destination is a `base.Reporter` subclass; `run_benchmark(config, reporter=...)` takes it.
"""

from ..errors import MLflowUnavailable, ServerUnreachable
from .base import Reporter
from .local import LocalWriter, pending_uploads, read_marker, write_marker
from .mlflow import MLflowReporter, probe, upload

__all__ = ["LocalWriter", "MLflowReporter", "MLflowUnavailable", "Reporter", "ServerUnreachable", "pending_uploads",
           "probe", "read_marker", "upload", "write_marker"]
