"""`aif compare` and `aif report`: leaderboards, Pareto fronts, significance and readiness reports.

Both read benchmark runs from the MLflow tracking server (--tracking-uri, else MLFLOW_TRACKING_URI).
Only an empty selection or unusable options end with a non-zero exit; missing or incomparable
data is listed under the results instead.
"""

from __future__ import annotations

import functools
import json
import sys
from contextlib import nullcontext

import click

from aifactory.common.errors import cli_errors

from ..errors import MLflowUnavailable


def selection_options(fn):
    """Options shared by both commands: which runs to compare."""
    options = [
        click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
                     help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)."),
        click.option("-e", "--experiment", "experiments", multiple=True, metavar="NAME",
                     help="Experiment name or id; repeatable. Default: all experiments."),
        click.option("-m", "--model", "models", multiple=True, metavar="NAME",
                     help="Only these models (tag aif.model); repeatable."),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                     help="Only runs whose parent or a child has this tag, e.g. aif.backend=torch:eager; repeatable."),
        click.option("-r", "--run-id", "run_ids", multiple=True, metavar="ID",
                     help="Only these runs (parent or child ids); repeatable."),
        click.option("--sort-by", metavar="COLUMN", help="Leaderboard column to sort by within each hardware group "
                     "(default: accuracy, best first)."),
        click.option("--baseline", metavar="MODEL",
                     help="Model (label, name or run id prefix) the others are tested against for regressions."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(tracking_uri, experiments, models, tags, run_ids):
    from .selection import compare, parse_tags

    try:
        tag_filter = parse_tags(tags)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--tag") from None
    return compare(experiments, models, tag_filter, run_ids, tracking_uri=tracking_uri)


def tracking_errors(fn):
    """MLflow's own failures (an error answer, a dropped connection) become MLflowUnavailable,
    naming the server, so that `cli_errors` prints one line instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, RequestException, ConnectionError) as err:
            if isinstance(err, MLflowUnavailable):  # already says which server and why
                raise
            uri = kwargs.get("tracking_uri") or "(default)"
            raise MLflowUnavailable(f"MLflow tracking server {uri}: {err}") from None

    return wrapper


@click.command(name="compare")
@selection_options
@click.option("--ascending/--descending", default=None, help="Sort order (default: best first for the column).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "csv", "html", "json"]), default="table",
              show_default=True, help="Leaderboard output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the leaderboard here instead of stdout.")
@click.option("--pareto", "pareto_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Write the latency-accuracy Pareto front: .png (static) or .html (interactive); repeatable.")
@click.option("--significance", is_flag=True, help="Test every model against --baseline (default: the leader).")
@click.option("--percentile", type=click.FloatRange(0, 100), default=99, show_default=True,
              help="Latency percentile compared by the significance test.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level.")
@click.option("--fail-on-regression", is_flag=True,
              help="Exit with status 3 when a model is significantly slower or less accurate than the baseline.")
@cli_errors
@tracking_errors
def compare(tracking_uri, experiments, models, tags, run_ids, sort_by, baseline, ascending, fmt, output,
            pareto_paths, significance, percentile, alpha, fail_on_regression):
    """Leaderboard of benchmark runs, grouped by hardware; optional Pareto fronts and significance."""
    cmp = _load(tracking_uri, experiments, models, tags, run_ids)
    with cmp:
        frame = cmp.to_frame(sort_by=sort_by, ascending=ascending)
        if fmt == "table":
            with open(output, "w", encoding="utf-8") if output else nullcontext() as file:
                cmp.print(_console(file), sort_by=sort_by, ascending=ascending)
        else:
            text = {"csv": lambda: frame.to_csv(index=False),
                    "html": lambda: cmp.to_html(sort_by=sort_by),
                    "json": lambda: frame.to_json(orient="records", indent=1)}[fmt]()
            _emit(text, output)
        for path in pareto_paths:
            cmp.plot(path)
            click.echo(f"Pareto front written to {path}", err=True)
        shown = len(cmp.issues) if fmt == "table" else 0  # the table already listed these
        regressions = False
        if significance or baseline or fail_on_regression:
            table = cmp.significance(baseline, percentile=percentile, alpha=alpha)
            regressions = bool(len(table)) and bool(table["regression"].any())
            _print_significance(table, to_stderr=fmt != "table" and not output)
        for issue in cmp.issues[shown:]:
            click.echo(f"{issue.severity}: {issue}", err=True)
    if fail_on_regression and regressions:
        sys.exit(3)


def _console(file=None, stderr=False):
    """A rich console; piped or captured output gets a wide page instead of rich's 80 columns."""
    from rich.console import Console

    console = Console(file=file, stderr=stderr)
    return console if console.is_terminal else Console(file=file, stderr=stderr, width=220)


def _emit(text, output):
    if output:
        from .report import write_atomic

        write_atomic(output, text)
        click.echo(f"written to {output}", err=True)
    else:
        click.echo(text)


def _print_significance(table, to_stderr=False):
    from rich.table import Table

    console = _console(stderr=to_stderr)  # stderr keeps stdout parseable when it carries CSV/JSON
    if table.empty:
        console.print("significance: no test could be run (see the issues above)")
        return
    out = Table(title=f"significance against {table.iloc[0]['baseline']}", title_justify="left")
    for column in ("model", "test", "baseline_value", "value", "difference", "CI", "pvalue", "verdict"):
        out.add_column(column)
    for _, row in table.iterrows():
        ci = "–" if row["ci_low"] != row["ci_low"] else f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
        verdict = f"[red]REGRESSION: {row['verdict']}[/red]" if row["regression"] else row["verdict"]
        out.add_row(row["model"], row["test"], f"{row['baseline_value']:.4g}", f"{row['value']:.4g}",
                    f"{row['difference']:+.4g}", ci, f"{row['pvalue']:.3g}", verdict)
    console.print(out)


def _parse_slos(ctx, param, values):
    from .slo import parse_slo

    try:
        return [parse_slo(v) for v in values]
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command(name="report")
@selection_options
@click.option("--slo", "slos", multiple=True, callback=_parse_slos, metavar="TARGET",
              help="Service-level target, e.g. 'p99 <= 15 ms at 200 QPS', 'p90 < 5 ms in SingleStream', "
                   "'accuracy >= 95%'; repeatable.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default="aif-reports", show_default=True,
              help="Directory for the HTML pages.")
@click.option("--log/--no-log", "log_to_mlflow", default=True, show_default=True,
              help="Log the pages as MLflow artifacts (model pages on their runs, the comparison on a run of its own).")
@cli_errors
@tracking_errors
def report(tracking_uri, experiments, models, tags, run_ids, sort_by, baseline, slos, output_dir, log_to_mlflow):
    """Model readiness reports: one HTML page per model and a comparison page."""
    from .report import log_reports, write_reports

    cmp = _load(tracking_uri, experiments, models, tags, run_ids)
    with cmp:
        paths = write_reports(cmp, output_dir, slos=slos, baseline=baseline, sort_by=sort_by)
        for label, path in paths.items():
            click.echo(f"{label}: {path}")
        if log_to_mlflow:
            logged = log_reports(cmp, paths)
            click.echo(json.dumps({"logged_comparison_run": logged["comparison_run_id"],
                                   "logged_on_runs": logged["runs"]}))
        for issue in cmp.issues:
            click.echo(f"{issue.severity}: {issue}", err=True)
