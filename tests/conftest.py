"""Shared test helpers: free ports, CI rules for tests that need root or a browser."""

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(condition, reason):
    """Skip with `reason` outside CI; in CI a missing prerequisite is a failure, not a skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root():
    require(os.geteuid() == 0, "needs root for the Slurm mini-cluster: run `sudo make test`")


def require_binary(name, package):
    require(shutil.which(name) is not None, f"{name} not found: install Debian's {package} (make sysdeps)")


@pytest.fixture
def port():
    return free_port()


# the real platform (hub + proxy + MLflow service) for every test that asks for it
from platform_fixtures import platform, platform_factory  # noqa: E402,F401

# a real MLflow server (SQLite, served artifacts) shared by the benchmark and comparison tests
from bench_fixtures import mlflow_server  # noqa: E402,F401
