"""The comparison model: entries (one model under one backend/precision), their issues, the leaderboard.

Reads runs laid out as docs/mlflow-layout.md describes. This module knows what the runs say and
what can be compared; how it is shown lives elsewhere (display.py, pages.py, report.py), and the
statistics in significance.py. The convenience methods users type (`print`, `to_html`, `plot`,
`significance`) hand over to those modules, which never import this one back.

    cmp = compare(experiments=["bench"], tracking_uri="http://127.0.0.1:5000")
    cmp.to_frame(); cmp.pareto(); cmp.significance(baseline="logreg")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from ..errors import CompareError
from ..layout import OFFLINE, SCENARIOS, SERVER, Artifacts, Metrics, Tags
from .artifacts import ArtifactCache

PERCENTILES = ("p90", "p99")
TOKEN_KINDS = ("ttft", "tpot")  # token latencies, as `<scenario>.ttft_p99_ms` columns
QUALITY_METRICS = (Metrics.ACCURACY, Metrics.R2, Metrics.EXACT_MATCH, Metrics.ROUGE_L)  # higher is better; first sorts
ACCURACY_METRICS = Metrics.CLASSIFICATION + Metrics.REGRESSION + Metrics.GENERATION


@dataclass(frozen=True)
class Issue:
    """Something missing or incomparable; reports list these instead of failing."""

    subject: str
    message: str
    severity: str = "warning"  # "warning": data missing or not comparable; "info": worth knowing

    def __str__(self):
        return f"{self.subject}: {self.message}"


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
        return self.tag(Tags.MODEL) or self.parent.info.run_name or self.run_id[:8]

    @property
    def runs(self):
        return [r for r in (self.parent, self.accuracy_run, *self.scenario_runs.values()) if r is not None]

    def accuracy_metrics(self) -> dict:
        """Accuracy metrics: from the Accuracy child, else those copied onto the parent."""
        for run in (self.accuracy_run, self.parent):
            if run is not None and any(m in run.data.metrics for m in ACCURACY_METRICS):
                return run.data.metrics
        return {}

    def row(self) -> dict:
        acc = self.accuracy_metrics()
        row = {
            "label": self.label, "model": self.model, "backend": self.backend, "precision": self.precision,
            "hardware": self.tag(Tags.HARDWARE, "unknown"), "dataset": self.tag(Tags.DATASET, "unknown"),
            "task": self.tag(Tags.TASK, ""), "run_id": self.run_id,
            "experiment_id": self.parent.info.experiment_id,
        }
        for name in (Metrics.ACCURACY, *Metrics.REGRESSION, *Metrics.GENERATION):
            if name in acc:
                row[name] = acc[name]
                row[Metrics.ci_low(name)] = acc.get(Metrics.ci_low(name), float("nan"))
                row[Metrics.ci_high(name)] = acc.get(Metrics.ci_high(name), float("nan"))
        for name in (Metrics.F1_MACRO, Metrics.AGREEMENT_TOP1, Metrics.AGREEMENT_TOKENS, Metrics.AGREEMENT_MAX_ABS_DIFF):
            if name in acc:
                row[name] = acc[name]
        for scenario, run in self.scenario_runs.items():
            for p in PERCENTILES:
                if Metrics.latency(p) in run.data.metrics:
                    row[f"{scenario}.{p}_ms"] = run.data.metrics[Metrics.latency(p)]
                for kind in TOKEN_KINDS:
                    if Metrics.token_latency(kind, p) in run.data.metrics:
                        row[f"{scenario}.{kind}_{p}_ms"] = run.data.metrics[Metrics.token_latency(kind, p)]
        row.update(self._aggregates())
        return row

    def _aggregates(self) -> dict:
        def from_scenarios(metric, prefer=OFFLINE, reduce=max):
            runs = self.scenario_runs
            if prefer in runs and metric in runs[prefer].data.metrics:
                return runs[prefer].data.metrics[metric]
            values = [r.data.metrics[metric] for r in runs.values() if metric in r.data.metrics]
            return reduce(values) if values else None

        out = {
            Metrics.THROUGHPUT: from_scenarios(Metrics.THROUGHPUT),
            Metrics.SERVER_MAX_VALID_QPS: from_scenarios(Metrics.SERVER_MAX_VALID_QPS, prefer=SERVER),
            Metrics.ENERGY_PER_INFERENCE: from_scenarios(Metrics.ENERGY_PER_INFERENCE, reduce=min),
            Metrics.OUTPUT_TOKENS_PER_S: from_scenarios(Metrics.OUTPUT_TOKENS_PER_S),
            Metrics.GOODPUT: from_scenarios(Metrics.GOODPUT, prefer=SERVER),
            Metrics.ENERGY_PER_OUTPUT_TOKEN: from_scenarios(Metrics.ENERGY_PER_OUTPUT_TOKEN, reduce=min),
            Metrics.PEAK_HOST_MEM: from_scenarios(Metrics.PEAK_HOST_MEM, prefer=None),
            Metrics.PEAK_GPU_MEM: from_scenarios(Metrics.PEAK_GPU_MEM, prefer=None),
        }
        return {k: v for k, v in out.items() if v is not None}


IDENTITY_COLUMNS = ["label", "model", "backend", "precision", "hardware", "dataset", "task", "run_id",
                    "experiment_id"]
QUALITY_PREFIXES = (Metrics.ACCURACY, *Metrics.REGRESSION, *Metrics.GENERATION, Metrics.F1_MACRO, "agreement")
LOWER_IS_BETTER = ("_ms", "_mb", "j_per_inference", "j_per_output_token", Metrics.MAE, Metrics.RMSE,
                   Metrics.PERPLEXITY)  # column suffixes


def _ordered_columns(columns) -> list:
    """Identity, then quality with its CI, then latency per scenario (MLPerf order), then the rest."""
    def rank(column):
        if column in IDENTITY_COLUMNS:
            return (0, IDENTITY_COLUMNS.index(column), "")
        if column.startswith(QUALITY_PREFIXES):
            return (1, 0, "")
        scenario = column.split(".")[0]
        if scenario in SCENARIOS:
            return (2, SCENARIOS.index(scenario), column)
        return (3, 0, "")

    return sorted(columns, key=rank)  # stable: equal ranks keep their insertion order


class Comparison:
    """Entries selected from MLflow, plus the issues found while selecting them."""

    def __init__(self, entries, issues, client, selection):
        self.entries = entries
        self.issues = list(issues)
        self.client = client
        self.selection = selection
        self.artifacts = ArtifactCache(client)
        self._check_comparable()

    # ---------------------------------------------------------------- checks
    def _check_comparable(self):
        for entry in self.entries:
            if not entry.accuracy_metrics():
                self.issues.append(Issue(entry.label, "no accuracy metrics (no Accuracy child run and no "
                                         "'accuracy'/'r2' metric on the parent): accuracy columns left empty"))
            if not any(Metrics.LATENCY_P99 in r.data.metrics for r in entry.scenario_runs.values()):
                self.issues.append(Issue(entry.label, "no latency metrics (no scenario child run with "
                                         f"'{Metrics.LATENCY_P99}'): latency columns left empty"))
        for parent in {e.run_id: e.parent for e in self.entries}.values():
            status = parent.info.status
            if status == "FAILED":
                error = parent.data.tags.get(Tags.ERROR, "no error recorded")
                self.issues.append(Issue(f"run {parent.info.run_id}", f"benchmark FAILED ({error}); "
                                         "showing what it logged before failing"))
            elif status in ("RUNNING", "SCHEDULED"):
                self.issues.append(Issue(f"run {parent.info.run_id}", "benchmark still running; figures may be "
                                         "incomplete"))
        datasets = sorted({e.tag(Tags.DATASET, "unknown") for e in self.entries})
        if len(datasets) > 1:
            self.issues.append(Issue("selection", f"runs use different datasets ({', '.join(datasets)}): "
                                     "accuracy is compared only within a dataset"))
        hardware = sorted({e.tag(Tags.HARDWARE, "unknown") for e in self.entries})
        if len(hardware) > 1:
            self.issues.append(Issue("selection", f"runs come from {len(hardware)} hardware fingerprints "
                                     f"({', '.join(hardware)}): latency is compared only within one", "info"))

    def note(self, subject, message, severity="warning"):
        """Record an issue found later (by a significance test, a report section), once."""
        issue = Issue(subject, message, severity)
        if issue not in self.issues:
            self.issues.append(issue)

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
        return [s for s in SCENARIOS if any(s in e.scenario_runs for e in self.entries)]

    @property
    def quality_metric(self) -> str:
        """The higher-is-better score that leaderboards sort by and Pareto fronts plot."""
        frame = self._frame
        for name in QUALITY_METRICS:
            if name in frame and frame[name].notna().any():
                return name
        return Metrics.ACCURACY

    def default_sort(self) -> str:
        return self.quality_metric

    def latency_column(self, percentile: str = "p99", kind: str | None = None) -> str | None:
        """The latency used for fronts: the first scenario (MLPerf order) that has it; `kind` ttft or
        tpot names a token latency instead of the end-to-end one."""
        for scenario in self.scenarios:
            column = f"{scenario}.{kind}_{percentile}_ms" if kind else f"{scenario}.{percentile}_ms"
            if column in self._frame and self._frame[column].notna().any():
                return column
        return None

    def cost_column(self) -> str | None:
        """The default front's x: TPOT for generative models (the latency users feel per token), else latency."""
        return self.latency_column(kind="tpot") or self.latency_column()

    def to_frame(self, sort_by: str | None = None, ascending: bool | None = None) -> pd.DataFrame:
        """The leaderboard: one row per entry, grouped by hardware, sorted within each group."""
        frame = self._frame.copy()
        if frame.empty:
            return frame
        sort_by = sort_by or self.default_sort()
        if sort_by not in frame:
            raise CompareError(f"sort_by: no column {sort_by!r}; expected one of {', '.join(frame.columns)}")
        if ascending is None:  # latency, energy, memory: lower is better; scores: higher
            ascending = sort_by.endswith(LOWER_IS_BETTER)
        frame = frame.sort_values(["hardware", sort_by], ascending=[True, ascending], na_position="last",
                                  kind="stable")
        return frame.reset_index(drop=True)

    def to_csv(self, path=None, **kwargs):
        return self.to_frame(**kwargs).to_csv(path, index=False)

    def to_html(self, **kwargs) -> str:
        """The leaderboard as a standalone HTML page (the full comparison page is `aif report`)."""
        from .pages import leaderboard_page

        return leaderboard_page(self, **kwargs)

    def print(self, console=None, **kwargs):
        """Rich terminal table, one per hardware group, then the issues."""
        from .display import print_leaderboard

        print_leaderboard(self, console, **kwargs)

    # ---------------------------------------------------------------- fronts
    def pareto(self, x: str | None = None, y: str | None = None) -> pd.DataFrame:
        """Leaderboard with a `pareto` column, computed per hardware (and dataset when they differ)."""
        from .pareto import pareto_front

        frame = self.to_frame()
        x = x or self.cost_column()
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
        for kind in ("tpot", "ttft"):  # token latencies first: the fronts LLM users read
            if self.latency_column(kind=kind):
                pairs.append((self.latency_column(kind=kind), y))
        if self.latency_column():
            pairs.append((self.latency_column(), y))
        energy = Metrics.ENERGY_PER_INFERENCE
        if energy in self._frame and self._frame[energy].notna().any():
            pairs.append((energy, y))
        return pairs

    def plot(self, path, x=None, y=None):
        """Pareto front as PNG (path ends in .png) or interactive self-contained HTML."""
        from .pareto import write_plot

        x = x or self.cost_column()
        y = y or self.quality_metric
        write_plot(self.pareto(x, y), x, y, path)
        return path

    # ---------------------------------------------------------------- artifacts
    def latencies(self, entry: Entry, scenario: str):
        return self.artifacts.array(entry.scenario_runs.get(scenario), Artifacts.LATENCIES)

    def predictions(self, entry: Entry):
        return self.artifacts.arrays(entry.accuracy_run or entry.parent, Artifacts.PREDICTIONS)

    def results_json(self, entry: Entry) -> dict:
        return self.artifacts.json(entry.parent, Artifacts.RESULTS)

    def robustness(self, entry: Entry) -> dict:
        return self.artifacts.json(entry.accuracy_run or entry.parent, Artifacts.ROBUSTNESS)

    # ---------------------------------------------------------------- significance
    def entry(self, name: str) -> Entry:
        """Find an entry by label, model name or (prefix of a) parent run id."""
        for test in (lambda e: e.label == name, lambda e: e.model == name, lambda e: e.run_id.startswith(name)):
            found = [e for e in self.entries if test(e)]
            if found:
                return found[0]
        known = ", ".join(e.label for e in self.entries)
        raise CompareError(f"baseline: no model {name!r} in the selection; expected one of: {known}")

    def leader(self) -> Entry:
        """The first leaderboard row (the default baseline)."""
        label = self.to_frame().iloc[0]["label"]
        return next(e for e in self.entries if e.label == label)

    def significance(self, baseline: str | None = None, *, percentile: float = 99, alpha: float = 0.05,
                     n_resamples: int = 1000) -> pd.DataFrame:
        """Every other entry against `baseline` (default: the first leaderboard row).

        One row per test: latency per common scenario (bootstrap CI of the percentile difference,
        Mann-Whitney p) and accuracy (McNemar). `regression` is True when the entry is
        significantly slower or less accurate than the baseline.
        """
        from .significance import significance_table

        return significance_table(self, baseline, percentile=percentile, alpha=alpha, n_resamples=n_resamples)

    def close(self):
        self.artifacts.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
