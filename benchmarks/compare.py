"""Compare benchmark runs from MLflow: select, leaderboard, Pareto fronts, significance.

Reads runs laid out as docs/mlflow-layout.md describes: a parent run per benchmark and a child
per (backend, scenario). One leaderboard row ("entry") is one model under one backend and
precision on one hardware fingerprint, built from the parent and its children.

    cmp = compare(experiments=["bench"], tracking_uri="http://127.0.0.1:5000")
    cmp.to_frame(); cmp.pareto(); cmp.significance(baseline="logreg")

Metrics come from one bulk `search_runs` per page; artifacts (raw latencies, predictions) are
downloaded only when a significance test or a report needs them, and cached.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

KIND_PARENT = "benchmark"
KIND_CHILD = "benchmark.child"
ACCURACY_SCENARIO = "Accuracy"
SCENARIO_ORDER = ["SingleStream", "MultiStream", "Server", "Offline"]
PERCENTILES = ("p90", "p99")
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")
REGRESSION_METRICS = ("r2", "mae", "rmse")
PAGE_SIZE = 10000

# MLflow draws a progress bar per artifact download; a comparison downloads many small ones.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class EmptySelection(ValueError):
    """Nothing matched the selection; the message says what was asked for."""


@dataclass(frozen=True)
class Issue:
    """Something missing or incomparable; reports list these instead of failing."""

    subject: str
    message: str
    severity: str = "warning"  # "warning": data missing or not comparable; "info": worth knowing

    def __str__(self):
        return f"{self.subject}: {self.message}"


@dataclass
class Selection:
    """Which runs to compare. Empty fields select everything (all active experiments)."""

    experiments: tuple = ()  # names or ids
    models: tuple = ()  # values of the `aif.model` tag
    tags: dict = field(default_factory=dict)  # tag -> value; matched on the parent or any child
    run_ids: tuple = ()  # parent or child run ids

    def describe(self) -> str:
        parts = [f"{name}={list(value)}" for name, value in (
            ("experiments", self.experiments), ("models", self.models), ("run_ids", self.run_ids)) if value]
        parts += [f"tag {k}={v}" for k, v in self.tags.items()]
        return ", ".join(parts) or "all experiments"


@dataclass
class Entry:
    """One model under one backend/precision, from a benchmark parent run and its children."""

    parent: object  # mlflow.entities.Run
    backend: str
    precision: str
    accuracy_run: object = None
    scenario_runs: dict = field(default_factory=dict)  # scenario -> Run
    label: str = ""

    def tag(self, name, default=""):
        for run in (self.accuracy_run, *self.scenario_runs.values(), self.parent):
            if run is not None and name in run.data.tags:
                return run.data.tags[name]
        return default

    @property
    def run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def model(self) -> str:
        return self.tag("aif.model") or self.parent.info.run_name or self.run_id[:8]

    @property
    def runs(self):
        return [r for r in (self.parent, self.accuracy_run, *self.scenario_runs.values()) if r is not None]

    def accuracy_metrics(self) -> dict:
        """Accuracy metrics: from the Accuracy child, else those copied onto the parent."""
        for run in (self.accuracy_run, self.parent):
            if run is not None and any(m in run.data.metrics for m in CLASSIFICATION_METRICS + REGRESSION_METRICS):
                return run.data.metrics
        return {}

    def row(self) -> dict:
        acc = self.accuracy_metrics()
        row = {
            "label": self.label, "model": self.model, "backend": self.backend, "precision": self.precision,
            "hardware": self.tag("aif.hardware", "unknown"), "dataset": self.tag("aif.dataset", "unknown"),
            "task": self.tag("aif.task", ""), "run_id": self.run_id,
            "experiment_id": self.parent.info.experiment_id,
        }
        for name in CLASSIFICATION_METRICS[:1] + REGRESSION_METRICS:
            if name in acc:
                row[name] = acc[name]
                row[f"{name}_ci_low"] = acc.get(f"{name}_ci_low", np.nan)
                row[f"{name}_ci_high"] = acc.get(f"{name}_ci_high", np.nan)
        for name in ("f1_macro", "agreement_top1", "agreement_max_abs_diff"):
            if name in acc:
                row[name] = acc[name]
        for scenario, run in self.scenario_runs.items():
            for p in PERCENTILES:
                key = f"latency_{p}_ms"
                if key in run.data.metrics:
                    row[f"{scenario}.{p}_ms"] = run.data.metrics[key]
        row.update(self._aggregates())
        return row

    def _aggregates(self) -> dict:
        def from_scenarios(metric, prefer="Offline", reduce=max):
            runs = self.scenario_runs
            if prefer in runs and metric in runs[prefer].data.metrics:
                return runs[prefer].data.metrics[metric]
            values = [r.data.metrics[metric] for r in runs.values() if metric in r.data.metrics]
            return reduce(values) if values else None

        out = {
            "throughput_samples_per_s": from_scenarios("throughput_samples_per_s"),
            "server_max_valid_qps": from_scenarios("server_max_valid_qps", prefer="Server"),
            "energy_j_per_inference": from_scenarios("energy_j_per_inference", reduce=min),
            "peak_host_mem_mb": from_scenarios("peak_host_mem_mb", prefer=None),
            "peak_gpu_mem_mb": from_scenarios("peak_gpu_mem_mb", prefer=None),
        }
        return {k: v for k, v in out.items() if v is not None}


IDENTITY_COLUMNS = ["label", "model", "backend", "precision", "hardware", "dataset", "task", "run_id",
                    "experiment_id"]


def _ordered_columns(columns) -> list:
    """Identity, then quality with its CI, then latency per scenario (MLPerf order), then the rest."""
    def rank(column):
        if column in IDENTITY_COLUMNS:
            return (0, IDENTITY_COLUMNS.index(column), "")
        if column.startswith(("accuracy", "r2", "mae", "rmse", "f1_macro", "agreement")):
            return (1, 0, "")
        scenario = column.split(".")[0]
        if scenario in SCENARIO_ORDER:
            return (2, SCENARIO_ORDER.index(scenario), column)
        return (3, 0, "")

    return sorted(columns, key=rank)  # stable: equal ranks keep their insertion order


def _is_deleted(run) -> bool:
    return run.info.lifecycle_stage == "deleted"


class Comparison:
    """Entries selected from MLflow, plus the issues found while selecting them."""

    def __init__(self, entries, issues, client, selection: Selection):
        self.entries = entries
        self.issues = list(issues)
        self.client = client
        self.selection = selection
        self._cache_dir = None
        self._check_comparable()

    # ---------------------------------------------------------------- checks
    def _check_comparable(self):
        for entry in self.entries:
            if not entry.accuracy_metrics():
                self.issues.append(Issue(entry.label, "no accuracy metrics (no Accuracy child run and no "
                                         "'accuracy'/'r2' metric on the parent): accuracy columns left empty"))
            if not any("latency_p99_ms" in r.data.metrics for r in entry.scenario_runs.values()):
                self.issues.append(Issue(entry.label, "no latency metrics (no scenario child run with "
                                         "'latency_p99_ms'): latency columns left empty"))
        for parent in {e.run_id: e.parent for e in self.entries}.values():
            status = parent.info.status
            if status == "FAILED":
                error = parent.data.tags.get("aif.error", "no error recorded")
                self.issues.append(Issue(f"run {parent.info.run_id}", f"benchmark FAILED ({error}); "
                                         "showing what it logged before failing"))
            elif status in ("RUNNING", "SCHEDULED"):
                self.issues.append(Issue(f"run {parent.info.run_id}", "benchmark still running; figures may be "
                                         "incomplete"))
        datasets = sorted({e.tag("aif.dataset", "unknown") for e in self.entries})
        if len(datasets) > 1:
            self.issues.append(Issue("selection", f"runs use different datasets ({', '.join(datasets)}): "
                                     "accuracy is compared only within a dataset"))
        hardware = sorted({e.tag("aif.hardware", "unknown") for e in self.entries})
        if len(hardware) > 1:
            self.issues.append(Issue("selection", f"runs come from {len(hardware)} hardware fingerprints "
                                     f"({', '.join(hardware)}): latency is compared only within one", "info"))

    # ---------------------------------------------------------------- tables
    @cached_property
    def _frame(self) -> pd.DataFrame:
        rows = [e.row() for e in self.entries]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        return frame[_ordered_columns(frame.columns)]

    @property
    def scenarios(self) -> list:
        return [s for s in SCENARIO_ORDER if any(s in e.scenario_runs for e in self.entries)]

    @property
    def quality_metric(self) -> str:
        """The higher-is-better score that leaderboards sort by and Pareto fronts plot."""
        frame = self._frame
        for name in ("accuracy", "r2"):
            if name in frame and frame[name].notna().any():
                return name
        return "accuracy"

    def default_sort(self) -> str:
        return self.quality_metric

    def latency_column(self, percentile: str = "p99") -> str | None:
        """The latency used for fronts: the first scenario (MLPerf order) that has it."""
        for scenario in self.scenarios:
            column = f"{scenario}.{percentile}_ms"
            if column in self._frame:
                return column
        return None

    def to_frame(self, sort_by: str | None = None, ascending: bool | None = None) -> pd.DataFrame:
        """The leaderboard: one row per entry, grouped by hardware, sorted within each group."""
        frame = self._frame.copy()
        if frame.empty:
            return frame
        sort_by = sort_by or self.default_sort()
        if sort_by not in frame:
            raise ValueError(f"sort_by: no column {sort_by!r}; expected one of {', '.join(frame.columns)}")
        if ascending is None:  # latency, energy, memory: lower is better; scores: higher
            ascending = sort_by.endswith(("_ms", "_mb", "j_per_inference", "mae", "rmse"))
        frame = frame.sort_values(["hardware", sort_by], ascending=[True, ascending], na_position="last",
                                  kind="stable")
        return frame.reset_index(drop=True)

    def to_csv(self, path=None, **kwargs):
        return self.to_frame(**kwargs).to_csv(path, index=False)

    def to_html(self, **kwargs) -> str:
        """The leaderboard as a standalone HTML page (the full comparison page is `report`)."""
        from .report import render_leaderboard_page

        return render_leaderboard_page(self, **kwargs)

    def print(self, console=None, **kwargs):
        """Rich terminal table, one per hardware group."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        frame = self.to_frame(**kwargs)
        shown = display_columns(frame, self.quality_metric)
        for hardware, part in frame.groupby("hardware", sort=False):
            table = Table(title=f"hardware: {hardware}", title_justify="left")
            for column in shown:
                header = column.replace(".", "\n").replace("_", " ")
                table.add_column(header, justify="left" if column in TEXT_COLUMNS else "right",
                                 overflow="fold")
            for _, row in part.iterrows():
                table.add_row(*(format_cell(row, c) for c in shown))
            console.print(table)
        for issue in self.issues:
            console.print(f"[yellow]{issue.severity}[/yellow] {issue}")

    # ---------------------------------------------------------------- fronts
    def pareto(self, x: str | None = None, y: str | None = None) -> pd.DataFrame:
        """Leaderboard with a `pareto` column, computed per hardware (and dataset when they differ)."""
        from .pareto import pareto_front

        frame = self.to_frame()
        x = x or self.latency_column()
        y = y or self.quality_metric
        if frame.empty or x is None:
            frame["pareto"] = False
            return frame
        frame["group"] = self._group_labels(frame)
        return pareto_front(frame, x=x, y=y, group="group")

    def _group_labels(self, frame):
        if frame["dataset"].nunique() > 1:
            return frame["hardware"] + " · " + frame["dataset"]
        return frame["hardware"]

    def fronts(self) -> list:
        """(x, y) pairs worth plotting: latency-accuracy, and energy-accuracy when energy is present."""
        y = self.quality_metric
        pairs = []
        if self.latency_column():
            pairs.append((self.latency_column(), y))
        if "energy_j_per_inference" in self._frame and self._frame["energy_j_per_inference"].notna().any():
            pairs.append(("energy_j_per_inference", y))
        return pairs

    def plot(self, path, x=None, y=None):
        """Pareto front as PNG (path ends in .png) or interactive self-contained HTML."""
        from . import pareto

        x = x or self.latency_column()
        y = y or self.quality_metric
        front = self.pareto(x, y)
        if str(path).endswith(".png"):
            pareto.plot_png(front, x, y, path, group="group")
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(pareto.plot_html(front, x, y, group="group", title=f"{y} vs {x}"))
        return path

    # ---------------------------------------------------------------- artifacts
    @property
    def cache_dir(self) -> str:
        if self._cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aif-compare-")
            self._cache_dir = self._tmp.name
        return self._cache_dir

    def artifact(self, run, path):
        """Local path of a run's artifact, or None when the run does not have it."""
        dst = os.path.join(self.cache_dir, run.info.run_id)
        local = os.path.join(dst, path)
        if os.path.exists(local):
            return local
        os.makedirs(dst, exist_ok=True)
        try:
            return self.client.download_artifacts(run.info.run_id, path, dst)
        except Exception:  # MLflow raises several types for "no such artifact"
            return None

    def latencies(self, entry: Entry, scenario: str):
        run = entry.scenario_runs.get(scenario)
        local = run is not None and self.artifact(run, "latencies.npy")
        return np.load(local) if local else None

    def predictions(self, entry: Entry):
        run = entry.accuracy_run or entry.parent
        local = self.artifact(run, "predictions.npz")
        if not local:
            return None
        with np.load(local, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def results_json(self, entry: Entry) -> dict:
        local = self.artifact(entry.parent, "results.json")
        if not local:
            return {}
        try:
            with open(local, encoding="utf-8") as f:
                return json.load(f)
        except ValueError:
            return {}

    def robustness(self, entry: Entry) -> dict:
        run = entry.accuracy_run or entry.parent
        local = self.artifact(run, "robustness.json")
        if not local:
            return {}
        try:
            with open(local, encoding="utf-8") as f:
                return json.load(f)
        except ValueError:
            return {}

    # ---------------------------------------------------------------- significance
    def entry(self, name: str) -> Entry:
        """Find an entry by label, model name or (prefix of a) parent run id."""
        for test in (lambda e: e.label == name, lambda e: e.model == name, lambda e: e.run_id.startswith(name)):
            found = [e for e in self.entries if test(e)]
            if found:
                return found[0]
        known = ", ".join(e.label for e in self.entries)
        raise ValueError(f"baseline: no model {name!r} in the selection; expected one of: {known}")

    def significance(self, baseline: str | None = None, *, percentile: float = 99, alpha: float = 0.05,
                     n_resamples: int = 1000) -> pd.DataFrame:
        """Every other entry against `baseline` (default: the first leaderboard row).

        One row per test: latency per common scenario (bootstrap CI of the percentile difference,
        Mann-Whitney p) and accuracy (McNemar). `regression` is True when the entry is
        significantly slower or less accurate than the baseline.
        """
        from . import stats

        if not self.entries:
            return pd.DataFrame()
        base = self.entry(baseline) if baseline else self._by_label(self.to_frame().iloc[0]["label"])
        rows = []
        for other in self.entries:
            if other is base:
                continue
            rows += self._latency_tests(base, other, stats, percentile, alpha, n_resamples)
            rows += self._accuracy_tests(base, other, stats, alpha)
        return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)

    def _by_label(self, label):
        return next(e for e in self.entries if e.label == label)

    def _latency_tests(self, base, other, stats, percentile, alpha, n_resamples):
        rows = []
        if base.tag("aif.hardware") != other.tag("aif.hardware"):
            self._note(other.label, f"latency not compared with baseline {base.label}: different hardware")
            return rows
        for scenario in SCENARIO_ORDER:
            if scenario not in base.scenario_runs or scenario not in other.scenario_runs:
                continue
            a, b = self.latencies(base, scenario), self.latencies(other, scenario)
            if a is None or b is None:
                missing = base.label if a is None else other.label
                self._note(missing, f"{scenario}: no latencies.npy artifact; latency significance skipped")
                continue
            if min(a.size, b.size) < 2:
                # LoadGen's Offline issues every sample as one query: a single latency, no distribution
                self._note(other.label, f"{scenario}: latencies.npy holds {min(a.size, b.size)} query; "
                           "no latency distribution to test (compare throughput instead)", "info")
                continue
            try:
                result = stats.compare_latency(a, b, percentile, alpha=alpha, n_resamples=n_resamples)
            except ValueError as err:
                self._note(other.label, f"{scenario}: {err}")
                continue
            rows.append({
                "baseline": base.label, "model": other.label, "test": f"latency p{percentile:g} {scenario}",
                "baseline_value": result.a_ms, "value": result.b_ms, "difference": result.diff_ms,
                "ci_low": result.ci_low_ms, "ci_high": result.ci_high_ms, "pvalue": result.mannwhitney_p,
                "method": "bootstrap CI of percentile difference; Mann-Whitney U p",
                "verdict": result.verdict, "regression": result.verdict == "slower",
            })
        return rows

    def _accuracy_tests(self, base, other, stats, alpha):
        if base.tag("aif.dataset") != other.tag("aif.dataset"):
            self._note(other.label, f"accuracy not compared with baseline {base.label}: different datasets")
            return []
        pa, pb = self.predictions(base), self.predictions(other)
        if pa is None or pb is None:
            missing = base.label if pa is None else other.label
            self._note(missing, "no predictions.npz artifact; McNemar test skipped")
            return []
        try:
            y_true, ya, yb = stats.align_predictions(pa, pb)
            result = stats.compare_accuracy(y_true, ya, yb, alpha=alpha)
        except ValueError as err:
            self._note(other.label, str(err))
            return []
        return [{
            "baseline": base.label, "model": other.label, "test": "accuracy (McNemar)",
            "baseline_value": result.accuracy_a, "value": result.accuracy_b,
            "difference": result.accuracy_b - result.accuracy_a, "ci_low": np.nan, "ci_high": np.nan,
            "pvalue": result.pvalue, "method": f"McNemar ({'exact' if result.exact else 'chi-square'}), "
                                              f"table {result.table}",
            "verdict": result.verdict, "regression": result.verdict == "less accurate",
        }]

    def _note(self, subject, message, severity="warning"):
        issue = Issue(subject, message, severity)
        if issue not in self.issues:
            self.issues.append(issue)

    def close(self):
        if self._cache_dir is not None:
            self._tmp.cleanup()
            self._cache_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


SIGNIFICANCE_COLUMNS = ["baseline", "model", "test", "baseline_value", "value", "difference", "ci_low", "ci_high",
                        "pvalue", "method", "verdict", "regression"]
TEXT_COLUMNS = {"label", "model", "backend", "precision", "hardware", "dataset", "task", "run_id"}


def display_columns(frame: pd.DataFrame, quality: str) -> list:
    """Columns worth showing in a terminal or summary table (the CSV keeps them all)."""
    keep = ["model", "backend", "precision", quality]
    keep += [c for c in frame.columns if c.endswith(("p90_ms", "p99_ms"))]
    keep += ["throughput_samples_per_s", "energy_j_per_inference", "peak_host_mem_mb", "peak_gpu_mem_mb", "run_id"]
    return [c for c in keep if c in frame.columns and (c in TEXT_COLUMNS or frame[c].notna().any())]


def format_cell(row, column) -> str:
    value = row.get(column)
    if column == "run_id":
        return str(value)[:8]
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if low is not None and high is not None and not (np.isnan(low) or np.isnan(high)):
        return f"{value:.4f} [{low:.4f}, {high:.4f}]"
    return f"{value:.4g}"


# -------------------------------------------------------------------- selection
class ServerUnreachable(ConnectionError):
    """The tracking server did not answer; raised before MLflow's minutes of retries."""


def _probe(tracking_uri, timeout=5.0):
    """Fail fast on a dead server: any HTTP answer (even 401 behind the hub) counts as reachable."""
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        raise ServerUnreachable(f"MLflow tracking server {tracking_uri} is not reachable: "
                                f"{type(err).__name__}") from None


def _client(tracking_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    uri = client.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    return client


def _resolve_experiments(client, names, issues) -> list:
    if not names:
        return [e.experiment_id for e in client.search_experiments()]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None and str(name).isdigit():
            try:
                experiment = client.get_experiment(str(name))
            except Exception:
                experiment = None
        if experiment is None:
            issues.append(Issue(f"experiment {name!r}", "not found"))
        elif experiment.lifecycle_stage == "deleted":
            issues.append(Issue(f"experiment {name!r}", "was deleted; its runs are not compared"))
        else:
            ids.append(experiment.experiment_id)
    return ids


def _search_all(client, experiment_ids, filter_string=""):
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _explicit_runs(client, run_ids, issues):
    """Runs named by id; deleted or unknown ones become issues, children are mapped to parents."""
    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except Exception:
            issues.append(Issue(f"run {run_id}", "not found in the tracking server"))
            continue
        if _is_deleted(run):
            issues.append(Issue(f"run {run_id}", "was deleted; it is not compared"))
            continue
        runs.append(run)
    return runs


def select_runs(selection: Selection, client):
    """(parents, children by parent id, issues) for a selection, with one bulk search per experiment set."""
    issues = []
    explicit = _explicit_runs(client, selection.run_ids, issues) if selection.run_ids else []
    if selection.run_ids:
        experiment_ids = sorted({r.info.experiment_id for r in explicit})
    else:
        experiment_ids = _resolve_experiments(client, selection.experiments, issues)
    all_runs = _search_all(client, experiment_ids, "tags.`aif.kind` LIKE 'benchmark%'") if experiment_ids else []
    by_id = {r.info.run_id: r for r in all_runs}
    children = {}
    for run in all_runs:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if run.data.tags.get("aif.kind") == KIND_CHILD and parent_id:
            children.setdefault(parent_id, []).append(run)
    if selection.run_ids:
        parents = {}
        for run in explicit:
            parent_id = run.data.tags.get("mlflow.parentRunId")
            if run.data.tags.get("aif.kind") == KIND_CHILD and parent_id:
                if parent_id not in by_id:
                    issues.append(Issue(f"run {run.info.run_id}", f"its parent run {parent_id} is deleted or "
                                        "missing; comparing the child alone"))
                    parents[run.info.run_id] = run
                    continue
                run = by_id[parent_id]
            elif "aif.kind" not in run.data.tags:
                issues.append(Issue(f"run {run.info.run_id}", "has no 'aif.kind' tag: not a benchmark run "
                                    "(docs/mlflow-layout.md); compared with whatever metrics it has"))
            parents[run.info.run_id] = run
        parent_runs = list(parents.values())
    else:
        parent_runs = [r for r in all_runs if r.data.tags.get("aif.kind") == KIND_PARENT]
    return parent_runs, children, issues


def build_entries(parents, children, selection: Selection) -> list:
    entries = []
    for parent in sorted(parents, key=lambda r: r.info.start_time or 0):
        kids = children.get(parent.info.run_id, [])
        groups = {}
        for kid in kids:
            key = (kid.data.tags.get("aif.backend", "unknown"), kid.data.tags.get("aif.precision", ""))
            groups.setdefault(key, []).append(kid)
        if not groups:  # a run without children: compare its own metrics
            tags = parent.data.tags
            groups[(tags.get("aif.backend", ""), tags.get("aif.precision", ""))] = [parent]
        for (backend, precision), runs in groups.items():
            entry = Entry(parent=parent, backend=backend, precision=precision)
            for run in sorted(runs, key=lambda r: r.info.start_time or 0):
                scenario = run.data.tags.get("aif.scenario", "")
                if scenario == ACCURACY_SCENARIO:
                    entry.accuracy_run = run
                elif scenario and _better_sweep_point(run, entry.scenario_runs.get(scenario)):
                    entry.scenario_runs[scenario] = run
            if _matches(entry, selection):
                entries.append(entry)
    _assign_labels(entries)
    return entries


def _better_sweep_point(run, current) -> bool:
    """A batch-size sweep logs one child per size; the leaderboard keeps the highest throughput."""
    if current is None:
        return True
    key = "throughput_samples_per_s"
    return run.data.metrics.get(key, -np.inf) > current.data.metrics.get(key, -np.inf)


def _matches(entry: Entry, selection: Selection) -> bool:
    if selection.models and entry.model not in selection.models:
        return False
    for name, value in selection.tags.items():
        if not any(r.data.tags.get(name) == value for r in entry.runs):
            return False
    return True


def _assign_labels(entries):
    """Readable unique labels: model, plus backend when a model has several, plus run id on clashes."""
    models = {}
    for e in entries:
        models.setdefault(e.model, set()).add(e.backend)
    for e in entries:
        e.label = e.model if len(models[e.model]) <= 1 else f"{e.model} [{e.backend}]"
    seen = {}
    for e in entries:
        seen.setdefault(e.label, []).append(e)
    for label, same in seen.items():
        if len(same) > 1:
            for e in same:
                e.label = f"{label} #{e.run_id[:6]}"


def compare(experiments=(), models=(), tags=None, run_ids=(), *, tracking_uri=None, client=None) -> Comparison:
    """Select benchmark runs and return a Comparison.

    Raises EmptySelection when nothing matches; every other problem (deleted runs, missing
    metrics, mixed datasets or hardware) is recorded in `Comparison.issues`.
    """
    selection = Selection(tuple(experiments or ()), tuple(models or ()), dict(tags or {}), tuple(run_ids or ()))
    client = client or _client(tracking_uri)
    parents, children, issues = select_runs(selection, client)
    entries = build_entries(parents, children, selection)
    if not entries:
        detail = "; ".join(str(i) for i in issues)
        raise EmptySelection(f"no benchmark runs match {selection.describe()}" + (f" ({detail})" if detail else ""))
    return Comparison(entries, issues, client, selection)


def parse_tags(pairs) -> dict:
    """`key=value` strings (CLI --tag) to a dict, with a clear error on bad syntax."""
    tags = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--tag: expected KEY=VALUE, got {pair!r}")
        tags[key.strip()] = value.strip()
    return tags

