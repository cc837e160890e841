"""Orchestration: data + model -> per backend: accuracy, then LoadGen scenarios -> writer and reporter.

`run_benchmark` is the one entry (the CLI, `aifactory.benchmarks.run`, the notebook worker and
Slurm jobs all call it). What a caller may want to see or change is a parameter, not a module
global: the reporter (where results go besides the local directory), `on_started` (the run's
handle, as soon as its local directory and MLflow run exist) and `on_progress`.
"""

from __future__ import annotations

import logging
import time

from . import accuracy as acc
from .backends import backend_class, create_backend, preflight
from .binding import PreparedModel, prepare_model
from .config import BenchmarkConfig
from .data import Dataset, load_dataset
from .errors import AccuracyError, ModelError, quoted
from .fingerprint import collect, environment_name, hardware_tag
from .layout import ACCURACY, OFFLINE, Artifacts, Metrics, Params, Tags
from .models import ESTIMATOR_SUFFIXES, load_model
from .result import BenchmarkResult, ChildResult
from .results.local import LocalWriter, write_marker
from .results.mlflow import DISABLED, MLflowReporter
from .scenarios import ScenarioRunner
from .signature import describe_batch
from .text import is_text_model_source
from .text import run as text_run

log = logging.getLogger(__name__)

#: `reporter=` default: the MLflowReporter the config's `mlflow:` section asks for
FROM_CONFIG = object()


def run_benchmark(config: BenchmarkConfig, progress=True, *, reporter=FROM_CONFIG, on_started=None,
                  on_progress=None) -> BenchmarkResult:
    """Run a whole benchmark; returns the result, or raises leaving nothing half-reported.

    reporter: a `results.Reporter` (or None: local results only); default from `config.mlflow`.
    on_started(run): called with the `BenchmarkRun` once its local directory and reporter run
        exist (`run.reporter.parent_id` is the MLflow run; `run.abort(reason)` cancels cleanly).
    on_progress(done, total, step): when a step (a backend's accuracy, a scenario) starts and ends.
    """
    config.validate()
    dataset, model = _load_inputs(config)
    for index, backend_cfg in enumerate(config.backends):
        kind = _model_kind(backend_cfg.model) if backend_cfg.model else model.kind
        preflight(backend_cfg, kind, f"backends[{index}]")
    # inputs bound, output chosen, task settled, the framework's own predictions made: a model the
    # suite cannot read right fails here, before any result (local or in MLflow) exists
    # (a Hugging Face model is read by text/run.py: its tokens, not tensors, are what it takes)
    prepared = None if _is_text(model) else prepare_model(model, dataset, config)
    fingerprint = collect(config.to_dict())
    name = config.name or model.name
    first = config.backends[0]
    result = BenchmarkResult(
        name=name, model=model.name, dataset=dataset.name, task=dataset.task if prepared is None else prepared.data.task,
        output=None if prepared is None else model.output.name,
        hardware=hardware_tag(backend_class(first.kind).planned_device(first), fingerprint),
        environment=environment_name(), config=config.to_dict(), fingerprint=fingerprint,
        status="RUNNING", started=time.time())
    writer = LocalWriter(config.results_dir, name)
    result.command = writer.write_config(config)
    if reporter is FROM_CONFIG:
        reporter = MLflowReporter.from_config(config.mlflow)
    if reporter is not None and not reporter.start(result, config.flat_params()):
        log.warning("%s; results kept in %s, push them later with `aif bench upload %s`",
                    reporter.error, writer.final, writer.final)
    steps = Progress(text_run.total_steps(config, dataset) if prepared is None else _total_steps(config, prepared.data),
                     progress, on_progress)
    run = BenchmarkRun(config, dataset, model, prepared, result, writer, reporter, steps)
    try:
        if on_started is not None:
            on_started(run)
        for index in range(len(config.backends)):
            run.run_backend(index)
        result.status, result.finished = "FINISHED", time.time()
        final = writer.finish(result)
        if reporter is not None:
            reporter.finish(result, final / Artifacts.RESULTS)
        write_marker(final, reporter.marker() if reporter is not None else DISABLED)
        return result
    except BaseException as err:
        writer.discard()
        if reporter is not None:
            reporter.fail(err)
        raise
    finally:
        steps.close()


class BenchmarkRun:
    """One benchmark in progress: its result so far, its local writer and its reporter."""

    def __init__(self, config, source: Dataset, model, prepared: PreparedModel | None, result, writer, reporter,
                 steps):
        self.config, self.source, self.prepared, self.result = config, source, prepared, result
        # a text model has no PreparedModel: text/run.py reads its tokenized dataset and the model itself
        self.dataset, self.model = (source, model) if prepared is None else (prepared.data, prepared.model)
        self.writer, self.reporter, self.steps = writer, reporter, steps
        self.reference_scores = self.reference_choice = None
        self.text_reference = None  # text-generation: the first backend's generated ids and logits

    def abort(self, reason):
        """Cancel from outside (a signal handler): the reporter's run ends KILLED, no partial results."""
        if self.reporter is not None:
            self.reporter.abort(reason)
        self.writer.discard()

    def run_backend(self, index):
        if _is_text(self.model):  # Hugging Face models: text/run.py (tokens, generation metrics)
            return text_run.run_backend(self, index)
        cfg = self.config.backends[index]
        where = f"backends[{index}]"
        prepared = self._prepared_for(cfg, where)
        backend = create_backend(cfg, prepared.model, where)
        try:
            data = prepared.data
            staged = backend.stage(data.x)
            _probe(backend, staged, prepared.model)
            params = self.config.flat_params(index)
            common = {Tags.BACKEND: backend.label, Tags.PRECISION: cfg.precision,
                      Tags.HARDWARE: hardware_tag(backend.device, self.result.fingerprint)}
            checked = {}
            if backend.computes_model:
                check = self._crosscheck(backend, staged, prepared, cfg, where)
                common.update({Tags.OUTPUT: backend.output.name, Tags.OUTPUTS_FETCHED: ",".join(backend.fetched_outputs),
                               Tags.CROSSCHECK: check.reference})
                checked = check.metrics()
            if _with_accuracy(self.config, data):
                self._accuracy(backend, staged, data, params, common, checked)
            self._scenarios(backend, staged, len(data), params, common, checked)
        finally:
            backend.close()

    def _prepared_for(self, cfg, where):
        """The run's model, or the backend's own file (backends[i].model), bound the same way."""
        if not cfg.model:
            return self.prepared
        model = load_model(self.config.model, cfg.model, where=f"{where}.model")
        prepared = prepare_model(model, self.source, self.config, f"{where}.model")
        if prepared.data.task != self.dataset.task:
            raise AccuracyError(f"{where}.model: {model.source} reads as a {prepared.data.task} model (output "
                                f"{model.output.name!r}); the run's model is {self.dataset.task}")
        return prepared

    def _crosscheck(self, backend, staged, prepared, cfg, where):
        """The backend's predictions on the probe samples against the framework's own; fails the run beyond tolerance."""
        probe = prepared.probe
        outputs = acc.predict_all(backend, staged[backend.device_indices(probe)], len(probe),
                                  self.config.accuracy.batch_size)
        predictions = acc.to_predictions(outputs, prepared.check_task, backend.output)
        y = prepared.data.y[probe] if prepared.data.y is not None else None
        tolerance = acc.crosscheck_tolerance(self.config.accuracy, cfg.precision)
        return acc.crosscheck(predictions, prepared.own_predictions, y, prepared.check_task, tolerance,
                              prepared.own_source, f"{where} ({backend.label}), output {backend.output.name!r}")

    def _accuracy(self, backend, staged, data, params, common, checked):
        self.steps.start(f"{backend.label}: accuracy")
        cfg = self.config.accuracy
        scores = acc.predict_all(backend, staged, len(data), cfg.batch_size)
        task = data.task
        y_pred = acc.to_predictions(scores, task if task != "none" else "classification", backend.output)
        metrics = acc.score(data.y, y_pred, task, cfg, backend.label) if data.y is not None else {}
        if self.reference_scores is None:
            self.reference_scores, self.reference_choice = scores, backend.output
            self.result.metrics.update(metrics)  # the reference backend's accuracy, on the parent
        else:
            metrics.update(acc.agreement(self.reference_scores, scores, task, cfg, backend.label,
                                         self.reference_choice, backend.output))
        report = None
        if cfg.robustness and task == "classification":
            self.steps.start(f"{backend.label}: robustness")
            report, metrics[Metrics.ROBUSTNESS_MAX_DROP] = acc.robustness(backend, data.x, data.y, cfg,
                                                                          metrics[Metrics.ACCURACY], backend.output)
        child = ChildResult(backend=backend.label, precision=backend.precision, scenario=ACCURACY,
                            metrics={**metrics, **checked}, params=params, tags={**common, Tags.SCENARIO: ACCURACY})
        self.writer.write_accuracy(child, scores, y_pred, data.y, robustness=report)
        self._add(child)

    def _scenarios(self, backend, staged, n_samples, params, common, checked):
        scfg = self.config.scenario
        runner = ScenarioRunner(backend, staged, n_samples, scfg, self.writer.scratch / _safe(backend.label))
        for scenario in scfg.scenarios:
            for size in _batch_sizes(scfg, scenario):
                self.steps.start(f"{backend.label}: {scenario}" + (f" bs={size}" if size else ""))
                name = f"{scenario}-bs{size}" if size else scenario
                run = runner.run(scenario, batch_size=size, name=name)
                tags = {**common, Tags.SCENARIO: scenario, Tags.RESULT_VALID: run.validity,
                        Tags.EARLY_STOPPING: run.early_stopping[:5000]}
                extra = {"loadgen": run.loadgen, "settings": run.settings}
                if size:
                    tags[Tags.BATCH_SIZE] = str(size)
                    extra["sweep"] = True
                if run.search:
                    extra["server_search"] = run.search
                child = ChildResult(backend=backend.label, precision=backend.precision, scenario=scenario,
                                    metrics={**run.metrics, **checked},
                                    params={**params, Params.BATCH_SIZE: run.batch_size},
                                    tags=tags, batch_size=run.batch_size, extra=extra)
                self.writer.write_scenario(child, run)
                self._add(child)

    def _add(self, child):
        self.result.children.append(child)
        if self.reporter is not None:
            self.reporter.log_child(self.result, child, self.writer.path)
        self.steps.advance()


class Progress:
    """The run's steps, to a tqdm bar (when `bar`) and to an `on_progress(done, total, step)` callback."""

    def __init__(self, total, bar=True, callback=None):
        from tqdm.auto import tqdm

        self.done, self.total, self.step = 0, total, "starting"
        self.callback = callback
        self.bar = tqdm(total=total, disable=not bar, unit="step", leave=True)

    def start(self, step):
        self.step = step
        self.bar.set_description(step)
        self._tell()

    def advance(self):
        self.done += 1
        self.bar.update(1)
        self._tell()

    def _tell(self):
        if self.callback is not None:
            self.callback(self.done, self.total, self.step)

    def close(self):
        self.bar.close()


def _load_inputs(config):
    """(dataset, model): a Hugging Face model is opened first, because its task decides how the data reads."""
    source = config.model.path
    if is_text_model_source(source) or source.startswith(("models:/", "runs:/")):
        model = load_model(config.model)
        if _is_text(model):
            return text_run.load_text_data(config, model), model
        return load_dataset(config.data), model
    return load_dataset(config.data), load_model(config.model)


def _is_text(model):
    return getattr(model, "is_text", False)


def _probe(backend, staged, model):
    """One query before LoadGen starts: a wrong shape/dtype or NaN output fails here, clearly."""
    try:
        out = backend.to_numpy(backend.infer(staged[:1]))
    except Exception as err:  # noqa: BLE001 - the framework's own error is quoted in ours
        raise ModelError(f"{backend.where}: model {model.source} failed on one sample of {describe_batch(staged)}; "
                         f"check model.input_shape / model.input_dtype (data.inputs for named inputs): "
                         f"{quoted(err)}") from err
    acc.check_finite(out, backend.label)


def _with_accuracy(config, dataset):
    """Accuracy is measured with labels, or (agreement only) when several backends can be compared."""
    return config.accuracy.enabled and (dataset.y is not None or len(config.backends) > 1)


def _batch_sizes(scenario_cfg, scenario):
    """The Offline batch-size sweep's sizes; [None] (the scenario's own batch) otherwise."""
    return scenario_cfg.batch_sizes if scenario == OFFLINE and scenario_cfg.batch_sizes else [None]


def _total_steps(config, dataset):
    per_backend = sum(len(_batch_sizes(config.scenario, s)) for s in config.scenario.scenarios)
    return len(config.backends) * (per_backend + int(_with_accuracy(config, dataset)))


def _model_kind(source):
    if is_text_model_source(source):
        return "hf"
    if str(source).endswith(".onnx"):
        return "onnx"
    return "sklearn" if str(source).endswith(ESTIMATOR_SUFFIXES) else "torch"


def _safe(label):
    return label.replace(":", "_").replace("/", "_")
