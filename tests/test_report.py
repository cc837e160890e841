"""`aif compare` and `aif report` over real `aif bench run` runs of two reference models.

A real MLflow server, the benchmark suite's own CLI (LoadGen scenarios, two backends each, robustness
on), then leaderboards, reports logged as MLflow artifacts, and the pages rendered in Chromium.
"""

import pathlib
import tempfile
import time

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from aifactory.hub.testing.ci import require, require_binary

from aifactory.benchmarks.compare import compare
from aifactory.benchmarks.compare.report import log_reports, write_reports
from aifactory.benchmarks.compare.slo import evaluate_slo, parse_slo, readiness
from aifactory.benchmarks.reference import MODELS_DIR
from aifactory.hub.cli import main

EXPERIMENT = "issue5-report"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
REFERENCE_MODELS = ("digits_mlp", "digits_cnn")
SLOS = ["p99 <= 50 ms in SingleStream", "accuracy >= 99.9%", "p99 <= 15 ms at 200 QPS"]


def bench_config(model, uri, results_dir):
    """Two backends (agreement), three scenarios, robustness on; durations cut to fit a test."""
    return {
        "model": {"path": str(MODELS_DIR / f"{model}.onnx")},
        "data": {"source": "sklearn:digits"},
        "backends": [{"kind": "onnxruntime", "threads": 1},
                     {"kind": "torch", "mode": "eager", "threads": 1, "model": str(MODELS_DIR / f"{model}.pt")}],
        "scenario": {"profile": "quick", "min_duration_s": 0.3, "min_query_count": 100, "warmup_s": 0.05,
                     "scenarios": ["SingleStream", "Server", "Offline"],
                     "server_target_qps": 200, "server_search": False},
        "accuracy": {"bootstrap_resamples": 200, "robustness": True, "robustness_levels": [0.1, 0.3, 0.6]},
        "mlflow": {"tracking_uri": uri, "experiment": EXPERIMENT},
        "results_dir": str(results_dir),
    }


@pytest.fixture(scope="module")
def bench(mlflow_server):
    uri = mlflow_server  # the session's real MLflow server (conftest); this module has its own experiment
    with tempfile.TemporaryDirectory(prefix="aif-bench-results-") as workdir:
        for model in REFERENCE_MODELS:
            path = pathlib.Path(workdir) / f"{model}.yaml"
            path.write_text(yaml.safe_dump(bench_config(model, uri, pathlib.Path(workdir) / "results")))
            run = CliRunner().invoke(main, ["bench", "run", str(path), "--no-progress"])
            assert run.exit_code == 0, run.output
        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        parents = client.search_runs([experiment_id], "tags.`aif.kind` = 'benchmark'")
        ids = {r.data.tags["aif.model"]: r.info.run_id for r in parents}
        assert set(ids) == set(REFERENCE_MODELS)
        yield {"uri": uri, "client": client, "ids": ids, "experiment_id": experiment_id}


@pytest.fixture(scope="module")
def reports(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    with compare([EXPERIMENT], tracking_uri=bench["uri"]) as cmp:
        paths = write_reports(cmp, out, slos=[parse_slo(s) for s in SLOS])
        logged = log_reports(cmp, paths)
        labels = [e.label for e in cmp.entries]
    return {"paths": paths, "logged": logged, "labels": labels}


def _children(client, experiment_id, parent_id):
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {(r.data.tags["aif.backend"], r.data.tags["aif.scenario"]): r for r in runs}


def test_leaderboard_values_equal_the_benchmark_runs_logged_values(bench):
    with compare([EXPERIMENT], tracking_uri=bench["uri"]) as cmp:
        frame = cmp.to_frame()
    assert len(frame) == 4  # two models x two backends
    for _, row in frame.iterrows():
        kids = _children(bench["client"], bench["experiment_id"], bench["ids"][row["model"]])
        assert row["run_id"] == bench["ids"][row["model"]]
        accuracy = kids[(row["backend"], "Accuracy")].data.metrics
        for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high"):
            assert row[name] == accuracy[name]
        for scenario in ("SingleStream", "Server", "Offline"):
            logged = kids[(row["backend"], scenario)].data.metrics
            assert row[f"{scenario}.p90_ms"] == logged["latency_p90_ms"]
            assert row[f"{scenario}.p99_ms"] == logged["latency_p99_ms"]
        assert row["throughput_samples_per_s"] == kids[(row["backend"], "Offline")].data.metrics[
            "throughput_samples_per_s"]
        assert row["peak_host_mem_mb"] == max(kids[(row["backend"], s)].data.metrics["peak_host_mem_mb"]
                                              for s in ("SingleStream", "Server", "Offline"))
        assert row["hardware"] == kids[(row["backend"], "Offline")].data.tags["aif.hardware"]


def _expected_status(measured, ok, valid="VALID"):
    if not ok:
        return "fail"
    return "unknown" if valid == "INVALID" else "pass"


def test_slo_pass_fail_and_unknown_from_the_runs(bench):
    with compare([EXPERIMENT], models=["digits_mlp"], tracking_uri=bench["uri"]) as cmp:
        entry = next(e for e in cmp.entries if e.backend.startswith("onnxruntime"))
        single, server = entry.scenario_runs["SingleStream"], entry.scenario_runs["Server"]
        results = {s: evaluate_slo(parse_slo(s), entry) for s in SLOS}
        accuracy = entry.accuracy_metrics()["accuracy"]
    (latency,) = results[SLOS[0]]
    p99 = single.data.metrics["latency_p99_ms"]
    assert latency.measured == p99 and latency.scenario == "SingleStream"
    assert latency.status == _expected_status(p99, p99 <= 50, single.data.tags["aif.loadgen.result_valid"])
    (acc,) = results[SLOS[1]]
    assert acc.measured == accuracy and acc.status == ("pass" if accuracy >= 0.999 else "fail")
    (at_qps,) = results[SLOS[2]]
    server_p99 = server.data.metrics["latency_p99_ms"]
    assert at_qps.scenario == "Server" and at_qps.measured == server_p99
    assert server.data.metrics["server_target_qps"] >= 200
    assert at_qps.status == _expected_status(server_p99, server_p99 <= 15,
                                             server.data.tags["aif.loadgen.result_valid"])
    statuses = {r.status for rs in results.values() for r in rs}
    expected = "not ready" if "fail" in statuses else "ready" if statuses == {"pass"} else "incomplete"
    assert readiness([r for rs in results.values() for r in rs]) == expected
    # a target at a QPS the Server scenario never ran at is unknown, not a pass
    (unrun,) = evaluate_slo(parse_slo("p99 <= 15 ms at 100000 QPS"), entry)
    assert unrun.status == "unknown" and "needs 100000 QPS" in unrun.note


def test_reports_are_written_for_each_model_and_logged_to_mlflow(bench, reports):
    client = bench["client"]
    assert len(reports["labels"]) == 4
    assert {label.split(" [")[0] for label in reports["labels"]} == set(REFERENCE_MODELS)
    for label in reports["labels"]:
        page = pathlib.Path(reports["paths"][label]).read_text()
        assert f"Model readiness: {label}" in page
        assert "data:image/png;base64," in page and "<script src" not in page
        assert "Agreement between backends" in page and "torch:eager" in page and "onnxruntime" in page
        assert "gaussian_noise" in page  # robustness measured by the suite
        assert "aif bench run" in page and f"{label.split(' [')[0]}.onnx" in page  # command and config
    comparison = pathlib.Path(reports["paths"]["comparison"]).read_text()
    for name in REFERENCE_MODELS:
        assert name in comparison
    for name, run_id in bench["ids"].items():
        logged = [a.path for a in client.list_artifacts(run_id, "reports")]
        assert len([p for p in logged if p.startswith(f"reports/readiness-{name}")]) == 2, logged
    comparison_run = client.get_run(reports["logged"]["comparison_run_id"])
    assert comparison_run.info.status == "FINISHED"
    assert comparison_run.data.tags["aif.kind"] == "comparison"
    logged = [a.path for a in client.list_artifacts(comparison_run.info.run_id, "reports")]
    assert "reports/comparison.html" in logged and "reports/leaderboard.csv" in logged
    # the comparison run is not itself picked up as a benchmark next time
    with compare([EXPERIMENT], tracking_uri=bench["uri"]) as cmp:
        assert len(cmp.entries) == 4


def _frame_with(page, selector, timeout_s=90):
    """The (i)frame that shows `selector`: MLflow's UI renders HTML artifacts in an iframe."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.locator(selector).count():
                return frame
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame shows {selector} within {timeout_s}s")


def test_reports_render_in_chromium_with_both_models_and_the_plots(bench, reports):
    require_binary("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "python playwright not installed (pip install -e '.[test]')")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(pathlib.Path(reports["paths"]["comparison"]).as_uri())
            for label in reports["labels"]:
                assert page.get_by_role("link", name=label).first.is_visible(), label
            png = page.locator("img.pareto-png").first
            png.scroll_into_view_if_needed()
            assert png.is_visible() and png.evaluate("img => img.naturalWidth") > 100
            plotly = page.locator(".plotly-graph-div .main-svg").first
            plotly.wait_for(state="visible", timeout=20000)  # plotly.js ran: inlined, no network
            assert page.locator(".plotly-graph-div .scatterlayer .point").count() >= 4
            page.screenshot(path=str(ARTIFACTS / "report-comparison.png"), full_page=True)

            label = next(lb for lb in reports["labels"] if lb.startswith("digits_mlp"))
            page.goto(pathlib.Path(reports["paths"][label]).as_uri())
            assert page.get_by_role("heading", name=f"Model readiness: {label}").is_visible()
            for plot in ("#confusion", "#latency-plot", "#robustness-plot"):
                image = page.locator(plot)
                image.scroll_into_view_if_needed()
                assert image.is_visible() and image.evaluate("img => img.naturalWidth") > 100, plot
            page.screenshot(path=str(ARTIFACTS / "report-digits_mlp.png"), full_page=True)

            # and it opens from the MLflow UI, where it is logged as an artifact
            run_id, name = bench["ids"]["digits_mlp"], pathlib.Path(reports["paths"][label]).name
            page.goto(f"{bench['uri']}/#/experiments/{bench['experiment_id']}/runs/{run_id}/artifacts/reports/{name}")
            frame = _frame_with(page, "#confusion")
            assert frame.get_by_role("heading", name=f"Model readiness: {label}").is_visible()
            page.screenshot(path=str(ARTIFACTS / "report-in-mlflow-ui.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "report-comparison.png").stat().st_size > 10000


def test_report_cli_and_its_errors(bench, tmp_path):
    out = tmp_path / "pages"
    result = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "-e", EXPERIMENT,
                                       "-m", "digits_mlp", "--slo", "p90 < 10 s", "-o", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    pages = sorted(p.name for p in out.glob("readiness-*.html"))
    assert len(pages) == 2 and all(p.startswith("readiness-digits_mlp") for p in pages)
    assert (out / "comparison.html").exists()
    bad = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "--slo", "p99 under 15ms", "-o", str(out)])
    assert bad.exit_code == 2
    assert "expected '<p50" in bad.output and "p99 <= 15 ms at 200 QPS" in bad.output
    assert "Traceback" not in bad.output
    empty = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "-e", "missing", "-o", str(out)])
    assert empty.exit_code == 1 and "experiment 'missing': not found" in empty.output
