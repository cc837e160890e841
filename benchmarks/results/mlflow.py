"""MLflow as a reporter: one parent run per benchmark, a nested run per child (docs/mlflow-layout.md).

Runs are created live, with explicit run ids (no global MLflow state), after one quick probe of
the server so that a dead one costs seconds, not MLflow's minutes of retries. When MLflow is
unreachable the benchmark keeps going locally; `upload` later replays a local results directory
into MLflow with the same layout. A failed or cancelled benchmark leaves no run RUNNING.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

from ..config import DEFAULT_EXPERIMENT
from ..errors import MLflowUnavailable, ServerUnreachable, quoted
from ..layout import KIND_BENCHMARK, KIND_CHILD, Artifacts, Tags
from ..result import BenchmarkResult, ChildResult
from .base import Reporter
from .local import read_marker, write_marker

#: the marker of a benchmark run with MLflow switched off
DISABLED = {"tracking_uri": None, "run_id": None, "uploaded": False, "reason": "MLflow disabled in the config"}


def probe(uri, timeout=5.0):
    """Fail fast on a dead server: any HTTP answer (even 401 behind the hub) counts as reachable.

    The one reachability check of the suite (benchmark runs, uploads, comparisons, the panels);
    URIs that are not http(s) (a local file store) are not probed.
    """
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        raise ServerUnreachable(uri, quoted(err)) from None


class MLflowReporter(Reporter):
    """Logs one parent run and a nested run per child, live, with explicit run ids (no global state)."""

    def __init__(self, tracking_uri=None, experiment=DEFAULT_EXPERIMENT, run_name=None):
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.experiment = experiment
        self.run_name = run_name
        self.client = None
        self.parent_id = None
        self.error = None

    @classmethod
    def from_config(cls, cfg):
        """The reporter an `mlflow:` config section asks for; None where it is switched off."""
        return cls(cfg.tracking_uri, cfg.experiment, cfg.run_name) if cfg.enabled else None

    @property
    def active(self):
        return self.parent_id is not None and self.error is None

    def start(self, result: BenchmarkResult, params: dict):
        """Create the parent run; on an unreachable server keep going locally and remember why."""
        if not self.tracking_uri:
            self.error = "no tracking URI (set MLFLOW_TRACKING_URI or mlflow.tracking_uri)"
            return False
        try:
            probe(self.tracking_uri)
        except ServerUnreachable as err:
            self.error = f"MLflow at {self.tracking_uri} unreachable: {err.reason}"
            return False
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(self.tracking_uri)
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
            run = self.client.create_run(experiment_id, run_name=self.run_name or result.name,
                                         tags=parent_tags(result))
            self.parent_id = run.info.run_id
            self.experiment_id = experiment_id
            self._log(self.parent_id, params=params)
            result.mlflow_run_id = self.parent_id
            return True
        except Exception as err:  # noqa: BLE001 - any MLflow failure means: keep results locally
            self.error = f"MLflow at {self.tracking_uri} refused the run: {quoted(err)}"
            return False

    def log_child(self, result: BenchmarkResult, child: ChildResult, results_dir: Path):
        if not self.active:
            return
        run_id = None
        try:
            tags = {**parent_tags(result), **child.tags, Tags.KIND: KIND_CHILD, Tags.PARENT_RUN_ID: self.parent_id}
            run = self.client.create_run(self.experiment_id, run_name=child.name, tags=tags)
            run_id = run.info.run_id
            self._log(run_id, params=child.params, metrics=child.metrics)
            for rel in child.artifacts:
                local = Path(results_dir) / rel
                artifact_path = str(Path(*Path(rel).parts[2:]).parent)  # drop children/<dir>/
                self.client.log_artifact(run_id, str(local), None if artifact_path == "." else artifact_path)
            self.client.set_terminated(run_id, "FINISHED")
            child.extra["mlflow_run_id"] = run_id
        except Exception as err:  # noqa: BLE001
            self.error = f"MLflow logging failed: {type(err).__name__}: {err}"
            self._terminate(run_id, "FAILED")
            self._terminate(self.parent_id, "FAILED", self.error)

    def finish(self, result: BenchmarkResult, results_json: Path):
        if not self.active:
            return
        try:
            self._log(self.parent_id, metrics=result.metrics)
            self.client.log_artifact(self.parent_id, str(results_json))
            self.client.set_terminated(self.parent_id, "FINISHED")
        except Exception as err:  # noqa: BLE001
            self.error = f"MLflow logging failed: {type(err).__name__}: {err}"
            self._terminate(self.parent_id, "FAILED", self.error)

    def fail(self, error: BaseException):
        if self.parent_id is not None:
            self._terminate(self.parent_id, "FAILED", f"{type(error).__name__}: {error}")

    def abort(self, reason):
        if self.parent_id is not None:
            self._terminate(self.parent_id, "KILLED", reason)

    def marker(self):
        marker = {"tracking_uri": self.tracking_uri, "run_id": self.parent_id if self.active else None,
                  "uploaded": self.active, "reason": self.error}
        if not self.active and self.parent_id:
            # MLflow went away mid-run: this half-logged run could not be ended then; `upload` ends it
            marker["partial_run_id"] = self.parent_id
        return marker

    def _terminate(self, run_id, status, message=None):
        if run_id is None or self.client is None:
            return
        try:
            if message:
                self.client.set_tag(run_id, Tags.ERROR, message[:5000])
            self.client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the server is gone; nothing more can be recorded there
            pass

    def _log(self, run_id, params=None, metrics=None):
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        for i in range(0, max(len(params), len(metrics), 1), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])


def parent_tags(result: BenchmarkResult):
    tags = {Tags.KIND: KIND_BENCHMARK, Tags.MODEL: result.model, Tags.DATASET: result.dataset,
            Tags.TASK: result.task, Tags.HARDWARE: result.hardware, Tags.ENVIRONMENT: result.environment}
    if result.command:
        tags[Tags.COMMAND] = result.command
    if result.output:
        tags[Tags.OUTPUT] = result.output
    fingerprint = result.fingerprint or {}
    for key, tag in (("slurm_job_id", Tags.SLURM_JOB_ID), ("slurm_array_job_id", Tags.SLURM_ARRAY_JOB_ID),
                     ("slurm_array_task_id", Tags.SLURM_ARRAY_TASK_ID), ("slurm_node", Tags.SLURM_NODE)):
        if fingerprint.get(key):
            tags[tag] = str(fingerprint[key])
    return tags


def upload(results_dir, tracking_uri=None, experiment=None, force=False):
    """Replay a local results directory into MLflow; returns the parent run id."""
    results_dir = Path(results_dir)
    result = BenchmarkResult.from_json(results_dir / Artifacts.RESULTS)
    marker = read_marker(results_dir)
    if marker.get("uploaded") and not force:
        return marker["run_id"]
    config = result.config.get("mlflow", {})
    reporter = MLflowReporter(tracking_uri or config.get("tracking_uri"),
                              experiment or config.get("experiment") or DEFAULT_EXPERIMENT, config.get("run_name"))
    if not reporter.start(result, params=_parent_params(result)):
        raise MLflowUnavailable(f"{results_dir}: not uploaded: {reporter.error}")
    for child in result.children:
        reporter.log_child(result, child, results_dir)
    # results.json inside MLflow should name the run it now belongs to
    result.mlflow_run_id = reporter.parent_id
    scratch = results_dir / ".upload"
    scratch.mkdir(exist_ok=True)
    try:
        result.to_json(scratch / Artifacts.RESULTS)
        reporter.finish(result, scratch / Artifacts.RESULTS)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reporter.error:
        raise MLflowUnavailable(f"{results_dir}: upload failed: {reporter.error}")
    _end_partial_run(reporter, marker.get("partial_run_id"))
    write_marker(results_dir, reporter.marker())
    return reporter.parent_id


def _end_partial_run(reporter, run_id):
    """Mark the run MLflow lost mid-benchmark FAILED (with its children), pointing at the full upload."""
    if not run_id:
        return
    try:
        runs = reporter.client.search_runs([reporter.experiment_id], f"tags.`{Tags.PARENT_RUN_ID}` = '{run_id}'")
        for run in [*runs, reporter.client.get_run(run_id)]:
            if run.info.status == "RUNNING":
                reporter._terminate(run.info.run_id, "FAILED",
                                    f"MLflow was unreachable mid-run; the complete result is run {reporter.parent_id}")
    except Exception as err:  # noqa: BLE001 - the upload itself succeeded; say what is left
        warnings.warn(f"could not end the partial run {run_id}: {err}", stacklevel=2)


def _parent_params(result):
    from ..config import BenchmarkConfig

    try:
        return BenchmarkConfig.from_dict(result.config).flat_params()
    except Exception:  # noqa: BLE001 - an older config layout still uploads, only without params
        warnings.warn(f"{result.name}: config not readable; uploading without params", stacklevel=2)
        return {}
