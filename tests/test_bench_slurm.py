"""`aif bench submit` on the real Slurm mini-cluster: a job array that logs to a real MLflow."""

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from aifactory.benchmarks.testing import tiny_config
from aifactory.hub.cli import main
from aifactory.hub.testing.ci import require, require_binary, require_root

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster():
    require_root()
    require_binary("slurmctld", "slurmctld")
    require_binary("munged", "munge")
    try:
        from aifactory.hub.cluster import MiniCluster
    except ImportError as err:
        require(False, f"the Slurm mini-cluster (aifactory.hub.cluster) is not available: {err}")
    state = Path(tempfile.mkdtemp(prefix="aif-bench-slurm-"))
    state.chmod(0o755)  # munged and slurmd traverse it
    mini = MiniCluster(state / "cluster")
    try:
        mini.up()
        yield mini, state
    finally:
        mini.down()
        shutil.rmtree(state, ignore_errors=True)


def _wait_gone(mini, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mini.run(["squeue", "-h", "-j", job_id], check=False).stdout.strip():
            return
        time.sleep(0.5)
    mini.run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id} still queued/running after {timeout}s")


def test_submitted_sweep_runs_as_a_job_array_and_logs_to_mlflow(cluster, mlflow_server, monkeypatch):
    mini, state = cluster
    results = state / "results"
    config = tiny_config(results, mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": "bench-slurm"})
    (state / "bench.yaml").write_text(yaml.safe_dump(config))
    for key, value in mini.env().items():
        monkeypatch.setenv(key, value)

    cli = CliRunner().invoke(main, ["bench", "submit", str(state / "bench.yaml"), "--partition", "gpu",
                                    "--gpus", "1", "--time", "00:10:00", "--sweep", "backends.0.threads=1,2"])
    assert cli.exit_code == 0, cli.output
    assert "array of 2" in cli.output
    job_id = cli.output.split("submitted job ")[1].split()[0]
    _wait_gone(mini, job_id)

    job_dir = next((results / "jobs").iterdir())
    logs = {p.name: p.read_text() for p in job_dir.glob("slurm-*.out")}
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("bench-slurm")
    assert experiment is not None, logs
    parents = client.search_runs([experiment.experiment_id], "tags.`aif.kind` = 'benchmark'")
    assert len(parents) == 2, logs
    assert {p.info.status for p in parents} == {"FINISHED"}
    assert {p.data.tags["aif.slurm.array_job_id"] for p in parents} == {job_id}
    assert {p.data.tags["aif.slurm.array_task_id"] for p in parents} == {"0", "1"}
    threads = set()
    for parent in parents:
        children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {c.data.tags["aif.scenario"] for c in children} == {"Accuracy", "SingleStream"}
        threads |= {c.data.params["backend.threads"] for c in children}
        path = client.download_artifacts(parent.info.run_id, "results.json", str(state))
        data = json.loads(Path(path).read_text())["fingerprint"]
        assert data["slurm_job_id"] == parent.data.tags["aif.slurm.job_id"]
        assert data["slurm_node"] == mini.node_name
        assert data["cuda_visible_devices"] not in (None, "")  # Slurm allocated one (simulated) GPU
    assert threads == {"1", "2"}  # one array task per sweep value


def test_sbatch_refusal_is_reported(cluster, tmp_path, monkeypatch):
    mini, state = cluster
    for key, value in mini.env().items():
        monkeypatch.setenv(key, value)
    config = tiny_config(state / "refused")
    (state / "refused.yaml").write_text(yaml.safe_dump(config))
    cli = CliRunner().invoke(main, ["bench", "submit", str(state / "refused.yaml"), "--gpus", "9"])
    assert cli.exit_code != 0
    assert "sbatch refused the job" in cli.output
    assert not mini.run(["squeue", "-h"], check=False).stdout.strip()  # nothing orphaned


def test_a_language_model_sweep_runs_on_slurm_with_token_metrics(cluster, mlflow_server, reference_lm, monkeypatch):
    """`aif bench submit` of the reference LM: a job array over max_new_tokens, token metrics in MLflow."""
    from aifactory.benchmarks.testing import tiny_lm_config

    mini, state = cluster
    results = state / "lm-results"
    config = tiny_lm_config(results, data={"limit": 8}, scenario={"scenarios": ["SingleStream", "Offline"]},
                            mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": "genai-slurm"})
    (state / "lm.yaml").write_text(yaml.safe_dump(config))
    for key, value in mini.env().items():
        monkeypatch.setenv(key, value)
    cli = CliRunner().invoke(main, ["bench", "submit", str(state / "lm.yaml"), "--partition", "gpu", "--gpus", "1",
                                    "--time", "00:10:00", "--sweep", "generation.max_new_tokens=4,8"])
    assert cli.exit_code == 0, cli.output
    job_id = cli.output.split("submitted job ")[1].split()[0]
    _wait_gone(mini, job_id)
    logs = {p.name: p.read_text()[-3000:] for p in next((results / "jobs").iterdir()).glob("slurm-*.out")}
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("genai-slurm")
    assert experiment is not None, logs
    parents = client.search_runs([experiment.experiment_id], "tags.`aif.kind` = 'benchmark'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}, logs
    assert {p.data.tags["aif.task"] for p in parents} == {"text-generation"}
    budgets = set()
    for parent in parents:
        children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        single = next(c for c in children if c.data.tags["aif.scenario"] == "SingleStream")
        assert single.data.metrics["ttft_p50_ms"] > 0 and single.data.metrics["output_tokens_max"] <= 8
        budgets.add(single.data.params["generation.max_new_tokens"])
        assert parent.data.tags["aif.slurm.array_job_id"] == job_id
    assert budgets == {"4", "8"}
