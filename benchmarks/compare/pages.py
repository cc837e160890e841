"""HTML pages from the templates beside this module (jinja2, autoescaped, strict about missing data).

The standalone leaderboard page lives here, so `Comparison.to_html()` needs nothing of the
readiness reports (report.py), which render their pages through the same environment.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from .display import format_cell, leaderboard_groups


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = num
    env.filters["ci"] = lambda row, name: format_cell(row, name)
    return env


def num(value, digits=4):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (int, float, np.floating, np.integer)):
        return f"{value:.{digits}g}"
    return str(value)


def render(template, title, **context) -> str:
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return environment().get_template(template).render(title=title, generated=generated, **context)


def leaderboard_page(cmp, sort_by=None) -> str:
    columns, groups = leaderboard_groups(cmp, sort_by)
    return render("report_leaderboard.html.j2", "Leaderboard", columns=columns, groups=groups, issues=cmp.issues)
