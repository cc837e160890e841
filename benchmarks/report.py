"""Model readiness reports: one self-contained HTML page per model, and a comparison page.

Everything a page shows is computed from the runs' data (metrics, raw latencies, per-sample
predictions, robustness.json); plots are embedded as base64 PNG, and the comparison page's
interactive Pareto front inlines plotly.js, so a page opens from the MLflow UI with no network.
Each section is built on its own: a section whose data is missing says so and the rest renders.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

from .compare import SCENARIO_ORDER, Comparison, Entry, Issue, display_columns, format_cell

# ------------------------------------------------------------------ service-level objectives
SLO_SYNTAX = ("'<p50|p90|p95|p99|mean|max|throughput|accuracy> <op> <value> [unit] "
              "[at <N> QPS | in <Scenario>]', e.g. 'p99 <= 15 ms at 200 QPS'")
_SLO_RE = re.compile(
    r"^\s*(?P<metric>p\d{1,2}(?:\.\d+)?|mean|max|throughput|accuracy)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|us|µs|s|%|qps|samples/s|/s)?"
    r"(?:\s+(?:at\s+(?P<qps>\d+(?:\.\d+)?)\s*qps|in\s+(?P<scenario>[A-Za-z]+)))?\s*$",
    re.IGNORECASE,
)
_LATENCY_UNITS = {None: 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}
_OPS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater}


@dataclass(frozen=True)
class SLO:
    """A service-level target the evaluator sets, e.g. p99 <= 15 ms at 200 QPS."""

    text: str
    metric: str  # latency_p99_ms, latency_mean_ms, throughput_samples_per_s, accuracy
    op: str
    value: float  # in the metric's unit (ms, samples/s, fraction)
    scenario: str | None = None
    qps: float | None = None


@dataclass
class SLOResult:
    slo: SLO
    scenario: str
    measured: float | None
    status: str  # pass / fail / unknown
    note: str = ""


def parse_slo(text: str) -> SLO:
    """Parse one target; ValueError naming the text and the expected syntax on bad input."""
    match = _SLO_RE.match(text or "")
    if not match:
        raise ValueError(f"SLO {text!r}: expected {SLO_SYNTAX}")
    metric, op, unit = match["metric"].lower(), match["op"], (match["unit"] or "").lower() or None
    value = float(match["value"])
    scenario = match["scenario"]
    if scenario:
        canonical = {s.lower(): s for s in SCENARIO_ORDER}.get(scenario.lower())
        if canonical is None:
            raise ValueError(f"SLO {text!r}: unknown scenario {scenario!r}; expected one of {', '.join(SCENARIO_ORDER)}")
        scenario = canonical
    if metric == "accuracy":
        if unit not in (None, "%"):
            raise ValueError(f"SLO {text!r}: accuracy takes a fraction or a percentage, not {unit!r}")
        value = value / 100 if unit == "%" else value
        name = "accuracy"
    elif metric == "throughput":
        if unit not in (None, "qps", "samples/s", "/s"):
            raise ValueError(f"SLO {text!r}: throughput is in samples/s (or QPS), not {unit!r}")
        name = "throughput_samples_per_s"
    else:
        if unit not in _LATENCY_UNITS:
            raise ValueError(f"SLO {text!r}: latency takes ms, s or us, not {unit!r}")
        value *= _LATENCY_UNITS[unit]
        name = f"latency_{metric}_ms"
        if metric not in ("mean", "max") and metric not in ("p50", "p90", "p95", "p99"):
            raise ValueError(f"SLO {text!r}: percentile {metric!r} is not logged; use p50, p90, p95 or p99")
    qps = float(match["qps"]) if match["qps"] else None
    if qps is not None:
        scenario = "Server"
    return SLO(text=text.strip(), metric=name, op=op, value=value, scenario=scenario, qps=qps)


def _slo_scenarios(slo: SLO, entry: Entry) -> list:
    if slo.metric == "accuracy":
        return [ACC]
    if slo.scenario:
        return [slo.scenario]
    if slo.metric.startswith("throughput") and "Offline" in entry.scenario_runs:
        return ["Offline"]
    return [s for s in SCENARIO_ORDER if s in entry.scenario_runs] or ["any scenario"]


ACC = "Accuracy"


def evaluate_slo(slo: SLO, entry: Entry) -> list:
    """One result per scenario the target applies to; 'unknown' when the data is not there."""
    results = []
    for scenario in _slo_scenarios(slo, entry):
        if scenario == ACC:
            metrics = entry.accuracy_metrics()
        else:
            run = entry.scenario_runs.get(scenario)
            if run is None:
                results.append(SLOResult(slo, scenario, None, "unknown", f"no {scenario} run"))
                continue
            metrics = run.data.metrics
            if slo.qps is not None:
                target = metrics.get("server_target_qps", _float(run.data.params.get("scenario.target_qps")))
                if target is None or target < slo.qps:
                    shown = "not recorded" if target is None else f"{target:g} QPS"
                    results.append(SLOResult(slo, scenario, None, "unknown",
                                             f"Server ran at {shown}, the target needs {slo.qps:g} QPS"))
                    continue
        measured = metrics.get(slo.metric)
        if measured is None:
            results.append(SLOResult(slo, scenario, None, "unknown", f"metric {slo.metric} not logged"))
            continue
        ok = bool(_OPS[slo.op](measured, slo.value))
        verdict = "" if scenario == ACC else run.data.tags.get("aif.loadgen.result_valid", "")
        if ok and verdict == "INVALID":
            # A failure stands regardless; a pass on a run LoadGen rejected (too few queries,
            # target QPS not sustained) is not established.
            results.append(SLOResult(slo, scenario, float(measured), "unknown",
                                     "LoadGen marked this run INVALID: the figure is not established"))
            continue
        results.append(SLOResult(slo, scenario, float(measured), "pass" if ok else "fail"))
    return results


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def readiness(slo_results) -> str:
    """'ready' when every target passes, 'not ready' on any failure, 'incomplete' otherwise."""
    statuses = {r.status for r in slo_results}
    if not statuses:
        return "no targets set"
    if "fail" in statuses:
        return "not ready"
    return "ready" if statuses == {"pass"} else "incomplete"


# ------------------------------------------------------------------ plots
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
    for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "r2", "mae", "rmse"):
        if name in metrics:
            rows.append({"metric": name, "value": metrics[name], "ci_low": metrics.get(f"{name}_ci_low"),
                         "ci_high": metrics.get(f"{name}_ci_high")})
    section = {"metrics": rows, "per_class": [], "confusion_png": None}
    if not rows:
        notes.append("no accuracy metrics logged (no Accuracy child run)")
    preds = cmp.predictions(entry)
    if preds is None:
        notes.append("no predictions.npz: per-class metrics and confusion matrix not available")
        return section
    if "y_true" not in preds:
        notes.append("predictions.npz has no y_true: per-class metrics and confusion matrix not available")
        return section
    if entry.tag("aif.task", "classification") == "classification":
        from sklearn.metrics import classification_report

        report = classification_report(preds["y_true"], preds["y_pred"], output_dict=True, zero_division=0)
        section["per_class"] = [{"label": k, **v} for k, v in report.items() if isinstance(v, dict)
                                and k not in ("macro avg", "weighted avg")]
        section["confusion_png"] = confusion_plot(preds["y_true"], preds["y_pred"], f"{entry.label}: confusion matrix")
    return section


def latency_section(cmp: Comparison, entry: Entry, slo_results, notes: list):
    rows, raw = [], {}
    for scenario in SCENARIO_ORDER:
        run = entry.scenario_runs.get(scenario)
        if run is None:
            continue
        m = run.data.metrics
        rows.append({
            "scenario": scenario, **{k: m.get(f"latency_{k}_ms") for k in ("p50", "p90", "p99", "mean")},
            "throughput": m.get("throughput_samples_per_s"), "target_qps": m.get("server_target_qps"),
            "valid": run.data.tags.get("aif.loadgen.result_valid", ""),
            "slos": [r for r in slo_results if r.scenario == scenario],
        })
        lat = cmp.latencies(entry, scenario)
        if lat is None:
            notes.append(f"{scenario}: no latencies.npy, latency distribution not plotted")
        else:
            raw[scenario] = lat
    if not rows:
        notes.append("no scenario runs: no latency figures")
    plot = latency_plot(raw, f"{entry.label}: per-query latency") if raw else None
    return {"rows": rows, "plot_png": plot}


def agreement_section(cmp: Comparison, entry: Entry):
    """Backends of the same benchmark, with their agreement against the reference backend."""
    rows = []
    for other in cmp.entries:
        if other.run_id != entry.run_id:
            continue
        m = other.accuracy_metrics()
        rows.append({"backend": other.backend, "precision": other.precision, "accuracy": m.get("accuracy"),
                     "agreement_top1": m.get("agreement_top1"),
                     "agreement_max_abs_diff": m.get("agreement_max_abs_diff"), "this": other is entry})
    return rows


def robustness_section(cmp: Comparison, entry: Entry, notes: list):
    data = cmp.robustness(entry)
    levels = data.get("levels") or []
    if not levels:
        notes.append("no robustness.json: robustness to input perturbations was not measured for this run")
        return None
    return {"perturbation": data.get("perturbation", ""), "relative_to": data.get("relative_to", ""),
            "levels": levels, "plot_png": robustness_plot(levels, f"{entry.label}: accuracy under noise")}


def fingerprint_section(cmp: Comparison, entry: Entry):
    results = cmp.results_json(entry)
    fingerprint = results.get("fingerprint") if isinstance(results.get("fingerprint"), dict) else {}
    rows = {k: entry.tag(k) for k in ("aif.hardware", "aif.environment", "aif.backend", "aif.precision",
                                      "aif.dataset") if entry.tag(k)}
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
    command = entry.parent.data.tags.get("aif.command") or results.get("command")
    if not command:
        notes.append("the run has no 'aif.command' tag: the reproduce command was not recorded")
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
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aifactory.benchmarks", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    env.filters["ci"] = lambda row, name: format_cell(row, name)
    return env


def _num(value, digits=4):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (int, float, np.floating, np.integer)):
        return f"{value:.{digits}g}"
    return str(value)


def _common(title):
    return {"title": title, "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def render_model_report(cmp: Comparison, entry: Entry, slos=()) -> str:
    ctx = model_context(cmp, entry, slos)
    return _environment().get_template("report_model.html.j2").render(
        **_common(f"Readiness report: {entry.label}"), **ctx)


def _leaderboard_groups(cmp: Comparison, sort_by=None):
    frame = cmp.to_frame(sort_by=sort_by)
    columns = display_columns(frame, cmp.quality_metric)
    groups = []
    for hardware, part in frame.groupby("hardware", sort=False):
        rows = [[format_cell(row, c) for c in columns] for _, row in part.iterrows()]
        groups.append({"hardware": hardware, "rows": rows})
    return columns, groups


def render_leaderboard_page(cmp: Comparison, sort_by=None) -> str:
    columns, groups = _leaderboard_groups(cmp, sort_by)
    return _environment().get_template("report_leaderboard.html.j2").render(
        **_common("Leaderboard"), columns=columns, groups=groups, issues=cmp.issues)


def comparison_context(cmp: Comparison, slos=(), baseline=None, sort_by=None, model_pages=None) -> dict:
    from .pareto import plot_html

    issues = cmp.issues
    sections = _Sections("comparison", issues)
    columns, groups = _leaderboard_groups(cmp, sort_by)
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
        "baseline": baseline or (cmp.to_frame().iloc[0]["label"] if cmp.entries else None),
        "quality": cmp.quality_metric, "issues": issues, "selection": cmp.selection.describe(),
    }


def render_comparison_report(cmp: Comparison, slos=(), baseline=None, sort_by=None, model_pages=None) -> str:
    ctx = comparison_context(cmp, slos, baseline, sort_by, model_pages)
    return _environment().get_template("report_compare.html.j2").render(**_common("Model comparison"), **ctx)


def page_name(entry: Entry) -> str:
    return "readiness-" + re.sub(r"[^A-Za-z0-9._-]+", "_", entry.label).strip("_") + ".html"


def write_reports(cmp: Comparison, out_dir, slos=(), baseline=None, sort_by=None) -> dict:
    """Write one page per model and `comparison.html` into out_dir; returns label -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for entry in cmp.entries:
        path = os.path.join(out_dir, page_name(entry))
        _write_atomic(path, render_model_report(cmp, entry, slos))
        paths[entry.label] = path
    pages = {label: os.path.basename(p) for label, p in paths.items()}
    comparison = os.path.join(out_dir, "comparison.html")
    _write_atomic(comparison, render_comparison_report(cmp, slos, baseline, sort_by, pages))
    paths["comparison"] = comparison
    return paths


def _write_atomic(path, text):
    """No half-written report if rendering or the disk fails midway."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def log_reports(cmp: Comparison, paths: dict, artifact_dir="reports") -> dict:
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
            "aif.kind": "comparison", "aif.compared_runs": ",".join(sorted({e.run_id for e in cmp.entries})),
            "aif.models": ",".join(e.label for e in cmp.entries)})
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
