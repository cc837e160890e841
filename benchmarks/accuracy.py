"""Accuracy with bootstrap confidence intervals, and agreement between backends.

Point estimates come from scikit-learn. Confidence intervals come from scipy.stats.bootstrap
(percentile method, paired resampling of labels and predictions); its statistic is a vectorized
numpy twin of the scikit-learn metrics (all metrics from one confusion-matrix pass per resample),
so a thousand resamples take milliseconds; the twin is checked against scikit-learn in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .config import AccuracyConfig
from .errors import AccuracyError, quoted
from .layout import Metrics


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
    scores = np.concatenate(outputs).astype(np.float32)
    check_finite(scores, backend.label)
    return scores


def check_finite(scores, label):
    bad = ~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AccuracyError(f"backend {label}: model produced NaN/inf outputs for {int(bad.sum())} of "
                            f"{len(scores)} samples (first at sample {first})")


def to_predictions(scores, task):
    if task == "regression":
        return scores.reshape(len(scores), -1)[:, 0]
    flat = scores.reshape(len(scores), -1)
    if flat.shape[1] > 1:
        return flat.argmax(axis=1)
    column = flat[:, 0]
    # One output column: a probability if it stays in [0, 1], else a logit.
    threshold = 0.5 if column.min() >= 0 and column.max() <= 1 else 0.0
    return (column > threshold).astype(np.int64)


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
        _, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
        data = (codes[: len(y_true)], codes[len(y_true):])
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


def agreement(reference_scores, scores, task, cfg: AccuracyConfig, label="backend"):
    """How closely a backend reproduces the reference backend on the same inputs."""
    if reference_scores.shape != scores.shape:
        raise AccuracyError(f"backend {label}: outputs have shape {scores.shape}, reference has "
                            f"{reference_scores.shape}; the models do not match")
    ref = reference_scores.reshape(len(scores), -1).astype(np.float64)
    got = scores.reshape(len(scores), -1).astype(np.float64)
    per_sample_diff = np.abs(ref - got).max(axis=1)
    diff, top1 = Metrics.AGREEMENT_MAX_ABS_DIFF, Metrics.AGREEMENT_TOP1
    out = {diff: float(per_sample_diff.max())}
    out[Metrics.ci_low(diff)], out[Metrics.ci_high(diff)] = bootstrap_ci(
        (per_sample_diff,), lambda d, axis=-1: d.max(axis=axis), cfg, paired=False)
    if task == "classification":
        same = (to_predictions(reference_scores, task) == to_predictions(scores, task)).astype(np.float64)
        out[top1] = float(same.mean())
        out[Metrics.ci_low(top1)], out[Metrics.ci_high(top1)] = bootstrap_ci(
            (same,), lambda s, axis=-1: s.mean(axis=axis), cfg, paired=False)
    return out


def robustness(backend, x, y_true, cfg: AccuracyConfig, clean_accuracy):
    """Accuracy under Gaussian input noise (std = level x each feature's std), as the layout's
    robustness.json describes; seeded, so backends see the same perturbed inputs."""
    rng = np.random.default_rng(cfg.seed)
    feature_std = x.std(axis=0)
    levels = []
    for level in cfg.robustness_levels:
        noisy = (x + rng.standard_normal(x.shape).astype(x.dtype) * (level * feature_std)).astype(x.dtype)
        scores = predict_all(backend, backend.stage(noisy), len(noisy), cfg.batch_size)
        accuracy = float(np.mean(to_predictions(scores, "classification") == y_true))
        levels.append({"level": float(level), "accuracy": accuracy, "accuracy_drop": clean_accuracy - accuracy})
    report = {"perturbation": "gaussian_noise", "relative_to": "feature_std", "levels": levels}
    return report, max(entry["accuracy_drop"] for entry in levels)
