"""The benchmark suite logging to the platform's MLflow: the hub service, behind hub login."""

from pathlib import Path

import requests
from aifactory.hub.testing.platform import unique_user

from aifactory.benchmarks.config import BenchmarkConfig
from aifactory.benchmarks.results import read_marker
from aifactory.benchmarks.runner import run_benchmark
from aifactory.benchmarks.testing import tiny_config


def _search(platform, token, experiment_name):
    headers = {"Authorization": f"Bearer {token}"}
    api = f"{platform.mlflow_url}/api/2.0/mlflow"
    experiment = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": experiment_name},
                              headers=headers, timeout=60)
    experiment.raise_for_status()
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [experiment.json()["experiment"]["experiment_id"]]},
                         headers=headers, timeout=60)
    runs.raise_for_status()
    return runs.json().get("runs", [])


def test_benchmark_logs_through_hub_auth_with_a_user_token(platform, tmp_path, monkeypatch):
    user = unique_user("bench")
    platform.add_user(user)
    token = platform.user_token(user)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform.mlflow_url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    config = tiny_config(tmp_path, mlflow={"enabled": True, "experiment": f"bench-{user}"})
    result = run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    assert read_marker(result.results_dir)["uploaded"] is True
    runs = _search(platform, token, f"bench-{user}")
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    assert len(runs) == 3 and {r["info"]["status"] for r in runs} == {"FINISHED"}
    parent = tags[result.mlflow_run_id]
    assert parent["aif.kind"] == "benchmark" and parent["mlflow.user"] == user
    children = [t for t in tags.values() if t.get("mlflow.parentRunId") == result.mlflow_run_id]
    assert {c["aif.scenario"] for c in children} == {"Accuracy", "SingleStream"}
    artifact = requests.get(f"{platform.mlflow_url}/get-artifact",
                            params={"run_id": result.mlflow_run_id, "path": "results.json"},
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert artifact.status_code == 200 and result.mlflow_run_id in artifact.text


def test_without_a_token_results_stay_local_with_the_reason(platform, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform.mlflow_url)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    config = tiny_config(tmp_path, mlflow={"enabled": True, "experiment": "bench-anonymous"})
    result = run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    marker = read_marker(result.results_dir)
    assert marker["uploaded"] is False
    assert "refused the run" in marker["reason"]
    assert "UNAUTHENTICATED" in marker["reason"] or "403" in marker["reason"]
    assert (Path(result.results_dir) / "results.json").exists()
