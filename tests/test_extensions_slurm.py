"""/aif/session on a Slurm session: real hub + mini-cluster + a real Unix user's job.

Its own small cluster and hub (module scope); the integrator may fold this test into
tests/test_spawner_slurm.py to share that module's cluster.
"""

import time

import pytest
import requests
from aifactory.hub.testing.cluster import mini_cluster

from aifactory.hub.testing.spawner_lab import SpawnerLab

pytestmark = pytest.mark.slurm

USER = "aif-extuser"
HUB_CONFIG = """
c.AIFSlurmSpawner.startup_poll_interval = 0.2
c.AIFSlurmSpawner.start_timeout = 120
c.AIFSlurmSpawner.profiles = [
    {"name": "gpu-1", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 1, "max_gpus": 2,
     "cpus": 1, "memory_gb": 1, "hours": 1, "max_hours": 2},
]
"""


@pytest.fixture(scope="module")
def slurm_hub(tmp_path_factory):
    with mini_cluster("aif-ext-cluster-", [USER]) as cluster:
        lab = SpawnerLab(tmp_path_factory.mktemp("ext-hub"), extra_config=HUB_CONFIG, env=cluster.env())
        try:
            lab.start()
            lab.add_user(USER)
            yield lab, cluster
        finally:
            lab.stop()


def test_session_endpoint_returns_the_slurm_fields(slurm_hub):
    lab, cluster = slurm_hub
    token = lab.user_token(USER)
    response = lab.api("POST", f"/users/{USER}/server", json={"profile": "gpu-1", "gpus": 2}, timeout=60)
    assert response.status_code in (201, 202), response.text
    url = f"{lab.url}/user/{USER}/aif/session"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=10)
        if answer.status_code == 200:
            break
        time.sleep(0.5)
    assert answer.status_code == 200, f"{answer.status_code}; hub log:\n{lab.log_text()[-2000:]}"
    info = answer.json()
    job_ids = cluster.run(["squeue", "-h", "-u", USER, "-o", "%i"]).stdout.split()
    assert job_ids == [info["slurm_job_id"]]
    assert info["node"] == cluster.node_name and info["user"] == USER
    assert len(info["gpus"]) == 2 and info["gpu_stats"] == []  # simulated GPUs: no driver to ask
    assert 0 < info["walltime_remaining_s"] <= 3600
    assert requests.get(url, allow_redirects=False, timeout=10).status_code in (302, 403)
