"""Compare benchmark runs from MLflow: select, leaderboard, Pareto fronts, significance, reports.

    selection.py     which runs: Selection, one bulk search, the entries; `compare()`
    comparison.py    the model: Entry, Comparison (leaderboard, fronts, artifacts), Issue
    artifacts.py     raw artifacts, downloaded once per comparison
    significance.py  latency and accuracy tests between entries (statistics in ..stats)
    display.py       columns and cells; the rich terminal table
    pages.py         HTML pages from templates/ (the standalone leaderboard)
    slo.py           service-level targets and readiness
    plots.py, report.py   readiness reports (one page per model, a comparison page)
    pareto.py        Pareto fronts and their plots
    cli.py           `aif compare`, `aif report`

Imports point down this list's dependencies only: the model never imports display or report.

    from aifactory.benchmarks.compare import compare
    with compare(experiments=["bench"], tracking_uri="http://127.0.0.1:5000") as cmp:
        cmp.to_frame(); cmp.pareto(); cmp.significance(baseline="logreg")
"""

from ..errors import EmptySelection, ServerUnreachable
from .comparison import Comparison, Entry, Issue
from .selection import Selection, compare, parse_tags

__all__ = ["Comparison", "EmptySelection", "Entry", "Issue", "Selection", "ServerUnreachable", "compare",
           "parse_tags"]
