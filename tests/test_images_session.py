"""A real session on the Slurm mini-cluster runs inside the default spec's venv, chosen in the form.

The hub reaches the session through the proxy, and the example notebook
(aifactory.images/notebooks/environment-check.ipynb) runs in the environment's kernel: it imports
torch, onnxruntime, mlflow and aifactory.extensions.
"""

import asyncio
from importlib import resources

import nbformat
import psutil
import pytest
import requests

from aifactory.hub.testing.kernel import execute
from aifactory.hub.testing.spawner_lab import SpawnerLab
from aifactory.images import spawner_environments
from aifactory.hub.testing.cluster import mini_cluster
from images_fixtures import default_venv  # noqa: F401

pytestmark = pytest.mark.slurm

USER = "aif-envuser"


@pytest.fixture(scope="module")
def cluster():
    with mini_cluster("aif-images-cluster-", [USER]) as mini:
        yield mini


@pytest.fixture(scope="module")
def hub(cluster, default_venv, tmp_path_factory):
    spec, path, _ = default_venv
    config = f"""
c.AIFSlurmSpawner.startup_poll_interval = 0.2
c.AIFSlurmSpawner.start_timeout = 120
c.AIFSlurmSpawner.environments = {spawner_environments(path.parent)!r}
c.AIFSlurmSpawner.profiles = [
    {{"name": "cpu", "partition": "cpu", "cpus": 1, "memory_gb": 2, "environments": [{spec.name!r}]}},
]
"""
    lab = SpawnerLab(tmp_path_factory.mktemp("hub"), extra_config=config, env=cluster.env())
    try:
        lab.start()
        lab.add_user(USER)
        lab.user_token_value = lab.user_token(USER)
        yield lab
    finally:
        lab.stop()


def server_process():
    for proc in psutil.process_iter(["username", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["username"] == USER and any("jupyterhub-singleuser" in part for part in cmdline):
            return proc
    raise AssertionError(f"no jupyterhub-singleuser process of {USER}")


def test_form_offers_the_environment(hub, default_venv):
    spec, _, _ = default_venv
    session = requests.Session()
    session.get(f"{hub.url}/hub/login")
    session.post(f"{hub.url}/hub/login", data={"username": USER, "password": hub.password,
                                               "_xsrf": session.cookies.get("_xsrf")})
    form = session.get(f"{hub.url}/hub/spawn").text
    assert 'name="notebook_env@cpu"' in form and f'value="{spec.name}"' in form
    assert f"{spec.display_name} ({spec.version})" in form


def test_unknown_environment_is_refused_before_submission(hub, cluster):
    response = hub.api("POST", f"/users/{USER}/server", json={"profile": "cpu", "notebook_env": "nope"})
    assert response.status_code == 400 and "notebook_env: 'nope' is not allowed" in response.json()["message"]
    assert cluster.run(["squeue", "-h", "-u", USER, "-o", "%i"]).stdout.split() == []


async def test_session_runs_inside_the_venv_and_the_example_notebook_imports_everything(hub, default_venv):
    spec, path, _ = default_venv
    response = hub.api("POST", f"/users/{USER}/server", json={"profile": "cpu", "notebook_env": spec.name}, timeout=60)
    assert response.status_code in (201, 202), response.text
    hub.wait_ready(USER, timeout=120)
    headers = {"Authorization": f"token {hub.user_token_value}"}
    assert requests.get(f"{hub.url}/user/{USER}/api/status", headers=headers, timeout=10).status_code == 200

    proc = server_process()
    assert proc.cmdline()[0].startswith(str(path / "bin")), proc.cmdline()
    env = proc.environ()
    assert (env["AIF_ENVIRONMENT"], env["AIF_ENVIRONMENT_VERSION"]) == (spec.name, spec.version)
    assert env["PATH"].startswith(f"{path}/bin:")

    kernel = requests.post(f"{hub.url}/user/{USER}/api/kernels", json={"name": spec.kernel.name},
                           headers=headers, timeout=60)
    assert kernel.status_code == 201, kernel.text
    notebook = nbformat.reads((resources.files("aifactory.images") / "notebooks" / "environment-check.ipynb")
                              .read_text(), as_version=4)
    server_url, kernel_id = f"{hub.url}/user/{USER}", kernel.json()["id"]
    output = ""
    for cell in notebook.cells:
        if cell.cell_type == "code":  # waits for the kernel's idle status: outputs can trail the reply
            output += await asyncio.wait_for(execute(server_url, kernel_id, headers, cell.source), 180)
    assert f"environment {spec.name} {spec.version}" in output, output
    assert f"python {path}" in output and f"torch {spec.packages['torch']}" in output, output
    assert f"onnxruntime {spec.packages['onnxruntime']}" in output and f"mlflow {spec.packages['mlflow']}" in output

