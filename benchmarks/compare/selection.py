"""Which runs a comparison reads: the selection, one bulk search, and the leaderboard entries.

One paged `search_runs` per selection fetches every benchmark parent and child at once; a row
("entry") is one model under one backend and precision, built from a parent and its children.
Deleted, missing or foreign runs become issues of the comparison instead of errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CompareError, EmptySelection
from ..layout import ACCURACY, KIND_BENCHMARK, KIND_CHILD, Metrics, Tags
from .comparison import Comparison, Entry, Issue

PAGE_SIZE = 10000


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
            raise CompareError(f"--tag: expected KEY=VALUE, got {pair!r}")
        tags[key.strip()] = value.strip()
    return tags


def _client(tracking_uri):
    from mlflow.tracking import MlflowClient

    from ..results.mlflow import probe

    client = MlflowClient(tracking_uri=tracking_uri)
    probe(client.tracking_uri or "")
    return client


def _is_deleted(run) -> bool:
    return run.info.lifecycle_stage == "deleted"


def _is_child(run) -> bool:
    return run.data.tags.get(Tags.KIND) == KIND_CHILD and bool(run.data.tags.get(Tags.PARENT_RUN_ID))


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
    benchmark_runs = f"tags.`{Tags.KIND}` LIKE '{KIND_BENCHMARK}%'"
    all_runs = _search_all(client, experiment_ids, benchmark_runs) if experiment_ids else []
    by_id = {r.info.run_id: r for r in all_runs}
    children = {}
    for run in filter(_is_child, all_runs):
        children.setdefault(run.data.tags[Tags.PARENT_RUN_ID], []).append(run)
    if selection.run_ids:
        parent_runs = _parents_of(explicit, by_id, issues)
    else:
        parent_runs = [r for r in all_runs if r.data.tags.get(Tags.KIND) == KIND_BENCHMARK]
    return parent_runs, children, issues


def _parents_of(explicit, by_id, issues):
    """The benchmarks that runs named by id belong to (a child selects its parent)."""
    parents = {}
    for run in explicit:
        if _is_child(run):
            parent_id = run.data.tags[Tags.PARENT_RUN_ID]
            if parent_id not in by_id:
                issues.append(Issue(f"run {run.info.run_id}", f"its parent run {parent_id} is deleted or "
                                    "missing; comparing the child alone"))
                parents[run.info.run_id] = run
                continue
            run = by_id[parent_id]
        elif Tags.KIND not in run.data.tags:
            issues.append(Issue(f"run {run.info.run_id}", f"has no '{Tags.KIND}' tag: not a benchmark run "
                                "(docs/mlflow-layout.md); compared with whatever metrics it has"))
        parents[run.info.run_id] = run
    return list(parents.values())


def build_entries(parents, children, selection: Selection) -> list:
    entries = []
    for parent in sorted(parents, key=lambda r: r.info.start_time or 0):
        for (backend, precision), runs in _by_backend(parent, children.get(parent.info.run_id, [])).items():
            entry = Entry(parent=parent, backend=backend, precision=precision)
            for run in sorted(runs, key=lambda r: r.info.start_time or 0):
                scenario = run.data.tags.get(Tags.SCENARIO, "")
                if scenario == ACCURACY:
                    entry.accuracy_run = run
                elif scenario and _better_sweep_point(run, entry.scenario_runs.get(scenario)):
                    entry.scenario_runs[scenario] = run
            if _matches(entry, selection):
                entries.append(entry)
    _assign_labels(entries)
    return entries


def _by_backend(parent, kids):
    """(backend, precision) -> its child runs; a run without children is compared on its own metrics."""
    groups = {}
    for kid in kids:
        key = (kid.data.tags.get(Tags.BACKEND, "unknown"), kid.data.tags.get(Tags.PRECISION, ""))
        groups.setdefault(key, []).append(kid)
    if not groups:
        tags = parent.data.tags
        groups[(tags.get(Tags.BACKEND, ""), tags.get(Tags.PRECISION, ""))] = [parent]
    return groups


def _better_sweep_point(run, current) -> bool:
    """A batch-size sweep logs one child per size; the leaderboard keeps the highest throughput."""
    if current is None:
        return True
    key = Metrics.THROUGHPUT
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
