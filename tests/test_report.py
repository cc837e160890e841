"""Model readiness reports from real benchmark runs in a real MLflow server, rendered in Chromium."""

import os
import pathlib
import sys
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from conftest import require, require_binary

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "perf"))
import compare_fixtures as cf  # noqa: E402

from aifactory.benchmarks.compare import compare  # noqa: E402
from aifactory.benchmarks.report import evaluate_slo, log_reports, parse_slo, readiness, write_reports  # noqa: E402
from aifactory.hub.cli import main  # noqa: E402

EXPERIMENT = "issue5-report"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
SLOS = ["p99 <= 50 ms in SingleStream", "accuracy >= 99%", "p99 <= 15 ms at 200 QPS"]


@pytest.fixture(scope="module")
def bench():
    with tempfile.TemporaryDirectory(prefix="aif-mlflow-") as workdir, cf.mlflow_server(workdir) as uri:
        client = MlflowClient(uri)
        experiment_id = client.create_experiment(EXPERIMENT)
        split = cf.digits_split()
        logreg = cf.measure_sklearn_model("logreg", LogisticRegression(max_iter=3000), split)
        forest_model = RandomForestClassifier(n_estimators=40, random_state=0)
        forest = cf.measure_sklearn_model("forest", forest_model, split)
        # a second backend of the same forest: inputs in float32, as a lower-precision runtime would
        forest32 = cf.measure_sklearn_model("forest", forest_model, split, backend="sklearn:float32",
                                            dtype=np.float32, fit=False)
        ids = {"logreg": cf.log_benchmark(client, experiment_id, logreg)}
        ids["forest"] = cf.log_benchmark(client, experiment_id, forest)
        cf.log_benchmark(client, experiment_id, forest32, parent_id=ids["forest"], reference=forest)
        yield {"uri": uri, "client": client, "ids": ids, "workdir": workdir}


@pytest.fixture(scope="module")
def reports(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    with compare([EXPERIMENT], tracking_uri=bench["uri"]) as cmp:
        paths = write_reports(cmp, out, slos=[parse_slo(s) for s in SLOS], baseline="logreg")
        logged = log_reports(cmp, paths)
        labels = [e.label for e in cmp.entries]
    return {"paths": paths, "logged": logged, "labels": labels}


def test_slo_pass_fail_and_unknown_from_the_runs(bench):
    with compare([EXPERIMENT], models=["logreg"], tracking_uri=bench["uri"]) as cmp:
        entry = cmp.entries[0]
        p99 = entry.scenario_runs["SingleStream"].data.metrics["latency_p99_ms"]
        results = {s: evaluate_slo(parse_slo(s), entry) for s in SLOS}
    (latency,) = results[SLOS[0]]
    assert latency.measured == p99 and latency.status == ("pass" if p99 <= 50 else "fail")
    (accuracy,) = results[SLOS[1]]
    assert accuracy.status == "fail" and accuracy.measured < 0.99
    (server,) = results[SLOS[2]]
    assert server.status == "unknown" and "no Server run" in server.note
    assert readiness([r for rs in results.values() for r in rs]) == "not ready"


def test_reports_are_written_for_each_model_and_logged_to_mlflow(bench, reports):
    client = bench["client"]
    assert set(reports["labels"]) == {"logreg", "forest [sklearn:float64]", "forest [sklearn:float32]"}
    for label in reports["labels"]:
        page = pathlib.Path(reports["paths"][label]).read_text()
        assert f"Model readiness: {label}" in page
        assert "data:image/png;base64," in page and "<script src" not in page
    forest_page = pathlib.Path(reports["paths"]["forest [sklearn:float32]"]).read_text()
    assert "Agreement between backends" in forest_page and "sklearn:float64" in forest_page
    assert "aif bench run --model forest" in forest_page  # the reproduce command
    assert "gaussian_noise" in forest_page  # robustness table
    for name, run_id in bench["ids"].items():
        logged = [a.path for a in client.list_artifacts(run_id, "reports")]
        assert any(p.startswith("reports/readiness-") and name in p for p in logged), logged
    comparison_run = client.get_run(reports["logged"]["comparison_run_id"])
    assert comparison_run.info.status == "FINISHED"
    assert comparison_run.data.tags["aif.kind"] == "comparison"
    assert "reports/comparison.html" in [a.path for a in client.list_artifacts(comparison_run.info.run_id, "reports")]
    # the comparison run is not itself picked up as a benchmark next time
    with compare([EXPERIMENT], tracking_uri=bench["uri"]) as cmp:
        assert len(cmp.entries) == 3


def test_reports_render_in_chromium_with_both_models_and_the_plots(reports):
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
            for name in ("logreg", "forest [sklearn:float64]"):
                assert page.get_by_role("link", name=name).first.is_visible()
            png = page.locator("img.pareto-png").first
            png.scroll_into_view_if_needed()
            assert png.is_visible() and png.evaluate("img => img.naturalWidth") > 100
            plotly = page.locator(".plotly-graph-div .main-svg").first
            plotly.wait_for(state="visible", timeout=20000)  # plotly.js ran: inlined, no network
            assert page.locator(".plotly-graph-div .scatterlayer .point").count() >= 3
            page.screenshot(path=str(ARTIFACTS / "report-comparison.png"), full_page=True)

            page.goto(pathlib.Path(reports["paths"]["logreg"]).as_uri())
            assert page.get_by_role("heading", name="Model readiness: logreg").is_visible()
            for plot in ("#confusion", "#latency-plot", "#robustness-plot"):
                image = page.locator(plot)
                image.scroll_into_view_if_needed()
                assert image.is_visible() and image.evaluate("img => img.naturalWidth") > 100, plot
            page.screenshot(path=str(ARTIFACTS / "report-logreg.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "report-comparison.png").stat().st_size > 10000


def test_report_cli_and_its_errors(bench, tmp_path):
    out = tmp_path / "pages"
    result = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "-e", EXPERIMENT, "-m", "logreg",
                                       "--slo", "p90 < 1 s", "-o", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    assert (out / "comparison.html").exists() and (out / "readiness-logreg.html").exists()
    assert "ready" in (out / "readiness-logreg.html").read_text()
    bad = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "--slo", "p99 under 15ms", "-o", str(out)])
    assert bad.exit_code == 2
    assert "expected '<p50" in bad.output and "p99 <= 15 ms at 200 QPS" in bad.output
    assert "Traceback" not in bad.output
    empty = CliRunner().invoke(main, ["report", "--tracking-uri", bench["uri"], "-e", "missing", "-o", str(out)])
    assert empty.exit_code == 1 and "experiment 'missing': not found" in empty.output
