"""Model readiness reports: one self-contained HTML page per model, and a comparison page.

Everything a page shows is computed from the runs' data (metrics, raw latencies, per-sample
predictions, robustness.json); plots are embedded as base64 PNG, and the comparison page's
interactive Pareto front inlines plotly.js, so a page opens from the MLflow UI with no network.
Each section is built on its own: a section whose data is missing says so and the rest renders.
"""

from __future__ import annotations

import os
import re
import tempfile

from ..layout import (CLASSIFICATION, KIND_COMPARISON, LM_EVAL_PREFIX, SCENARIOS, TEXT_CLASSIFICATION, Artifacts,
                      Metrics, Tags)
from . import pages
from .comparison import Comparison, Entry, Issue
from .display import leaderboard_groups
from .plots import confusion_plot, latency_plot, pareto_png, robustness_plot
from .slo import evaluate_slo, readiness

ACCURACY_ROWS = (*Metrics.CLASSIFICATION, *Metrics.REGRESSION, *Metrics.GENERATION, Metrics.AGREEMENT_TOKENS)


# ------------------------------------------------------------------ sections
class _Sections:
    """Builds each section in isolation; a failure becomes an issue, never a stack trace."""

    def __init__(self, label, issues):
        self.label = label
        self.issues = issues

    def build(self, name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # a report must render whatever data is there
            self.issues.append(Issue(self.label, f"{name} section could not be built: {type(err).__name__}: {err}"))
            return None


def accuracy_section(cmp: Comparison, entry: Entry, notes: list):
    metrics = entry.accuracy_metrics()
    rows = []
    for name in ACCURACY_ROWS:
        if name in metrics:
            rows.append({"metric": name, "value": metrics[name], "ci_low": metrics.get(Metrics.ci_low(name)),
                         "ci_high": metrics.get(Metrics.ci_high(name))})
    for name in sorted(m for m in metrics if m.startswith(LM_EVAL_PREFIX) and not m.endswith("_stderr")):
        rows.append({"metric": name, "value": metrics[name], "stderr": metrics.get(f"{name}_stderr")})
    section = {"metrics": rows, "per_class": [], "confusion_png": None}
    if not rows:
        notes.append("no accuracy metrics logged (no Accuracy child run)")
    preds = cmp.predictions(entry)
    if preds is None:
        notes.append(f"no {Artifacts.PREDICTIONS}: per-class metrics and confusion matrix not available")
        return section
    if "correct" in preds:  # text generation: per-prompt exact match, no classes
        return section
    if "y_true" not in preds:
        notes.append(f"{Artifacts.PREDICTIONS} has no y_true: per-class metrics and confusion matrix not available")
        return section
    if entry.tag(Tags.TASK, CLASSIFICATION) in (CLASSIFICATION, TEXT_CLASSIFICATION):
        from sklearn.metrics import classification_report

        report = classification_report(preds["y_true"], preds["y_pred"], output_dict=True, zero_division=0)
        section["per_class"] = [{"label": k, **v} for k, v in report.items() if isinstance(v, dict)
                                and k not in ("macro avg", "weighted avg")]
        section["confusion_png"] = confusion_plot(preds["y_true"], preds["y_pred"], f"{entry.label}: confusion matrix")
    return section


def latency_section(cmp: Comparison, entry: Entry, slo_results, notes: list):
    rows, raw = [], {}
    for scenario in SCENARIOS:
        run = entry.scenario_runs.get(scenario)
        if run is None:
            continue
        m = run.data.metrics
        rows.append({
            "scenario": scenario, **{k: m.get(Metrics.latency(k)) for k in ("p50", "p90", "p99", "mean")},
            "throughput": m.get(Metrics.THROUGHPUT), "target_qps": m.get(Metrics.SERVER_TARGET_QPS),
            "ttft_p99": m.get(Metrics.TTFT_P99), "tpot_p99": m.get(Metrics.TPOT_P99),
            "tokens_per_s": m.get(Metrics.OUTPUT_TOKENS_PER_S), "goodput": m.get(Metrics.GOODPUT),
            "valid": run.data.tags.get(Tags.RESULT_VALID, ""),
            "slos": [r for r in slo_results if r.scenario == scenario],
        })
        lat = cmp.latencies(entry, scenario)
        if lat is None:
            notes.append(f"{scenario}: no {Artifacts.LATENCIES}, latency distribution not plotted")
        else:
            raw[scenario] = lat
    if not rows:
        notes.append("no scenario runs: no latency figures")
    plot = latency_plot(raw, f"{entry.label}: per-query latency") if raw else None
    tokens = any(r["ttft_p99"] is not None or r["tokens_per_s"] is not None for r in rows)
    return {"rows": rows, "plot_png": plot, "tokens": tokens}


def agreement_section(cmp: Comparison, entry: Entry):
    """Backends of the same benchmark, with their agreement against the reference backend."""
    rows = []
    for other in cmp.entries:
        if other.run_id != entry.run_id:
            continue
        m = other.accuracy_metrics()
        rows.append({"backend": other.backend, "precision": other.precision, "this": other is entry,
                     **{name: m.get(name) for name in (Metrics.ACCURACY, Metrics.AGREEMENT_TOP1,
                                                       Metrics.AGREEMENT_MAX_ABS_DIFF)}})
    return rows


def robustness_section(cmp: Comparison, entry: Entry, notes: list):
    data = cmp.robustness(entry)
    levels = data.get("levels") or []
    if not levels:
        notes.append(f"no {Artifacts.ROBUSTNESS}: robustness to input perturbations was not measured for this run")
        return None
    return {"perturbation": data.get("perturbation", ""), "relative_to": data.get("relative_to", ""),
            "levels": levels, "plot_png": robustness_plot(levels, f"{entry.label}: accuracy under noise")}


def fingerprint_section(cmp: Comparison, entry: Entry):
    results = cmp.results_json(entry)
    fingerprint = results.get("fingerprint") if isinstance(results.get("fingerprint"), dict) else {}
    rows = {k: entry.tag(k) for k in (Tags.HARDWARE, Tags.ENVIRONMENT, Tags.BACKEND, Tags.PRECISION, Tags.DATASET)
            if entry.tag(k)}
    # the config is shown from the run's params; the fingerprint's copy would repeat it
    fingerprint = {k: v for k, v in fingerprint.items() if k != "config" and v not in (None, "", [])}
    rows.update({f"fingerprint.{k}": v for k, v in _flatten(fingerprint).items()})
    params = entry.parent.data.params
    return {"rows": rows, "params": dict(sorted(params.items()))}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def reproduce_section(cmp: Comparison, entry: Entry, notes: list) -> dict:
    """The command, plus the exact config it ran with: the command's config path may be on another machine."""
    results = cmp.results_json(entry)
    command = entry.parent.data.tags.get(Tags.COMMAND) or results.get("command")
    if not command:
        notes.append(f"the run has no '{Tags.COMMAND}' tag: the reproduce command was not recorded")
    config = results.get("config")
    config_yaml = None
    if isinstance(config, dict):
        import yaml

        config_yaml = yaml.safe_dump(config, sort_keys=False)
    return {"command": command, "config_yaml": config_yaml}


def model_context(cmp: Comparison, entry: Entry, slos) -> dict:
    issues = [i for i in cmp.issues if i.subject == entry.label]
    notes = []
    sections = _Sections(entry.label, issues)
    slo_results = [r for slo in slos for r in evaluate_slo(slo, entry)]
    return {
        "entry": entry, "row": entry.row(), "slo_results": slo_results, "readiness": readiness(slo_results),
        "accuracy": sections.build("accuracy", accuracy_section, cmp, entry, notes),
        "latency": sections.build("latency", latency_section, cmp, entry, slo_results, notes),
        "agreement": sections.build("agreement", agreement_section, cmp, entry),
        "robustness": sections.build("robustness", robustness_section, cmp, entry, notes),
        "fingerprint": sections.build("fingerprint", fingerprint_section, cmp, entry),
        "reproduce": sections.build("reproduce", reproduce_section, cmp, entry, notes),
        "mlflow_url": _run_url(cmp, entry),
        "notes": notes, "issues": issues,
    }


def _run_url(cmp, entry):
    uri = getattr(cmp.client, "tracking_uri", "") or ""
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{entry.parent.info.experiment_id}/runs/{entry.run_id}"
    return None


# ------------------------------------------------------------------ rendering
def render_model_report(cmp: Comparison, entry: Entry, slos=()) -> str:
    return pages.render("report_model.html.j2", f"Readiness report: {entry.label}", **model_context(cmp, entry, slos))


def comparison_context(cmp: Comparison, slos=(), baseline=None, sort_by=None, model_pages=None) -> dict:
    from .pareto import plot_html

    issues = cmp.issues
    sections = _Sections("comparison", issues)
    columns, groups = leaderboard_groups(cmp, sort_by)
    fronts = []
    for i, (x, y) in enumerate(cmp.fronts()):
        front = sections.build("Pareto", cmp.pareto, x, y)
        if front is None:
            continue
        fronts.append({
            "x": x, "y": y,
            "png": sections.build("Pareto plot", pareto_png, front, x, y),
            # plotly.js inlined once, in the first figure, so the page works with no network
            "html": sections.build("Pareto plot", plot_html, front, x, y, group="group",
                                   title=f"{y} vs {x}", full_html=False,
                                   include_plotlyjs=(i == 0)),
            "rows": front[["label", "group", x, y, "pareto"]].to_dict("records"),
        })
    significance = sections.build("significance", cmp.significance, baseline)
    cards = []
    for entry in cmp.entries:
        results = [r for slo in slos for r in evaluate_slo(slo, entry)]
        cards.append({"entry": entry, "row": entry.row(), "readiness": readiness(results), "slo_results": results,
                      "page": (model_pages or {}).get(entry.label)})
    return {
        "columns": columns, "groups": groups, "fronts": fronts, "cards": cards, "slos": list(slos),
        "significance": [] if significance is None else significance.to_dict("records"),
        "baseline": baseline or (cmp.leader().label if cmp.entries else None),
        "quality": cmp.quality_metric, "issues": issues, "selection": cmp.selection.describe(),
    }


def render_comparison_report(cmp: Comparison, slos=(), baseline=None, sort_by=None, model_pages=None) -> str:
    ctx = comparison_context(cmp, slos, baseline, sort_by, model_pages)
    return pages.render("report_compare.html.j2", "Model comparison", **ctx)


def page_name(entry: Entry) -> str:
    return "readiness-" + re.sub(r"[^A-Za-z0-9._-]+", "_", entry.label).strip("_") + ".html"


def write_reports(cmp: Comparison, out_dir, slos=(), baseline=None, sort_by=None) -> dict:
    """Write one page per model and `comparison.html` into out_dir; returns label -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for entry in cmp.entries:
        path = os.path.join(out_dir, page_name(entry))
        write_atomic(path, render_model_report(cmp, entry, slos))
        paths[entry.label] = path
    page_files = {label: os.path.basename(p) for label, p in paths.items()}
    comparison = os.path.join(out_dir, "comparison.html")
    write_atomic(comparison, render_comparison_report(cmp, slos, baseline, sort_by, page_files))
    paths["comparison"] = comparison
    return paths


def write_atomic(path, text):
    """No half-written page or table if rendering or the disk fails midway."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def log_reports(cmp: Comparison, paths: dict, artifact_dir=Artifacts.REPORTS_DIR) -> dict:
    """Log each model page on its benchmark's parent run, and the comparison page on a run of its own.

    The comparison run is tagged `aif.kind=comparison` (so selections of benchmarks skip it) and
    lists the compared run ids. Returns {"comparison_run_id": ..., "runs": [...]}.
    """
    logged = []
    for entry in cmp.entries:
        if entry.label in paths:
            cmp.client.log_artifact(entry.run_id, paths[entry.label], artifact_dir)
            logged.append(entry.run_id)
    run_id = None
    if "comparison" in paths and cmp.entries:
        experiment_id = cmp.entries[0].parent.info.experiment_id
        run = cmp.client.create_run(experiment_id, run_name="model comparison", tags={
            Tags.KIND: KIND_COMPARISON, Tags.COMPARED_RUNS: ",".join(sorted({e.run_id for e in cmp.entries})),
            Tags.COMPARED_MODELS: ",".join(e.label for e in cmp.entries)})
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for label, path in paths.items():
                    cmp.client.log_artifact(run_id, path, artifact_dir)
                csv = os.path.join(tmp, "leaderboard.csv")
                cmp.to_csv(csv)
                cmp.client.log_artifact(run_id, csv, artifact_dir)
            cmp.client.set_terminated(run_id)
        except Exception:
            cmp.client.set_terminated(run_id, "FAILED")  # never leave a run RUNNING
            raise
    return {"comparison_run_id": run_id, "runs": logged}
