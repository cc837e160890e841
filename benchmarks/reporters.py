"""Reporters: where results go. A local results directory always; MLflow when reachable.

The local directory is written first and is complete on its own, so an unreachable MLflow loses
nothing: `aif bench upload DIR` later replays it into MLflow with the same layout
(docs/mlflow-layout.md). A failed benchmark leaves no results.json and no run stuck RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from .result import BenchmarkResult, ChildResult

MARKER = ".mlflow.json"  # which MLflow run a results directory went to, or why it did not


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")


class LocalWriter:
    """Builds `<results_dir>/<stamp>-<model>/`; visible under its final name only when complete."""

    def __init__(self, results_dir, model_name):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(results_dir)
        root.mkdir(parents=True, exist_ok=True)
        base = f"{stamp}-{_slug(model_name)}"
        for n in range(1, 10_000):  # job-array tasks may start in the same second: mkdir decides
            final = root / (base if n == 1 else f"{base}-{n}")
            partial = final.with_name(final.name + ".partial")
            if final.exists():
                continue
            try:
                partial.mkdir()
                break
            except FileExistsError:
                continue
        self.final, self.path = final, partial
        self._count = 0

    @property
    def scratch(self):
        return self.path / ".scratch"

    def child_dir(self, child: ChildResult):
        self._count += 1
        suffix = f"-bs{child.batch_size}" if child.extra.get("sweep") else ""
        directory = self.path / "children" / f"{self._count:02d}-{_slug(child.backend)}-{child.scenario}{suffix}"
        directory.mkdir(parents=True)
        return directory

    def write_scenario(self, child: ChildResult, run):
        directory = self.child_dir(child)
        np.save(directory / "latencies.npy", np.asarray(run.latencies_s, dtype=np.float64))
        (directory / "loadgen").mkdir()
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
            shutil.copy2(run.log_dir / name, directory / "loadgen" / name)
        latency_histogram(run.latencies_s, f"{child.backend} {child.scenario}", directory / "latency_histogram.png")
        child.artifacts = self._relative(directory)

    def write_accuracy(self, child: ChildResult, scores, y_pred, y_true, robustness=None):
        directory = self.child_dir(child)
        arrays = {"y_pred": y_pred, "scores": scores.astype(np.float32), "sample_index": np.arange(len(scores))}
        if y_true is not None:
            arrays["y_true"] = y_true
        np.savez(directory / "predictions.npz", **arrays)
        if robustness is not None:
            (directory / "robustness.json").write_text(json.dumps(robustness, indent=2))
        child.artifacts = self._relative(directory)

    def write_config(self, config):
        """The exact config, next to the results: `aif bench run <dir>/config.yaml` reproduces the run."""
        import yaml

        (self.path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return f"aif bench run {shlex.quote(str(self.final.resolve() / 'config.yaml'))}"

    def _relative(self, directory):
        return sorted(str(p.relative_to(self.path)) for p in directory.rglob("*") if p.is_file())

    def finish(self, result: BenchmarkResult):
        shutil.rmtree(self.scratch, ignore_errors=True)
        result.results_dir = str(self.final)
        result.to_json(self.path / "results.json.tmp")
        os.replace(self.path / "results.json.tmp", self.path / "results.json")
        os.replace(self.path, self.final)
        return self.final

    def discard(self):
        shutil.rmtree(self.path, ignore_errors=True)


def latency_histogram(latencies_s, title, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = np.asarray(latencies_s) * 1e3
    ax.hist(values, bins=min(60, max(5, len(values) // 10)))
    if len(values):
        for q in (50, 90, 99):
            ax.axvline(np.percentile(values, q), linestyle="--", linewidth=1, color="k")
    ax.set_xlabel("latency per query (ms), harness clock")
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class MLflowUnavailable(RuntimeError):
    pass


class MLflowReporter:
    """Logs one parent run and a nested run per child, live, with explicit run ids (no global state)."""

    def __init__(self, tracking_uri=None, experiment="benchmarks", run_name=None):
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.experiment = experiment
        self.run_name = run_name
        self.client = None
        self.parent_id = None
        self.error = None

    @property
    def active(self):
        return self.parent_id is not None and self.error is None

    def start(self, result: BenchmarkResult, params: dict):
        """Create the parent run; on an unreachable server keep going locally and remember why."""
        if not self.tracking_uri:
            self.error = "no tracking URI (set MLFLOW_TRACKING_URI or mlflow.tracking_uri)"
            return False
        try:
            _probe(self.tracking_uri)
        except MLflowUnavailable as err:
            self.error = f"MLflow at {self.tracking_uri} unreachable: {err}"
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
            self.error = f"MLflow at {self.tracking_uri} refused the run: {type(err).__name__}: {_first_line(err)}"
            return False

    def log_child(self, result: BenchmarkResult, child: ChildResult, results_dir: Path):
        if not self.active:
            return
        run_id = None
        try:
            tags = {**parent_tags(result), **child.tags, "aif.kind": "benchmark.child",
                    "mlflow.parentRunId": self.parent_id}
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

    def _terminate(self, run_id, status, message=None):
        if run_id is None or self.client is None:
            return
        try:
            if message:
                self.client.set_tag(run_id, "aif.error", message[:5000])
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
    tags = {"aif.kind": "benchmark", "aif.model": result.model, "aif.dataset": result.dataset,
            "aif.task": result.task, "aif.hardware": result.hardware, "aif.environment": result.environment}
    if result.command:
        tags["aif.command"] = result.command
    fingerprint = result.fingerprint or {}
    for key, tag in (("slurm_job_id", "aif.slurm.job_id"), ("slurm_array_job_id", "aif.slurm.array_job_id"),
                     ("slurm_array_task_id", "aif.slurm.array_task_id"), ("slurm_node", "aif.slurm.node")):
        if fingerprint.get(key):
            tags[tag] = str(fingerprint[key])
    return tags


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else ""


def _probe(uri, timeout=5.0):
    """Fail fast instead of sitting through MLflow's retry back-off against a dead server."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        raise MLflowUnavailable(str(err)) from None


def write_marker(results_dir, reporter: MLflowReporter | None):
    marker = {"tracking_uri": reporter.tracking_uri if reporter else None,
              "run_id": reporter.parent_id if reporter and reporter.active else None,
              "uploaded": bool(reporter and reporter.active),
              "reason": (reporter.error if reporter else "MLflow disabled in the config")}
    if reporter and not reporter.active and reporter.parent_id:
        # MLflow went away mid-run: this half-logged run could not be ended then; `upload` ends it
        marker["partial_run_id"] = reporter.parent_id
    (Path(results_dir) / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def read_marker(results_dir):
    path = Path(results_dir) / MARKER
    return json.loads(path.read_text()) if path.exists() else {"uploaded": False}


def pending_uploads(root):
    """Result directories under `root` that never reached MLflow."""
    root = Path(root)
    found = [p.parent for p in sorted(root.glob("*/results.json"))]
    return [p for p in found if not read_marker(p).get("uploaded")]


def upload(results_dir, tracking_uri=None, experiment=None, force=False):
    """Replay a local results directory into MLflow; returns the parent run id."""
    results_dir = Path(results_dir)
    result = BenchmarkResult.from_json(results_dir / "results.json")
    marker = read_marker(results_dir)
    if marker.get("uploaded") and not force:
        return marker["run_id"]
    config = result.config.get("mlflow", {})
    reporter = MLflowReporter(tracking_uri or config.get("tracking_uri"),
                              experiment or config.get("experiment") or "benchmarks", config.get("run_name"))
    if not reporter.start(result, params=_parent_params(result)):
        raise MLflowUnavailable(f"{results_dir}: not uploaded: {reporter.error}")
    for child in result.children:
        reporter.log_child(result, child, results_dir)
    # results.json inside MLflow should name the run it now belongs to
    result.mlflow_run_id = reporter.parent_id
    scratch = results_dir / ".upload"
    scratch.mkdir(exist_ok=True)
    try:
        result.to_json(scratch / "results.json")
        reporter.finish(result, scratch / "results.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reporter.error:
        raise MLflowUnavailable(f"{results_dir}: upload failed: {reporter.error}")
    _end_partial_run(reporter, marker.get("partial_run_id"))
    write_marker(results_dir, reporter)
    return reporter.parent_id


def _end_partial_run(reporter, run_id):
    """Mark the run MLflow lost mid-benchmark FAILED (with its children), pointing at the full upload."""
    if not run_id:
        return
    try:
        runs = reporter.client.search_runs([reporter.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
        for run in [*runs, reporter.client.get_run(run_id)]:
            if run.info.status == "RUNNING":
                reporter._terminate(run.info.run_id, "FAILED",
                                    f"MLflow was unreachable mid-run; the complete result is run {reporter.parent_id}")
    except Exception as err:  # noqa: BLE001 - the upload itself succeeded; say what is left
        warnings.warn(f"could not end the partial run {run_id}: {err}", stacklevel=2)


def _parent_params(result):
    from .config import BenchmarkConfig

    try:
        return BenchmarkConfig.from_dict(result.config).flat_params()
    except Exception:  # noqa: BLE001 - an older config layout still uploads, only without params
        warnings.warn(f"{result.name}: config not readable; uploading without params", stacklevel=2)
        return {}
