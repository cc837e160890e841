"""How a leaderboard is shown: which columns, how a cell reads, the rich terminal table.

Shared by `Comparison.print()`, the HTML pages and the readiness reports; reads a comparison
through its public methods only (to_frame, quality_metric, issues).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..layout import Metrics

TEXT_COLUMNS = {"label", "model", "backend", "precision", "hardware", "dataset", "task", "run_id"}
SUMMARY_METRICS = [Metrics.THROUGHPUT, Metrics.OUTPUT_TOKENS_PER_S, Metrics.GOODPUT, Metrics.ENERGY_PER_INFERENCE,
                   Metrics.ENERGY_PER_OUTPUT_TOKEN, Metrics.PEAK_HOST_MEM, Metrics.PEAK_GPU_MEM]


def display_columns(frame: pd.DataFrame, quality: str) -> list:
    """Columns worth showing in a terminal or summary table (the CSV keeps them all)."""
    keep = ["model", "backend", "precision", quality]
    keep += [m for m in (Metrics.PERPLEXITY,) if m != quality]
    keep += [c for c in frame.columns if c.endswith(("p90_ms", "p99_ms"))]
    keep += [*SUMMARY_METRICS, "run_id"]
    return [c for c in keep if c in frame.columns and (c in TEXT_COLUMNS or frame[c].notna().any())]


def format_cell(row, column) -> str:
    value = row.get(column)
    if column == "run_id":
        return str(value)[:8]
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    low, high = row.get(Metrics.ci_low(column)), row.get(Metrics.ci_high(column))
    if low is not None and high is not None and not (np.isnan(low) or np.isnan(high)):
        return f"{value:.4f} [{low:.4f}, {high:.4f}]"
    return f"{value:.4g}"


def leaderboard_groups(cmp, sort_by=None, ascending=None):
    """(columns shown, [{"hardware", "rows" of formatted cells}]) one group per hardware."""
    frame = cmp.to_frame(sort_by=sort_by, ascending=ascending)
    columns = display_columns(frame, cmp.quality_metric)
    groups = []
    for hardware, part in frame.groupby("hardware", sort=False):
        rows = [[format_cell(row, c) for c in columns] for _, row in part.iterrows()]
        groups.append({"hardware": hardware, "rows": rows})
    return columns, groups


def print_leaderboard(cmp, console=None, sort_by=None, ascending=None):
    """Rich terminal table, one per hardware group, then the comparison's issues."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    columns, groups = leaderboard_groups(cmp, sort_by, ascending)
    for group in groups:
        table = Table(title=f"hardware: {group['hardware']}", title_justify="left")
        for column in columns:
            header = column.replace(".", "\n").replace("_", " ")
            table.add_column(header, justify="left" if column in TEXT_COLUMNS else "right", overflow="fold")
        for row in group["rows"]:
            table.add_row(*row)
        console.print(table)
    for issue in cmp.issues:
        console.print(f"[yellow]{issue.severity}[/yellow] {issue}")
