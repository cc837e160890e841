"""Accuracy with bootstrap confidence intervals, agreement between backends, and the cross-check
of every backend against the model's own framework.

Point estimates come from scikit-learn. Confidence intervals come from scipy.stats.bootstrap
(percentile method, paired resampling of labels and predictions); its statistic is a vectorized
numpy twin of the scikit-learn metrics (all metrics from one confusion-matrix pass per resample),
so a thousand resamples take milliseconds; the twin is checked against scikit-learn in the tests.

What is predicted follows from the scored output (signature.OutputChoice): class scores are read
as `classes[argmax]` (multi-label: each column against its threshold), a label output is taken as
it is, a single value column is a regression value or, with 0/1 labels, a binary score. The task
itself is settled from that output first and the labels second (`infer_task`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .config import AccuracyConfig
from .errors import AccuracyError, ModelError, quoted
from .layout import Metrics
from .signature import LABELS, MAPS


@dataclass
class Predictions:
    scores: np.ndarray  # raw model outputs, float32, (N, ...) in sample order
    y_pred: np.ndarray
    sample_index: np.ndarray


def predict_all(backend, staged, n_samples, batch_size=256):
    outputs = []
    for begin in range(0, n_samples, batch_size):
        batch = staged[begin:begin + batch_size]
        try:
            outputs.append(backend.to_numpy(backend.infer(batch)))
        except Exception as err:  # noqa: BLE001 - quote the framework's error under ours
            raise AccuracyError(f"backend {backend.label}: model failed on a batch of {len(batch)} samples "
                                f"(a model exported with a fixed batch size cannot batch; set accuracy.batch_size: 1): "
                                f"{quoted(err)}") from err
    scores = np.concatenate(outputs)
    check_finite(scores, backend.label)
    return scores


def check_finite(scores, label):
    if scores.dtype.kind not in "fc":
        return  # labels: nothing to be NaN
    bad = ~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AccuracyError(f"backend {label}: model produced NaN/inf outputs for {int(bad.sum())} of "
                            f"{len(scores)} samples (first at sample {first})")


def to_predictions(scores, task, choice=None):
    """Predicted labels (or values) from the scored output: see the module docstring."""
    classes = choice.classes if choice is not None else None
    if choice is not None and choice.role == LABELS:
        return scores.reshape(len(scores), -1) if task == "multilabel" else scores.reshape(len(scores))
    flat = scores.reshape(len(scores), -1)
    if task == "regression":
        return flat[:, 0]
    if task == "multilabel":
        return (flat > _threshold(flat)).astype(np.int64)
    if flat.shape[1] > 1:
        index = flat.argmax(axis=1)
    else:
        index = (flat[:, 0] > _threshold(flat)).astype(np.int64)
    return np.asarray(classes)[index] if classes is not None else index


def _threshold(scores):
    """A probability if every score stays in [0, 1], else a logit."""
    return 0.5 if scores.size and scores.min() >= 0 and scores.max() <= 1 else 0.0


# --- which task: from the scored output first, the labels second ---------------------------------

def infer_task(requested, choice, width, y, model="model"):
    """classification | multilabel | regression | none, for a scored output `width` values wide
    per sample and labels `y`; an explicit `data.task` must fit the output, else it is refused."""
    if y is None or requested == "none":
        return "none"
    inferred = _task_of_output(choice, width, y)
    if requested == "auto":
        return inferred
    if requested != inferred and not (requested == "classification" and inferred == "regression" and width == 1):
        raise AccuracyError(f"data.task: {requested}, but the scored output {choice.name!r} of model {model} "
                            f"({width} value(s) per sample, {choice.role}) with labels of shape {tuple(y.shape[1:]) or '(N,)'} "
                            f"reads as {inferred}; set data.task: auto or pick another output (model.output)")
    return requested


def _task_of_output(choice, width, y):
    if y.ndim == 2 and y.shape[1] > 1:
        return "multilabel"
    if choice.role in (LABELS, MAPS) or width > 1:
        return "classification"
    # one value per sample: a binary score when the labels are 0/1 (or text), else a regression value
    if y.dtype.kind in "OUSb" or (y.dtype.kind in "iuf" and np.isin(np.unique(y), (0, 1)).all()):
        return "classification"
    return "regression"


def check_output_fits(task, choice, width, y, model="model"):
    """The scored output can be scored against these labels: the right width, known classes."""
    where = f"model.output {choice.name!r} of model {model}"
    if task == "multilabel" and width != y.shape[1]:
        raise AccuracyError(f"{where}: {width} values per sample, but the labels have {y.shape[1]} columns")
    if task == "regression" and width != 1:
        raise AccuracyError(f"{where}: {width} values per sample; a regression output has one (pick it with "
                            "model.output, or set data.task)")
    if task != "classification" or choice.role == LABELS:
        return
    columns = max(width, 2)
    if choice.classes is not None:
        if len(choice.classes) != columns:
            raise AccuracyError(f"{where}: {width} score columns but {len(choice.classes)} classes "
                                f"({', '.join(map(str, choice.classes))}) in model.classes / the model")
        return
    values = np.unique(y)
    if y.dtype.kind not in "iub" or values.min() < 0 or values.max() >= columns:
        shown = ", ".join(repr(v.item()) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise AccuracyError(f"{where}: {width} score columns, labels {shown}; the model records no class per "
                            "column, so labels must be 0..C-1: give the order with model.classes: [...]")


def align_labels(y, classes, model="model"):
    """Labels spelled as the model spells its classes (a CSV's 1, 2 against a model's "1", "2");
    refused when some are none of its classes."""
    if classes is None or y is None or y.ndim != 1:
        return y
    known = np.asarray(classes)
    if (known.dtype.kind in "US") != (y.dtype.kind in "US"):
        y = _as_text(y) if known.dtype.kind in "US" else _as_numbers(y, known.dtype, model)
    unknown = np.setdiff1d(np.unique(y), known)
    if len(unknown):
        shown = ", ".join(repr(v.item()) for v in unknown[:5])
        raise AccuracyError(f"data.label: labels {shown} are none of model {model}'s classes "
                            f"({', '.join(map(str, classes))})")
    return y


def _as_text(values):
    values = np.asarray(values)
    if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return values.astype(str)


def _as_numbers(values, dtype, model):
    try:
        return values.astype(np.float64).astype(dtype)
    except ValueError:
        raise AccuracyError(f"data.label: text labels ({values[0]!r}, ...) but model {model}'s classes are "
                            "numbers") from None


def _common_domain(y_true, y_pred):
    """Text against numbers (a label output of "1", "2" against a CSV's 1, 2): both as text."""
    if (y_true.dtype.kind in "US") != (y_pred.dtype.kind in "US"):
        return _as_text(y_true), _as_text(y_pred)
    return y_true, y_pred


# --- vectorized statistics (last axis = samples), matching scikit-learn's definitions -------------

def _confusion(y_true, y_pred, n_classes):
    """Confusion matrices for every leading index at once: (..., N) codes -> (..., C, C) counts."""
    lead = y_true.shape[:-1]
    batch = int(np.prod(lead)) if lead else 1
    offsets = (np.arange(batch) * n_classes * n_classes).reshape(*lead, 1) if lead else 0
    codes = offsets + y_true * n_classes + y_pred
    return np.bincount(codes.ravel(), minlength=batch * n_classes * n_classes).reshape(*lead, n_classes, n_classes)


def classification_statistics(y_true, y_pred, axis=-1):
    """accuracy, f1_macro, precision_macro, recall_macro (label-encoded inputs), stacked on axis 0."""
    n_classes = int(max(y_true.max(), y_pred.max())) + 1
    cm = _confusion(y_true, y_pred, n_classes)
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    n_true, n_pred = cm.sum(axis=-1), cm.sum(axis=-2)
    present = (n_true + n_pred) > 0  # scikit-learn averages over labels seen in either
    precision = np.divide(tp, n_pred, out=np.zeros(tp.shape), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros(tp.shape), where=n_true > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(tp.shape), where=total > 0)
    n_present = present.sum(axis=-1)
    macro = [(v * present).sum(axis=-1) / n_present for v in (f1, precision, recall)]
    accuracy = tp.sum(axis=-1) / y_true.shape[-1]
    return np.stack([accuracy, *macro])


def regression_statistics(y_true, y_pred, axis=-1):
    """mae, rmse, r2, stacked on axis 0."""
    error = y_true - y_pred
    residual = (error ** 2).sum(axis=-1)
    total = ((y_true - y_true.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    r2 = 1 - residual / np.where(total == 0, np.nan, total)
    return np.stack([np.abs(error).mean(axis=-1), np.sqrt((error ** 2).mean(axis=-1)), r2])


def multilabel_statistics(y_true, y_pred, axis=-1):
    """Subset accuracy and macro F1/precision/recall over labels, for (..., C, N) 0/1 indicators
    (samples last, as scipy's bootstrap resamples them), as scikit-learn defines them."""
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    tp = (y_true & y_pred).sum(axis=-1).astype(np.float64)
    n_true, n_pred = y_true.sum(axis=-1), y_pred.sum(axis=-1)
    precision = np.divide(tp, n_pred, out=np.zeros(tp.shape), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros(tp.shape), where=n_true > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(tp.shape), where=total > 0)
    subset = (y_true == y_pred).all(axis=-2).mean(axis=-1)
    return np.stack([subset, f1.mean(axis=-1), precision.mean(axis=-1), recall.mean(axis=-1)])


CLASSIFICATION = {
    Metrics.ACCURACY: skm.accuracy_score,
    Metrics.F1_MACRO: lambda t, p: skm.f1_score(t, p, average="macro", zero_division=0),
    Metrics.PRECISION_MACRO: lambda t, p: skm.precision_score(t, p, average="macro", zero_division=0),
    Metrics.RECALL_MACRO: lambda t, p: skm.recall_score(t, p, average="macro", zero_division=0),
}
REGRESSION = {
    Metrics.MAE: skm.mean_absolute_error,
    Metrics.RMSE: lambda t, p: float(np.sqrt(skm.mean_squared_error(t, p))),
    Metrics.R2: skm.r2_score,
}


def bootstrap_ci(data, statistic, cfg: AccuracyConfig, paired=True):
    result = stats.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=cfg.bootstrap_resamples,
                             confidence_level=cfg.confidence, method="percentile",
                             rng=np.random.default_rng(cfg.seed))
    low, high = result.confidence_interval
    return (np.asarray(low), np.asarray(high)) if np.ndim(low) else (float(low), float(high))


def score(y_true, y_pred, task, cfg: AccuracyConfig, label="backend"):
    """Every metric with `_ci_low` / `_ci_high`: scikit-learn point estimate, one paired bootstrap."""
    if len(y_true) != len(y_pred):
        raise AccuracyError(f"data.label: {len(y_true)} labels but backend {label} produced {len(y_pred)} predictions")
    if task == "classification":
        table, statistic = CLASSIFICATION, classification_statistics
        y_true, y_pred = _common_domain(y_true, y_pred)
        _, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
        data = (codes[: len(y_true)], codes[len(y_true):])
    elif task == "multilabel":
        table, statistic = CLASSIFICATION, multilabel_statistics
        y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
        data = (y_true.T, y_pred.T)
    else:
        table, statistic = REGRESSION, regression_statistics
        y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
        data = (y_true, y_pred)
    low, high = bootstrap_ci(data, statistic, cfg)
    out = {}
    for i, (name, point) in enumerate(table.items()):
        out[name] = float(point(y_true, y_pred))
        out[Metrics.ci_low(name)], out[Metrics.ci_high(name)] = float(low[i]), float(high[i])
    return out


def agreement(reference_scores, scores, task, cfg: AccuracyConfig, label="backend", reference_choice=None,
              choice=None):
    """How closely a backend reproduces the reference backend on the same inputs."""
    if reference_scores.shape != scores.shape:
        raise AccuracyError(f"backend {label}: outputs have shape {scores.shape}, reference has "
                            f"{reference_scores.shape}; the models do not match")
    diff, top1 = Metrics.AGREEMENT_MAX_ABS_DIFF, Metrics.AGREEMENT_TOP1
    out = {}
    if scores.dtype.kind == "f" and reference_scores.dtype.kind == "f":  # label outputs have no distance
        ref = reference_scores.reshape(len(scores), -1).astype(np.float64)
        got = scores.reshape(len(scores), -1).astype(np.float64)
        per_sample_diff = np.abs(ref - got).max(axis=1)
        out[diff] = float(per_sample_diff.max())
        out[Metrics.ci_low(diff)], out[Metrics.ci_high(diff)] = bootstrap_ci(
            (per_sample_diff,), lambda d, axis=-1: d.max(axis=axis), cfg, paired=False)
    if task in ("classification", "multilabel"):
        ours, theirs = (to_predictions(reference_scores, task, reference_choice), to_predictions(scores, task, choice))
        same = _same_predictions(ours, theirs).astype(np.float64)
        out[top1] = float(same.mean())
        out[Metrics.ci_low(top1)], out[Metrics.ci_high(top1)] = bootstrap_ci(
            (same,), lambda s, axis=-1: s.mean(axis=axis), cfg, paired=False)
    return out


def _same_predictions(a, b):
    """Per sample: the same prediction (multi-label: the same whole row)."""
    a, b = _common_domain(np.asarray(a), np.asarray(b))
    same = a == b
    return same.reshape(len(same), -1).all(axis=1)


def robustness(backend, x, y_true, cfg: AccuracyConfig, clean_accuracy, choice=None):
    """Accuracy under Gaussian input noise (std = level x each feature's std), as the layout's
    robustness.json describes; seeded, so backends see the same perturbed inputs."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise AccuracyError(f"accuracy.robustness: backend {backend.label}: input noise needs one float input; "
                            "this model's inputs are named or not numbers (set accuracy.robustness: false)")
    rng = np.random.default_rng(cfg.seed)
    feature_std = x.std(axis=0)
    levels = []
    for level in cfg.robustness_levels:
        noisy = (x + rng.standard_normal(x.shape).astype(x.dtype) * (level * feature_std)).astype(x.dtype)
        scores = predict_all(backend, backend.stage(noisy), len(noisy), cfg.batch_size)
        accuracy = float(np.mean(_same_predictions(to_predictions(scores, "classification", choice), y_true)))
        levels.append({"level": float(level), "accuracy": accuracy, "accuracy_drop": clean_accuracy - accuracy})
    report = {"perturbation": "gaussian_noise", "relative_to": "feature_std", "levels": levels}
    return report, max(entry["accuracy_drop"] for entry in levels)


# --- the cross-check: the suite's predictions against the framework's own ------------------------

#: the share of probe samples allowed to disagree, by backend precision, when not configured
DEFAULT_TOLERANCE = {"fp32": 0.01, "fp16": 0.05, "bf16": 0.05}
#: the task's headline metric, the figure a failed check names twice (suite and framework)
HEADLINE = {"classification": Metrics.ACCURACY, "multilabel": Metrics.ACCURACY, "regression": Metrics.R2}


@dataclass
class CrossCheck:
    """How a backend's predictions on the probe samples compare with the framework's own."""

    reference: str  # who made the framework's predictions
    samples: int
    agreement: float  # share of probe samples predicted alike (regression: within tolerance x std)
    tolerance: float
    max_abs_diff: float | None = None  # regression
    score: float | None = None  # the headline metric of the suite's predictions on the probe samples
    reference_score: float | None = None  # ... and of the framework's

    @property
    def passed(self):
        return self.agreement >= 1 - self.tolerance - 1e-12

    def metrics(self):
        figures = {Metrics.CROSSCHECK_AGREEMENT: self.agreement, Metrics.CROSSCHECK_SAMPLES: float(self.samples),
                   Metrics.CROSSCHECK_MAX_ABS_DIFF: self.max_abs_diff, Metrics.CROSSCHECK_SCORE: self.score,
                   Metrics.CROSSCHECK_REFERENCE_SCORE: self.reference_score}
        return {name: float(value) for name, value in figures.items() if value is not None}


def probe_indices(n_samples, count):
    """Evenly spread sample indices (a dataset sorted by class still gives every class)."""
    return np.unique(np.linspace(0, n_samples - 1, min(count, n_samples)).round().astype(np.int64))


def crosscheck_tolerance(cfg: AccuracyConfig, precision):
    return cfg.crosscheck_tolerance if cfg.crosscheck_tolerance is not None else DEFAULT_TOLERANCE[precision]


def crosscheck(predictions, own_predictions, y_true, task, tolerance, reference, where="backend") -> CrossCheck:
    """Compare; raise AccuracyError naming both figures when they disagree beyond `tolerance`."""
    predictions, own_predictions = np.asarray(predictions), np.asarray(own_predictions)
    if own_predictions.size != predictions.size:
        raise AccuracyError(f"{where}: the framework ({reference}) made predictions of shape {own_predictions.shape}, "
                            f"the suite's are {predictions.shape}: not the same output")
    own_predictions = own_predictions.reshape(predictions.shape)
    check = CrossCheck(reference, len(predictions), 0.0, tolerance)
    if task == "regression":
        diff = np.abs(predictions.astype(np.float64) - own_predictions.astype(np.float64))
        scale = float(np.std(own_predictions)) or max(float(np.abs(own_predictions).max()), 1.0)
        check.max_abs_diff = float(diff.max())
        check.agreement = float(np.mean(diff <= tolerance * scale))
    else:
        check.agreement = float(np.mean(_same_predictions(predictions, own_predictions)))
    if y_true is not None and task in HEADLINE:
        check.score = _headline(task, y_true, predictions)
        check.reference_score = _headline(task, y_true, own_predictions)
    if not check.passed:
        raise AccuracyError(_disagreement(check, task, where))
    return check


def check_scores_read_as_predictions(read, own_predictions, tolerance, source, choice, where):
    """Before any backend runs: the scored output, read by the suite's rules on the framework's own
    CPU path, gives the framework's own predictions; else its columns are no class scores in class
    order (a converter's decision values, a custom head) and nothing it yields would be true."""
    same = float(np.mean(_same_predictions(read, np.asarray(own_predictions).reshape(np.shape(read)))))
    if same >= 1 - tolerance - 1e-12:
        return same
    fix = (f"score the model's label output instead (model.output: {choice.label_output})" if choice.label_output
           else "name the output to score (model.output)")
    how = "each column against its threshold" if np.ndim(read) == 2 else "the class of the highest column"
    raise ModelError(f"{where}: output {choice.name!r} read as class scores ({how}"
                     f"{', classes ' + ', '.join(map(str, choice.classes)) if choice.classes else ''}) gives the "
                     f"model's own predictions ({source}) on only {same:.1%} of {len(read)} probe samples: its columns "
                     f"are not class scores in class order; {fix}, or give the class of each column (model.classes)")


def _headline(task, y_true, y_pred):
    if task == "regression":
        return float(skm.r2_score(y_true.astype(np.float64), y_pred.astype(np.float64)))
    if task == "multilabel":
        return float(skm.accuracy_score(y_true.astype(np.int64), np.asarray(y_pred).astype(np.int64)))
    return float(np.mean(_same_predictions(y_true, y_pred)))


def _disagreement(check, task, where):
    alike = "predicted alike" if task != "regression" else "within the tolerance of its values"
    text = (f"{where}: the suite's predictions and the framework's own ({check.reference}) differ: "
            f"{check.agreement:.1%} of {check.samples} probe samples {alike}, below the "
            f"{1 - check.tolerance:.0%} the tolerance allows")
    if check.score is not None:
        metric = HEADLINE[task]
        text += (f"; {metric} {check.score:.4g} through the suite vs {check.reference_score:.4g} by the framework "
                 "on the same samples")
    return (text + ". The suite read the wrong output or class order: name the output with model.output, the "
            "class order with model.classes (accuracy.crosscheck_tolerance loosens the check for reduced precision)")
