"""Fixtures of the serving tests: one real vLLM (CPU build) endpoint per test session.

The engine takes 35-100 s to start on 2 cores, so one endpoint, started by user A with `aif serve
start` on the Slurm mini-cluster and reached through one real platform, serves every test of
tests/test_serve.py; the last test stops it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory.hub.testing.ci import require
from aifactory.hub.testing.cluster import mini_cluster
from aifactory.hub.testing.platform import start_platform, unique_user

ROOT = Path(__file__).resolve().parents[1]
AIF = Path(sys.prefix) / "bin" / "aif"
ENGINE_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
IDLE = "idle"  # the second endpoint: it gets no requests and is stopped by the hub's idle stop


@dataclass
class Served:
    cluster: object
    platform: object
    owner: str
    member: str
    other: str
    group: str
    tokens: dict
    model_dir: Path
    passwords: dict
    name: str = "tiny"

    def aif(self, user, *args, check=True, timeout=600):
        """`aif ARGS` as Unix user `user`, as they would run it on a login node."""
        env = {"PATH": f"{Path(sys.prefix) / 'bin'}:/usr/bin:/bin", **self.cluster.env(),
               "AIF_SERVE_ENGINE_PYTHON": str(ENGINE_PYTHON),
               # as in a session: each endpoint becomes a run in the user's MLflow, through the hub
               "MLFLOW_TRACKING_URI": self.platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": self.tokens[user]}
        done = subprocess.run(["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()),
                               str(AIF), *args], capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and done.returncode != 0:
            raise AssertionError(f"aif {' '.join(args)} as {user} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    @property
    def url(self):
        return f"{self.platform.url}/services/serve/{self.owner}/{self.name}/v1"


def readable_copy(source, parent):
    """The model copied where the endpoint's user can read it (the reference cache is root's)."""
    target = Path(parent) / source.name
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="session")
def served(reference_lm):
    require(ENGINE_PYTHON.exists(), f"the vLLM CPU engine is not installed at {ENGINE_PYTHON}: run `make engines`")
    owner, member, other = unique_user("sa"), unique_user("sm"), unique_user("so")
    group = unique_user("team")
    models = Path(tempfile.mkdtemp(prefix="aif-serve-models-"))
    models.chmod(0o755)
    with mini_cluster("aif-serve-", users=(owner, member, other)) as cluster:
        platform = start_platform(Path(tempfile.mkdtemp(prefix="aif-serve-platform-")), env=cluster.env())
        try:
            passwords = {user: platform.add_user(user, groups=(group,) if user == member else ())
                         for user in (owner, member, other)}
            tokens = {u: platform.user_token(u) for u in (owner, member, other)}
            s = Served(cluster, platform, owner, member, other, group, tokens,
                       readable_copy(Path(reference_lm["lm"]), models), passwords)
            yield s
            for name in (s.name, IDLE):
                s.aif(owner, "serve", "stop", name, check=False)
        finally:
            platform.stop()
            shutil.rmtree(models, ignore_errors=True)
