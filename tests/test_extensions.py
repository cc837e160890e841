"""Notebook extensions: panels, worker jobs, the example notebooks and the session endpoint.

The platform (real hub + proxy + MLflow service) is the session-scoped fixture shared with the
other platform tests; benchmarks run in real worker processes with the quick profile shortened.
"""

import datetime as dt
import time

import nbclient
import nbformat
import pytest
import requests
from aifactory.hub.testing.platform import unique_user

from aifactory.benchmarks.reference import MODELS_DIR
from aifactory.extensions.panels import BenchmarkPanel, ComparePanel, render_session
from aifactory.extensions.server import NOTEBOOKS, offer_examples
from aifactory.extensions.session import session_info

SHORT = {"min_duration_s": 0.3, "max_duration_s": 1.0}
CPU_NOTEBOOK = NOTEBOOKS / "digits_prototype_benchmark_compare.ipynb"


# --- session information -------------------------------------------------------------------

def test_session_info_reads_the_slurm_session_environment():
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    env = {"AIF_SLURM_JOB_ID": "42", "AIF_SLURM_NODE": "gpu-node-3", "AIF_GPUS": "1,3",
           "AIF_WALLTIME_END": "2026-01-01T13:30:00Z", "JUPYTERHUB_USER": "ada", "JUPYTERHUB_BASE_URL": "/",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:8000/services/mlflow"}
    info = session_info(env, now=now)
    assert (info["slurm_job_id"], info["node"], info["gpus"]) == ("42", "gpu-node-3", ["1", "3"])
    assert info["walltime_remaining_s"] == 5400
    assert info["mlflow_url"] == "/services/mlflow/" and info["hub_control_panel_url"] == "/hub/home"
    page = render_session(info)
    assert "gpu-node-3" in page and "1 h 30 min" in page


def test_session_info_outside_slurm_has_empty_fields():
    info = session_info({"JUPYTERHUB_USER": "ada"})
    assert info["slurm_job_id"] is None and info["gpus"] == [] and info["walltime_remaining_s"] is None


def test_examples_are_offered_once_and_user_edits_are_kept(tmp_path):
    copied = offer_examples(tmp_path)
    assert {p.name for p in copied} == {p.name for p in NOTEBOOKS.glob("*.ipynb")} and copied
    edited = tmp_path / "examples" / CPU_NOTEBOOK.name
    edited.write_text("my edits")
    assert offer_examples(tmp_path) == []
    assert edited.read_text() == "my edits"


# --- the benchmark panel: bad input is shown in place ----------------------------------------

def _panel(home, **kwargs):
    kwargs.setdefault("scenarios", ["SingleStream"])
    return BenchmarkPanel(home=home, scenario=SHORT, **kwargs)


def test_bad_inputs_show_errors_in_the_panel_and_leave_nothing_behind(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model at all")
    empty = _panel(tmp_path, model="")
    empty.run()
    assert "model: pick a model file" in empty.message.value and empty.job is None
    broken = _panel(tmp_path, model="broken.onnx")
    mismatch = _panel(tmp_path, model=str(MODELS_DIR / "digits_mlp.onnx"), data="sklearn:breast_cancer")
    unreachable = _panel(tmp_path, model=str(MODELS_DIR / "digits_mlp.onnx"), tracking_uri="http://127.0.0.1:9")
    jobs = [p.run() for p in (broken, mismatch, unreachable)]  # concurrently: each is its own process
    for job in jobs:
        job.wait(300)
    assert broken.job.state.status == "FAILED"
    assert "broken.onnx is not a valid ONNX model" in broken.message.value
    assert mismatch.job.state.status == "FAILED"
    assert "aif-error" in mismatch.message.value and "shape" in mismatch.message.value
    assert not broken.run_button.disabled and broken.cancel_button.disabled
    # MLflow unreachable: the benchmark still runs, results are kept locally and the panel says so
    assert unreachable.job.state.status == "FINISHED", unreachable.message.value
    assert "unreachable" in unreachable.message.value and "aif bench upload" in unreachable.message.value
    assert "aif-results-table" in unreachable.table.value and unreachable.histogram.value[:4] == b"\x89PNG"
    kept = list((tmp_path / "aif-results").iterdir())
    assert len(kept) == 1 and (kept[0] / "results.json").exists()  # failed runs left no directory


def test_compare_panel_with_unreachable_mlflow_shows_the_error():
    panel = ComparePanel(tracking_uri="http://127.0.0.1:9")
    assert "cannot list runs" in panel.message.value
    panel.compare()
    assert "aif-error" in panel.message.value and panel.leaderboard.value == ""


# --- with the platform's MLflow ----------------------------------------------------------------

@pytest.fixture
def mlflow_user(platform, monkeypatch):
    user = unique_user("ext")
    platform.add_user(user)
    token = platform.user_token(user)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform.mlflow_url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("JUPYTERHUB_USER", user)
    return user, token


def _mlflow_run(platform, token, run_id):
    response = requests.get(f"{platform.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id},
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)
    response.raise_for_status()
    return response.json()["run"]


def test_cancel_stops_the_worker_and_leaves_no_run_running(platform, mlflow_user, tmp_path):
    user, token = mlflow_user
    panel = BenchmarkPanel(home=tmp_path, model=str(MODELS_DIR / "digits_mlp.onnx"), scenarios=["SingleStream"],
                           profile="full", experiment=f"{user}/cancel")
    job = panel.run()
    deadline = time.monotonic() + 240
    while "SingleStream" not in job.state.step and job.running and time.monotonic() < deadline:
        time.sleep(0.2)  # cancel while LoadGen runs (a full-profile scenario lasts 10 minutes)
    assert job.running and job.state.mlflow_run_id, job.state
    assert str(job.state.mlflow_run_id) in panel.link.value
    started = time.monotonic()
    panel.cancel_button.click()
    job.wait(60)
    assert job.state.status == "CANCELLED" and time.monotonic() - started < 10
    assert job.proc.returncode == 130  # the worker ended it, not the SIGKILL fallback
    assert _mlflow_run(platform, token, job.state.mlflow_run_id)["info"]["status"] == "KILLED"
    assert not list((tmp_path / "aif-results").iterdir())  # no partial results
    assert "cancelled" in panel.message.value and not panel.run_button.disabled


def _widget_values(nb):
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [model["state"].get("value") for model in state.values()]


def test_example_notebook_runs_top_to_bottom_with_mlflow(platform, mlflow_user, tmp_path):
    nb = nbformat.read(CPU_NOTEBOOK, as_version=4)
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"example notebook: {time.monotonic() - started:.0f} s")
    values = [v for v in _widget_values(nb) if isinstance(v, str)]
    assert sum("aif-results-table" in v for v in values) == 2  # %%aif_bench and the panel
    assert any("aif-leaderboard" in v and "digits_cnn" in v and "digits_mlp_prototype" in v for v in values)
    assert any("aif-mlflow-link" in v for v in values)
    assert not any("aif-error" in v for v in values)
    # the two benchmarks are FINISHED runs in the user's experiment
    namespace = {c.source.split("\n")[0]: c for c in nb.cells if c.cell_type == "code"}
    status = next(c for k, c in namespace.items() if k.startswith("panel.run"))
    assert "'FINISHED'" in status.outputs[-1]["data"]["text/plain"]
    assert (tmp_path / "aif-models" / "digits_mlp_prototype.pt").exists()


# --- the session endpoint through the hub ------------------------------------------------------

def test_session_endpoint_needs_the_users_auth_and_examples_are_offered(platform):
    user = unique_user("sess")
    platform.add_user(user)
    token = platform.user_token(user)
    platform.api("POST", f"/users/{user}/server").raise_for_status()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            model = platform.api("GET", f"/users/{user}").json()
            if model["server"] and not model["pending"]:
                break
            time.sleep(0.5)
        url = f"{platform.url}/user/{user}/aif/session"
        response = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=30)
        assert response.headers.get("Content-Type", "").startswith("application/json"), response.text[:500]
        info = response.json()
        assert info["user"] == user and info["slurm_job_id"] is None
        assert info["mlflow_url"] == "/services/mlflow/" and info["hub_control_panel_url"].endswith("/hub/home")
        anonymous = requests.get(url, allow_redirects=False, timeout=30)
        assert anonymous.status_code in (302, 403) and "slurm_job_id" not in anonymous.text
        other = unique_user("other")
        platform.add_user(other)
        foreign = requests.get(url, headers={"Authorization": f"token {platform.user_token(other)}"},
                               allow_redirects=False, timeout=30)
        assert foreign.status_code in (302, 403, 404) and "slurm_job_id" not in foreign.text
        listing = requests.get(f"{platform.url}/user/{user}/api/contents/examples",
                               headers={"Authorization": f"token {token}"}, timeout=30).json()
        assert CPU_NOTEBOOK.name in {item["name"] for item in listing["content"]}
    finally:
        platform.api("DELETE", f"/users/{user}/server")


def test_gpu_example_notebook_runs_on_the_cpu_too(platform, mlflow_user, tmp_path):
    nb = nbformat.read(NOTEBOOKS / "digits_gpu.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    values = [v for v in _widget_values(nb) if isinstance(v, str)]
    assert any("aif-results-table" in v and "Offline" in v for v in values)
    assert any("aif-leaderboard" in v and "digits_cnn-fp32" in v for v in values)
    assert any("aif-session" in v for v in values) and not any("aif-error" in v for v in values)


def test_aif_bench_magic_names_what_is_wrong_with_the_cell(tmp_path, monkeypatch):
    from IPython.testing.globalipapp import get_ipython

    monkeypatch.chdir(tmp_path)
    shell = get_ipython()
    shell.run_line_magic("load_ext", "aifactory.extensions")
    shell.run_cell_magic("aif_bench", "--input-shape 64", "x = 1")
    assert "defines no torch.nn.Module" in shell.user_ns["aif_bench_panel"].message.value
    shell.run_cell_magic("aif_bench", "--input-shape 3", "import torch\nnet = torch.nn.Linear(64, 10)")
    message = shell.user_ns["aif_bench_panel"].message.value
    assert "cannot trace net with an input of shape (1, 3)" in message and "--input-shape" in message
    assert shell.user_ns["aif_bench_panel"].job is None  # nothing was started
    assert shell.run_line_magic("aif_session", "--json")["slurm_job_id"] is None
