"""Shared test helpers: free ports, CI rules for tests that need root or a browser."""

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def mini_cluster(prefix, users=(), spec=None):
    """The Slurm mini-cluster in a fresh folder, with these real Unix users; all removed after."""
    from aifactory.hub.cluster import MiniCluster

    require_root()
    for binary, package in (("slurmctld", "slurmctld"), ("munged", "munge"), ("node", "nodejs")):
        require_binary(binary, package)
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)  # users' jobs write their output below it
    mini = MiniCluster(state, spec)
    try:
        mini.up()
        for user in users:
            mini.add_user(user)
        yield mini
    finally:
        mini.down()
        for user in users:
            MiniCluster.remove_user(user)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def port():
    return free_port()


# the real platform (hub + proxy + MLflow service) for every test that asks for it
from platform_fixtures import platform, platform_factory  # noqa: E402,F401

# a real MLflow server (SQLite, served artifacts) shared by the benchmark and comparison tests
from bench_fixtures import mlflow_server  # noqa: E402,F401

# the reference language models (built once per cache) for the generative-AI tests
from genai_fixtures import reference_lm  # noqa: E402,F401
