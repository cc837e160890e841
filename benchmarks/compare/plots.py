"""Figures of the readiness reports, as data: URIs (base64 PNG), so a page needs no network."""

from __future__ import annotations

import base64
import io

import numpy as np


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_plot(y_true, y_pred, title) -> str:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def latency_plot(latencies_by_scenario: dict, title) -> str:
    """Empirical CDF of per-query latency, one line per scenario (log x: tails matter)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for scenario, lat in latencies_by_scenario.items():
        ms = np.sort(np.asarray(lat) * 1e3)
        ax.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=f"{scenario} (n={ms.size})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of queries")
    ax.axhline(0.99, color="grey", lw=0.6, ls="--")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def robustness_plot(levels, title) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([lv["level"] for lv in levels], [lv["accuracy"] for lv in levels], marker="o")
    ax.set_xlabel("noise level (× feature std)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def pareto_png(front, x, y) -> str:
    from .pareto import plot_png

    buf = io.BytesIO()
    plot_png(front, x, y, buf, group="group", title=f"{y} vs {x}")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
