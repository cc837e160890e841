"""Latency-accuracy (and energy-accuracy) Pareto fronts, per hardware group.

A model is on the front when no other model on the same hardware is at least as good on both
axes and strictly better on one. Lower cost (latency, energy) and higher accuracy are better.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..layout import Metrics

PARETO_COLOR = "#1f77b4"
DOMINATED_COLOR = "#b0b0b0"


def pareto_mask(cost, benefit) -> np.ndarray:
    """Boolean mask of non-dominated points (minimise `cost`, maximise `benefit`).

    Points with a NaN on either axis are never on the front.
    """
    cost = np.asarray(cost, dtype=float)
    benefit = np.asarray(benefit, dtype=float)
    valid = ~(np.isnan(cost) | np.isnan(benefit))
    mask = np.zeros(cost.shape, dtype=bool)
    idx = np.flatnonzero(valid)
    # Sort by cost, best benefit first on ties: a point is on the front iff its benefit beats
    # every cheaper (or equally cheap, earlier-sorted) point's.
    order = idx[np.lexsort((-benefit[idx], cost[idx]))]
    best = -math.inf
    prev_cost, prev_benefit = None, None
    for i in order:
        if benefit[i] > best:
            mask[i] = True
            best = benefit[i]
        elif cost[i] == prev_cost and benefit[i] == prev_benefit:
            mask[i] = mask[prev_i]  # exact duplicates share their fate
        prev_i, prev_cost, prev_benefit = i, cost[i], benefit[i]
    return mask


def pareto_front(frame: pd.DataFrame, x: str, y: str = Metrics.ACCURACY, group: str = "hardware") -> pd.DataFrame:
    """Copy of `frame` with a boolean `pareto` column, computed within each `group`."""
    out = frame.copy()
    out["pareto"] = False
    if x not in out or y not in out:
        return out
    for _, part in out.groupby(group, dropna=False, sort=False):
        out.loc[part.index, "pareto"] = pareto_mask(part[x], part[y])
    return out


def _label(row) -> str:
    return f"{row['model']} ({row['backend']})" if row.get("backend") else str(row["model"])


def _plottable(front: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return front.dropna(subset=[x, y]) if x in front and y in front else front.iloc[0:0]


def plot_png(front: pd.DataFrame, x: str, y: str, path, *, group: str = "hardware", title: str = ""):
    """One panel per hardware group; front in colour joined by a step line, dominated greyed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _plottable(front, x, y)
    groups = list(data.groupby(group, sort=True)) or [("no data", data)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (name, part) in zip(axes[0], groups):
        dominated = part[~part["pareto"]]
        front_pts = part[part["pareto"]].sort_values(x)
        ax.scatter(dominated[x], dominated[y], c=DOMINATED_COLOR, label="dominated", zorder=2)
        ax.scatter(front_pts[x], front_pts[y], c=PARETO_COLOR, label="Pareto front", zorder=3)
        if len(front_pts) > 1:
            ax.step(front_pts[x], front_pts[y], where="post", c=PARETO_COLOR, alpha=0.6, zorder=1)
        middle = (part[x].min() + part[x].max()) / 2 if len(part) else 0
        for _, row in part.iterrows():
            color = "black" if row["pareto"] else DOMINATED_COLOR
            # labels point inwards, so the rightmost run's name is not cut at the panel's edge
            inward = row[x] > middle
            ax.annotate(_label(row), (row[x], row[y]), fontsize=7, color=color, ha="right" if inward else "left",
                        xytext=(-4 if inward else 4, 4), textcoords="offset points")
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        if len(part):  # below the panel: inside it, the legend covered the labels of runs
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_figure(front: pd.DataFrame, x: str, y: str, *, group: str = "hardware", title: str = ""):
    """Interactive plotly figure: one trace per (group, on front / dominated); hover shows the run."""
    import plotly.graph_objects as go

    data = _plottable(front, x, y)
    fig = go.Figure()
    for name, part in data.groupby(group, sort=True):
        for on_front in (True, False):
            pts = part[part["pareto"] == on_front].sort_values(x)
            if pts.empty:
                continue
            fig.add_trace(go.Scatter(
                x=pts[x], y=pts[y],
                mode="lines+markers+text" if on_front and len(pts) > 1 else "markers+text",
                line={"shape": "hv"},
                marker={"size": 10, "color": None if on_front else DOMINATED_COLOR},
                text=[_label(r) for _, r in pts.iterrows()],
                textposition="top right",
                customdata=pts[["run_id"]].to_numpy() if "run_id" in pts else None,
                hovertemplate="%{text}<br>" + x + "=%{x:.4g}<br>" + y + "=%{y:.4g}<br>run %{customdata[0]}<extra></extra>",
                name=f"{name}: {'Pareto front' if on_front else 'dominated'}",
                opacity=1.0 if on_front else 0.6,
            ))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white", height=460)
    return fig


def plot_html(front: pd.DataFrame, x: str, y: str, *, group: str = "hardware", title: str = "",
              full_html: bool = True, include_plotlyjs=True) -> str:
    """Self-contained HTML (plotly.js inlined, so it works with no network)."""
    fig = plot_figure(front, x, y, group=group, title=title)
    return fig.to_html(full_html=full_html, include_plotlyjs=include_plotlyjs)


def write_plot(front: pd.DataFrame, x: str, y: str, path, *, group: str = "group"):
    """The front as PNG (path ends in .png) or as interactive self-contained HTML."""
    if str(path).endswith(".png"):
        plot_png(front, x, y, path, group=group)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(plot_html(front, x, y, group=group, title=f"{y} vs {x}"))
