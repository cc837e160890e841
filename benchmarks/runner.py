"""Orchestration: data + model -> per backend: accuracy, then LoadGen scenarios -> reporters."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import accuracy as acc
from .backends import create_backend, cuda_available, preflight, resolve_device
from .config import BenchmarkConfig
from .data import Dataset, load_dataset
from .fingerprint import collect, environment_name, hardware_tag
from .models import ModelError, load_model
from .reporters import LocalWriter, MLflowReporter, write_marker
from .result import BenchmarkResult, ChildResult
from .scenarios import ScenarioRunner

log = logging.getLogger(__name__)


def run_benchmark(config: BenchmarkConfig, progress=True) -> BenchmarkResult:
    """Run a whole benchmark; returns the result, or raises leaving nothing half-reported."""
    config.validate()
    dataset = load_dataset(config.data)
    model = load_model(config.model)
    for index, backend_cfg in enumerate(config.backends):
        kind = _model_kind(backend_cfg.model) if backend_cfg.model else model.kind
        preflight(backend_cfg, kind, f"backends[{index}]")
    fingerprint = collect(config.to_dict())
    name = config.name or model.name
    result = BenchmarkResult(
        name=name, model=model.name, dataset=dataset.name, task=dataset.task,
        hardware=hardware_tag(_planned_device(config.backends[0]), fingerprint),
        environment=environment_name(), config=config.to_dict(), fingerprint=fingerprint,
        status="RUNNING", started=time.time())
    writer = LocalWriter(config.results_dir, name)
    result.command = writer.write_config(config)
    reporter = None
    if config.mlflow.enabled:
        reporter = MLflowReporter(config.mlflow.tracking_uri, config.mlflow.experiment, config.mlflow.run_name)
        if not reporter.start(result, config.flat_params()):
            log.warning("%s; results kept in %s, push them later with `aif bench upload %s`",
                        reporter.error, writer.final, writer.final)
    bar = _progress_bar(config, dataset, progress)
    try:
        session = _Session(config, dataset, model, result, writer, reporter, bar)
        for index in range(len(config.backends)):
            session.run_backend(index)
        result.status, result.finished = "FINISHED", time.time()
        final = writer.finish(result)
        if reporter is not None:
            reporter.finish(result, final / "results.json")
        write_marker(final, reporter)
        return result
    except BaseException as err:
        writer.discard()
        if reporter is not None:
            reporter.fail(err)
        raise
    finally:
        bar.close()


class _Session:
    def __init__(self, config, dataset: Dataset, model, result, writer, reporter, bar):
        self.config, self.dataset, self.model, self.result = config, dataset, model, result
        self.writer, self.reporter, self.bar = writer, reporter, bar
        self.reference_scores = None

    def run_backend(self, index):
        cfg = self.config.backends[index]
        where = f"backends[{index}]"
        model = load_model(self.config.model, cfg.model, where=f"{where}.model") if cfg.model else self.model
        backend = create_backend(cfg, model, where)
        try:
            data = self.dataset.fit_to(model.input_shape, getattr(backend, "input_dtype", None) or model.input_dtype,
                                       model.source)
            staged = backend.stage(data.x)
            _probe(backend, staged, model)
            params = self.config.flat_params(index)
            common = {"aif.backend": backend.label, "aif.precision": cfg.precision,
                      "aif.hardware": hardware_tag(backend.device, self.result.fingerprint)}
            if self.config.accuracy.enabled and (data.y is not None or len(self.config.backends) > 1):
                self._accuracy(backend, staged, data, params, common, index)
            self._scenarios(backend, staged, len(data), params, common)
        finally:
            backend.close()

    def _accuracy(self, backend, staged, data, params, common, index):
        self.bar.set_description(f"{backend.label}: accuracy")
        cfg = self.config.accuracy
        scores = acc.predict_all(backend, staged, len(data), cfg.batch_size)
        task = data.task
        y_pred = acc.to_predictions(scores, task if task != "none" else "classification")
        metrics = acc.score(data.y, y_pred, task, cfg, backend.label) if data.y is not None else {}
        if self.reference_scores is None:
            self.reference_scores = scores
            self.result.metrics.update(metrics)  # the reference backend's accuracy, on the parent
        else:
            metrics.update(acc.agreement(self.reference_scores, scores, task, cfg, backend.label))
        report = None
        if cfg.robustness and task == "classification":
            self.bar.set_description(f"{backend.label}: robustness")
            report, metrics["robustness_max_accuracy_drop"] = acc.robustness(backend, data.x, data.y, cfg,
                                                                             metrics["accuracy"])
        child = ChildResult(backend=backend.label, precision=backend.precision, scenario="Accuracy",
                            metrics=metrics, params=params, tags={**common, "aif.scenario": "Accuracy"})
        self.writer.write_accuracy(child, scores, y_pred, data.y, robustness=report)
        self._add(child)

    def _scenarios(self, backend, staged, n_samples, params, common):
        scfg = self.config.scenario
        runner = ScenarioRunner(backend, staged, n_samples, scfg, self.writer.scratch / _safe(backend.label))
        for scenario in scfg.scenarios:
            sizes = scfg.batch_sizes if scenario == "Offline" and scfg.batch_sizes else [None]
            for size in sizes:
                self.bar.set_description(f"{backend.label}: {scenario}" + (f" bs={size}" if size else ""))
                name = f"{scenario}-bs{size}" if size else scenario
                run = runner.run(scenario, batch_size=size, name=name)
                tags = {**common, "aif.scenario": scenario, "aif.loadgen.result_valid": run.validity,
                        "aif.loadgen.early_stopping": run.early_stopping[:5000]}
                extra = {"loadgen": run.loadgen, "settings": run.settings}
                if size:
                    tags["aif.batch_size"] = str(size)
                    extra["sweep"] = True
                if run.search:
                    extra["server_search"] = run.search
                child = ChildResult(backend=backend.label, precision=backend.precision, scenario=scenario,
                                    metrics=run.metrics, params={**params, "scenario.batch_size": run.batch_size},
                                    tags=tags, batch_size=run.batch_size, extra=extra)
                self.writer.write_scenario(child, run)
                self._add(child)

    def _add(self, child):
        self.result.children.append(child)
        if self.reporter is not None:
            self.reporter.log_child(self.result, child, self.writer.path)
        self.bar.update(1)


def _probe(backend, staged, model):
    """One query before LoadGen starts: a wrong shape/dtype or NaN output fails here, clearly."""
    try:
        out = backend.to_numpy(backend.infer(staged[:1]))
    except Exception as err:  # noqa: BLE001 - the framework's own error is quoted in ours
        shape = tuple(staged.shape[1:])
        raise ModelError(f"{backend.where}: model {model.source} failed on one sample of shape {shape} "
                         f"({staged.dtype}); check model.input_shape / model.input_dtype: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    acc.check_finite(out, backend.label)


def _planned_device(cfg):
    if cfg.kind == "onnxruntime":
        gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in (cfg.providers or []))
        return "cuda:0" if gpu or (cfg.providers is None and cfg.device != "cpu" and cuda_available()) else "cpu"
    try:
        return resolve_device(cfg.device, "backends[0]")
    except ValueError:
        return "cpu"


def _model_kind(source):
    return "onnx" if str(source).endswith(".onnx") else "torch"


def _safe(label):
    return label.replace(":", "_").replace("/", "_")


def _progress_bar(config, dataset, enabled):
    from tqdm.auto import tqdm

    scfg = config.scenario
    per_backend = sum(len(scfg.batch_sizes) if s == "Offline" and scfg.batch_sizes else 1 for s in scfg.scenarios)
    with_accuracy = config.accuracy.enabled and (dataset.y is not None or len(config.backends) > 1)
    total = len(config.backends) * (per_backend + int(with_accuracy))
    return tqdm(total=total, disable=not enabled, unit="step", leave=True)


def default_results_dir():
    return Path("aif-results")
