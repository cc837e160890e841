"""A model bound to a dataset: inputs fed by name, the scored output chosen, the task settled from
it, and the model's own framework's predictions on the probe samples, the figure every backend is
cross-checked against. Everything here happens before any result exists (locally or in MLflow), so
a model the suite cannot read right is refused with nothing recorded.

    prepared = prepare_model(load_model(cfg.model), load_dataset(cfg.data), cfg)
    prepared.data.x          # one array, or a signature.Feeds of the model's named inputs
    prepared.model.output    # the scored output (name, role, classes), tagged aif.output
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np

from . import accuracy as acc
from .config import BenchmarkConfig
from .data import Dataset
from .errors import BenchmarkError, ModelError, quoted
from .models import LoadedModel, OwnOutput, choose_scored_output, convert_estimator, describe_torch_outputs, own_output
from .signature import LABELS, SCORES, describe_batch


@dataclass
class PreparedModel:
    """What every backend of a model runs on, and is checked against."""

    model: LoadedModel
    data: Dataset  # inputs bound to the model (x: an array, or Feeds), labels as the model spells them, task set
    width: int  # values per sample of the scored output
    probe: np.ndarray  # sample indices of the cross-check
    own_predictions: np.ndarray  # the framework's own predictions on the probe samples
    own_source: str  # who made them
    check_task: str  # how predictions compare (the task; without labels, what the output reads as)


def prepare_model(model: LoadedModel, dataset: Dataset, config: BenchmarkConfig, where="model") -> PreparedModel:
    """Bind `model` to `dataset` (see the module docstring); raises a BenchmarkError naming what is wrong."""
    data = bind_inputs(model, dataset, config, where)
    probe = acc.probe_indices(len(data), config.accuracy.crosscheck_samples)
    with _framework_errors(model, data.x, where):
        if model.outputs is None:  # a torch module: its outputs are what one call returns
            describe_torch_outputs(model, data.x[:2])
            choose_scored_output(model, config.model)
        own = own_output(model, data.x[probe], config.accuracy.batch_size)
    width = int(np.prod(own.scored.shape[1:])) if own.scored.ndim > 1 else 1
    data = _with_task(data, model, width, config.data.task)
    check_task = data.task if data.task != "none" else _unlabelled_check_task(model.output, width, own)
    own_predictions = own.values if own.is_prediction else acc.to_predictions(own.values, check_task, model.output)
    _check_scores_rank_like_labels(model, own, own_predictions, check_task, config, where)
    return PreparedModel(model, data, width, probe, own_predictions, own.source, check_task)


def bind_inputs(model: LoadedModel, dataset: Dataset, config: BenchmarkConfig, where="model") -> Dataset:
    """An estimator converted, then the dataset fed to the model's inputs by name (data.inputs over
    the converter's own binding of fitted columns)."""
    if model.kind == "sklearn":
        convert_estimator(model, dataset, config.model, f"{where}.path")
    mapping = {**(model.input_columns or {}), **(config.data.inputs or {})}
    return dataset.bind(model.inputs, mapping, model.source)


def _with_task(data, model, width, requested):
    """The task from the scored output and the labels; labels spelled as the model spells its classes."""
    task = acc.infer_task(requested, model.output, width, data.y, model.source)
    y = data.y
    if task != "none":
        acc.check_output_fits(task, model.output, width, y, model.source)
        if task == "classification":
            y = acc.align_labels(y, model.output.classes, model.source)
    return dataclasses.replace(data, y=y, task=task)


def _check_scores_rank_like_labels(model, own: OwnOutput, own_predictions, check_task, config, where):
    """Scores are class scores only if, read by the suite's rules on the framework's own CPU path,
    they give the model's own predictions (its label output, the estimator's predict)."""
    if own.is_prediction and model.output.role != LABELS and check_task != "regression":
        acc.check_scores_read_as_predictions(acc.to_predictions(own.scored, check_task, model.output),
                                             own_predictions, acc.crosscheck_tolerance(config.accuracy, "fp32"),
                                             own.source, model.output, f"{where}.output: model {model.source}")


@contextlib.contextmanager
def _framework_errors(model, x, where):
    """The model failing in its own framework (on the CPU, before any backend) is quoted in a ModelError."""
    try:
        yield
    except BenchmarkError:
        raise
    except Exception as err:  # noqa: BLE001 - the framework's own error is quoted in ours
        raise ModelError(f"{where}: model {model.source} failed on samples of {describe_batch(x)} in its own "
                         f"framework ({model.framework}, CPU); check model.input_shape / model.input_dtype "
                         f"(data.inputs for named inputs): {quoted(err)}") from err


def _unlabelled_check_task(choice, width, own):
    """Without labels, predictions still compare: classes where the output holds scores of several
    (or labels), values where it holds one."""
    if own.is_prediction and own.values.ndim == 2 and own.values.shape[1] > 1:
        return "multilabel"
    return "classification" if choice.role != SCORES or width > 1 else "regression"
