"""ipywidgets panels: benchmark a model, compare runs, see the session. Errors show in place."""

from __future__ import annotations

import html
import os
import tempfile
import threading
from pathlib import Path

import ipywidgets as w

from aifactory.benchmarks.config import DEFAULT_EXPERIMENT
from aifactory.benchmarks.layout import KIND_BENCHMARK, OFFLINE, SCENARIOS, SINGLE_STREAM, Artifacts, Metrics, Tags

from .session import mlflow_link, session_info

MODEL_SUFFIXES = (".onnx", ".pt", ".pt2")
DATA_SUFFIXES = (".npz", ".csv", ".parquet", ".jsonl", ".txt")
BUILTIN_DATA = ["sklearn:digits", "sklearn:breast_cancer", "sklearn:diabetes"]
DEFAULT_SCENARIOS = (SINGLE_STREAM, OFFLINE)
TABLE_COLUMNS = ["backend", "scenario", "result_valid", Metrics.LATENCY_P50, Metrics.LATENCY_P90, Metrics.LATENCY_P99,
                 Metrics.TTFT_P50, Metrics.TTFT_P99, Metrics.TPOT_P50, Metrics.TPOT_P99, Metrics.OUTPUT_TOKENS_PER_S,
                 Metrics.THROUGHPUT, Metrics.SERVER_MAX_VALID_QPS, Metrics.ACCURACY, Metrics.ci_low(Metrics.ACCURACY),
                 Metrics.ci_high(Metrics.ACCURACY), Metrics.EXACT_MATCH, Metrics.ROUGE_L, Metrics.PERPLEXITY,
                 Metrics.AGREEMENT_TOP1, Metrics.AGREEMENT_TOKENS]
BACKEND_CHOICES = ["onnxruntime", "torch:eager", "torch:compile", "transformers"]
MAX_FILES_LISTED = 200


def error_box(message):
    return f'<div class="aif-error" style="color:#b00020;white-space:pre-wrap"><b>Error:</b> {html.escape(message)}</div>'


def warning_box(message):
    return f'<div class="aif-warning" style="color:#8a6d00;white-space:pre-wrap">{html.escape(message)}</div>'


def files_under(home, suffixes, limit=MAX_FILES_LISTED):
    """Model/data files in the user's home (hidden folders skipped), relative to it."""
    found = []
    for root, dirs, files in os.walk(home):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("aif-results", "__pycache__"))
        for name in sorted(files):
            if name.endswith(suffixes):
                found.append(os.path.relpath(os.path.join(root, name), home))
                if len(found) >= limit:
                    return found
    return found


def model_dirs_under(home, limit=MAX_FILES_LISTED):
    """Hugging Face model directories (holding config.json) in the user's home, relative to it."""
    found = []
    for root, dirs, files in os.walk(home):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("aif-results", "__pycache__"))
        if "config.json" in files and any(f.endswith((".safetensors", ".bin")) for f in files):
            found.append(os.path.relpath(root, home))
            dirs[:] = []  # a model's own folders (onnx/) are not models
            if len(found) >= limit:
                break
    return found


def registered_models(tracking_uri=None):
    """`models:/NAME/latest` for every registered model; raises with a clear message if unreachable."""
    from mlflow.tracking import MlflowClient

    from aifactory.benchmarks.results import probe

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return []
    probe(uri)  # fail fast instead of MLflow's minutes of retries
    return [f"models:/{m.name}/latest" for m in MlflowClient(uri).search_registered_models(max_results=200)]


class BenchmarkPanel(w.VBox):
    """Pick a model, dataset, backends, device and scenarios; Run, watch, read the results."""

    def __init__(self, model=None, data="sklearn:digits", label=None, backends=("onnxruntime",), device="auto",
                 scenarios=DEFAULT_SCENARIOS, profile="quick", home=None, tracking_uri=None,
                 experiment=DEFAULT_EXPERIMENT, results_dir="aif-results", **overrides):
        self.home = Path(home or os.getcwd())
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.experiment = experiment
        self.results_dir = results_dir
        self.overrides = overrides  # extra config sections, e.g. scenario={"min_duration_s": 0.5}
        self.job = None
        self.model = w.Combobox(value=model or "", options=self._model_choices(), description="Model",
                                placeholder="file in your home, or models:/NAME/VERSION", ensure_option=False,
                                layout=w.Layout(width="60%"))
        self.data = w.Combobox(value=data, options=BUILTIN_DATA + files_under(self.home, DATA_SUFFIXES),
                               description="Dataset", ensure_option=False, layout=w.Layout(width="60%"))
        self.label = w.Text(value=label or "", description="Label", placeholder="column/key (files only)")
        self.backends = w.SelectMultiple(options=BACKEND_CHOICES, value=tuple(backends), description="Backends",
                                         rows=4)
        self.device = w.Dropdown(options=["auto", "cpu", "cuda"], value=device, description="Device")
        self.scenarios = w.SelectMultiple(options=list(SCENARIOS), value=tuple(scenarios), description="Scenarios", rows=4)
        self.profile = w.ToggleButtons(options=["quick", "full"], value=profile, description="Profile")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="40%"))
        self.step = w.Label("")
        self.message = w.HTML("")
        self.table = w.HTML("")
        self.histogram = w.Image(format="png", layout=w.Layout(display="none"))
        self.link = w.HTML("")
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        super().__init__([
            w.HTML("<h4>Benchmark a model</h4>"), self.model, self.data, self.label,
            w.HBox([self.backends, self.scenarios]), w.HBox([self.device, self.profile]),
            w.HBox([self.run_button, self.cancel_button, self.progress, self.step]),
            self.message, self.table, self.histogram, self.link,
        ])
        self.add_class("aif-benchmark-panel")

    def _model_choices(self):
        choices = files_under(self.home, MODEL_SUFFIXES) + model_dirs_under(self.home)
        try:
            choices += registered_models(self.tracking_uri)
        except Exception:  # noqa: BLE001, S110 - the list is a convenience; Run reports MLflow problems
            pass
        return choices

    # --- config ----------------------------------------------------------------------------
    def config(self):
        """The BenchmarkConfig the widgets describe; raises ConfigError naming the field."""
        from aifactory.benchmarks.config import BenchmarkConfig, ConfigError, parse_backend_shorthand

        model = self.model.value.strip()
        if not model:
            raise ConfigError("model: pick a model file (.onnx/.pt/.pt2) or an MLflow model models:/NAME/VERSION")
        if not model.startswith(("models:/", "runs:/")) and ":" not in model and not os.path.isabs(model):
            model = str(self.home / model)
        data = self.data.value.strip()
        if data and not data.startswith("sklearn:") and not os.path.isabs(data):
            data = str(self.home / data)
        if not self.backends.value:
            raise ConfigError("backends: pick at least one backend")
        if not self.scenarios.value:
            raise ConfigError("scenarios: pick at least one scenario")
        backends = []
        for i, text in enumerate(self.backends.value):
            backend = parse_backend_shorthand(text, f"backends[{i}]")
            backend["device"] = self.device.value
            backends.append(backend)
        raw = {"model": {"path": model}, "data": {"source": data}, "backends": backends,
               "scenario": {"scenarios": list(self.scenarios.value), "profile": self.profile.value},
               "mlflow": {"tracking_uri": self.tracking_uri, "experiment": self.experiment,
                          "enabled": bool(self.tracking_uri)},
               "results_dir": str(self.home / self.results_dir)}
        if self.label.value.strip():
            raw["data"]["label"] = self.label.value.strip()
        for section, values in self.overrides.items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
        return BenchmarkConfig.from_dict(raw, source="panel")

    # --- running ---------------------------------------------------------------------------
    def run(self, wait=False, timeout=None):
        """Start the benchmark in a worker process; `wait=True` blocks (scripts, nbclient)."""
        from .jobs import BenchmarkJob

        if self.job is not None and self.job.running:
            self._show_message(warning_box("a benchmark is already running: cancel it first"))
            return self.job
        self._clear()
        try:
            config = self.config()
        except Exception as err:  # noqa: BLE001 - any bad input is shown in place
            self._show_message(error_box(str(err)))
            return None
        self.job = BenchmarkJob(config, on_update=self._on_update).start()
        self._set_running(True)
        if wait:
            self.job.wait(timeout)
        return self.job

    def cancel(self):
        if self.job is not None:
            self.job.cancel()
            self.step.value = "cancelling…"

    def _clear(self):
        self.message.value = self.table.value = self.link.value = ""
        self.histogram.layout.display = "none"
        self.progress.value, self.progress.bar_style, self.step.value = 0, "", "starting"

    def _set_running(self, running):
        self.run_button.disabled = running
        self.cancel_button.disabled = not running

    def _show_message(self, text):
        self.message.value = text

    def _on_update(self, state):
        self.progress.max = max(state.total, 1)
        self.progress.value = state.done
        self.step.value = state.step if state.status == "RUNNING" else state.status.lower()
        if state.warnings:
            self._show_message(warning_box("\n".join(state.warnings)))
        if state.mlflow_run_id:
            self.link.value = self._mlflow_html(state.mlflow_run_id)
        if state.status == "RUNNING":
            return
        self._set_running(False)
        if state.status == "FINISHED":
            self.progress.bar_style = "success"
            try:
                self._show_result()
            except Exception as err:  # noqa: BLE001 - e.g. results deleted meanwhile
                self._show_message(error_box(f"cannot show the results: {err}"))
        else:
            self.progress.bar_style = "danger"
            self._show_message(error_box(state.error or state.status.lower()))

    def _show_result(self):
        result = self.job.result()
        frame = result.to_frame()
        columns = [c for c in TABLE_COLUMNS if c in frame and frame[c].notna().any()]
        self.table.value = ('<div class="aif-results-table">'
                            + frame[columns].to_html(index=False, float_format="{:.4g}".format) + "</div>")
        histogram = self._histogram_path(result)
        if histogram is not None:
            self.histogram.value = histogram.read_bytes()
            self.histogram.layout.display = ""
        marker = self.job.state.outcome.get("mlflow") or {}
        if not marker.get("uploaded"):
            reason = marker.get("reason") or "MLflow not configured"
            self._show_message(warning_box(f"results kept locally in {result.results_dir} ({reason}); "
                                           f"upload later with `aif bench upload {result.results_dir}`"))

    @staticmethod
    def _histogram_path(result):
        for child in result.children:
            for rel in child.artifacts:
                if rel.endswith(Artifacts.LATENCY_HISTOGRAM):
                    return Path(result.results_dir) / rel
        return None

    def _mlflow_html(self, run_id):
        base = mlflow_link({"MLFLOW_TRACKING_URI": self.tracking_uri or ""})
        if not base:
            return ""
        base = base if base.endswith("/") else base + "/"
        return (f'<a class="aif-mlflow-link" href="{html.escape(base)}#/experiments/-/runs/{run_id}" '
                f'target="_blank">MLflow run {run_id}</a>')


class ComparePanel(w.VBox):
    """Pick benchmark runs from MLflow; see the leaderboard and the Pareto plot inline."""

    def __init__(self, experiments=(DEFAULT_EXPERIMENT,), tracking_uri=None, max_runs=200):
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.max_runs = max_runs
        self.experiments = w.Text(value=",".join(experiments), description="Experiments")
        self.runs = w.SelectMultiple(options=[], description="Runs", rows=8, layout=w.Layout(width="80%"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.compare_button = w.Button(description="Compare", button_style="primary", icon="table")
        self.message = w.HTML("")
        self.leaderboard = w.HTML("")
        self.plot = w.Image(format="png", layout=w.Layout(display="none"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.compare_button.on_click(lambda _: self.compare())
        super().__init__([w.HTML("<h4>Compare benchmark runs</h4>"), self.experiments,
                          w.HBox([self.refresh_button, self.compare_button]), self.runs,
                          self.message, self.leaderboard, self.plot])
        self.add_class("aif-compare-panel")
        self.refresh()

    def _experiment_names(self):
        return [e.strip() for e in self.experiments.value.split(",") if e.strip()]

    def refresh(self):
        """List the benchmark (parent) runs of the experiments, newest first; none selected = all."""
        self.message.value = ""
        try:
            self.runs.options = self._list_runs()
        except Exception as err:  # noqa: BLE001
            self.message.value = error_box(f"cannot list runs from MLflow at {self.tracking_uri}: {err}")

    def _list_runs(self):
        from mlflow.tracking import MlflowClient

        self._check_reachable()
        client = MlflowClient(self.tracking_uri)
        ids = [e.experiment_id for e in map(client.get_experiment_by_name, self._experiment_names()) if e]
        if not ids:
            return []
        runs = client.search_runs(ids, f"tags.`{Tags.KIND}` = '{KIND_BENCHMARK}'", max_results=self.max_runs,
                                  order_by=["attributes.start_time DESC"])
        return [(_run_label(r), r.info.run_id) for r in runs]

    def compare(self):
        from aifactory.benchmarks.compare import compare

        self.message.value = self.leaderboard.value = ""
        self.plot.layout.display = "none"
        try:
            self._check_reachable()
            with compare(experiments=self._experiment_names(), run_ids=tuple(self.runs.value),
                         tracking_uri=self.tracking_uri) as cmp:
                self.leaderboard.value = f'<div class="aif-leaderboard">{cmp.to_html()}</div>'
                with tempfile.TemporaryDirectory() as tmp:
                    if cmp.latency_column():
                        self.plot.value = Path(cmp.plot(os.path.join(tmp, "pareto.png"))).read_bytes()
                        self.plot.layout.display = ""
                if cmp.issues:
                    self.message.value = warning_box("\n".join(str(i) for i in cmp.issues))
        except Exception as err:  # noqa: BLE001
            self.message.value = error_box(str(err))

    def _check_reachable(self):
        from aifactory.benchmarks.results import probe

        if not self.tracking_uri:
            raise ValueError("no tracking URI (MLFLOW_TRACKING_URI is not set)")
        probe(self.tracking_uri)


def _run_label(run):
    tags = run.data.tags
    return f"{tags.get(Tags.MODEL, '?')} · {tags.get(Tags.HARDWARE, '?')} · {run.info.run_name} ({run.info.status})"


class SessionPanel(w.VBox):
    """Slurm job, node, GPUs (live utilisation/memory), walltime remaining, links, and the user's
    served models (`aif serve`) with their URLs and walltime left; refreshes itself."""

    def __init__(self, interval_s=5.0, live=True):
        self.interval_s = interval_s
        self.view = w.HTML("")
        self.endpoints = w.HTML("")
        self._stop = threading.Event()
        super().__init__([w.HTML("<h4>Your session</h4>"), self.view, w.HTML("<h4>Your served models</h4>"),
                          self.endpoints])
        self.add_class("aif-session-panel")
        self.refresh()
        if live:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self):
        self._stop.set()
        super().close()

    def refresh(self):
        try:
            self.info = session_info()
            self.view.value = render_session(self.info)
        except Exception as err:  # noqa: BLE001
            self.view.value = error_box(f"session information unavailable: {err}")
        try:
            self.endpoints.value = render_endpoints(served_models())
        except Exception as err:  # noqa: BLE001 - e.g. an unreadable record
            self.endpoints.value = error_box(f"served models unavailable: {err}")


def served_models(env=None):
    """This user's endpoints from their records (no Slurm call), with URLs on the hub's public address."""
    from aifactory.hub.serving.manager import current_user
    from aifactory.hub.serving.overview import summaries

    return summaries(current_user(), public_base(env))


def public_base(env=None):
    """The hub's public address as the session knows it (from MLflow's URL through the hub), or ""."""
    uri = (os.environ if env is None else env).get("MLFLOW_TRACKING_URI") or ""
    return uri[:uri.index("/services/")] if "/services/" in uri else ""


def render_endpoints(rows):
    """The endpoints as an HTML table (every value escaped), or a line on how to start one."""
    if not rows:
        return '<div class="aif-endpoints">none (start one with <code>aif serve start MODEL</code>)</div>'
    head = "".join(f"<th style='text-align:left'>{h}</th>" for h in ("Endpoint", "State", "URL (base_url)",
                                                                     "Walltime left"))
    body = "".join(
        f'<tr class="aif-endpoint"><td>{html.escape(r["name"])}</td>'
        f'<td>{html.escape(r["state"])}{" (" + html.escape(r["detail"]) + ")" if r["detail"] else ""}</td>'
        f'<td><code>{html.escape(r["url"])}</code></td><td>{html.escape(r["walltime_left"])}</td></tr>'
        for r in rows)
    return f'<table class="aif-endpoints"><tr>{head}</tr>{body}</table>'


def render_session(info):
    def row(name, value):
        return f"<tr><th style='text-align:left'>{name}</th><td>{value}</td></tr>"

    remaining = info.get("walltime_remaining_s")
    rows = [row("Slurm job", html.escape(info.get("slurm_job_id") or "— (not a Slurm session)")),
            row("Node", html.escape(info.get("node") or "—")),
            row("GPUs", html.escape(", ".join(info.get("gpus") or []) or "none")),
            row("Walltime remaining", _duration(remaining) if remaining is not None else "—")]
    for gpu in info.get("gpu_stats") or []:
        rows.append(row(f"GPU {gpu['index']}", f"{html.escape(gpu['name'])}: {_fmt(gpu['utilization_pct'])}% busy, "
                                                f"{_fmt(gpu['memory_used_mib'])}/{_fmt(gpu['memory_total_mib'])} MiB"))
    links = []
    if info.get("mlflow_url"):
        links.append(f'<a href="{html.escape(info["mlflow_url"])}" target="_blank">MLflow</a>')
    if info.get("hub_control_panel_url"):
        links.append(f'<a href="{html.escape(info["hub_control_panel_url"])}" target="_blank">Control panel</a>')
    rows.append(row("Links", " · ".join(links) or "—"))
    return f'<table class="aif-session">{"".join(rows)}</table>'


def _fmt(value):
    return "n/a" if value is None else f"{value:.0f}"


def _duration(seconds):
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"
