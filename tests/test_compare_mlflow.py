"""`aif compare` over real benchmark runs of two reference models in a real MLflow server.

The runs follow docs/mlflow-layout.md and carry real data: two scikit-learn classifiers on the
bundled digits dataset, real predictions and really measured per-query latencies.
"""

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.contingency_tables import mcnemar

from aifactory.benchmarks import testing as cf
from aifactory.benchmarks.compare import EmptySelection, compare, pareto
from aifactory.hub.cli import main

EXPERIMENT = "issue5-bench"


@pytest.fixture(scope="module")
def bench(mlflow_server):
    """Two real models' benchmarks in the session's MLflow server (conftest), in experiments of their own."""
    server = mlflow_server
    client = MlflowClient(server)
    experiment_id = client.create_experiment(EXPERIMENT)
    split = cf.digits_split()
    results = {
        # scaled inputs: lbfgs converges in ~100 iterations instead of thousands
        "logreg": cf.measure_sklearn_model("logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                                           split),
        "forest": cf.measure_sklearn_model("forest", RandomForestClassifier(n_estimators=40, random_state=0), split),
    }
    run_ids = {name: cf.log_benchmark(client, experiment_id, r) for name, r in results.items()}
    return dataclasses.make_dataclass("Bench", ["uri", "client", "results", "run_ids", "split"])(
        server, client, results, run_ids, split)


def _children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["aif.scenario"]: r for r in runs}


def test_leaderboard_values_equal_the_runs_logged_values(bench):
    with compare([EXPERIMENT], tracking_uri=bench.uri) as cmp:
        frame = cmp.to_frame().set_index("model")
    assert set(frame.index) == {"logreg", "forest"}
    for model, parent_id in bench.run_ids.items():
        kids = _children(bench.client, parent_id)
        row = frame.loc[model]
        assert row["run_id"] == parent_id
        acc = kids["Accuracy"].data.metrics
        for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "f1_macro"):
            assert row[name] == acc[name]
        for scenario in ("SingleStream", "Offline"):
            for p in ("p90", "p99"):
                assert row[f"{scenario}.{p}_ms"] == kids[scenario].data.metrics[f"latency_{p}_ms"]
        assert row["throughput_samples_per_s"] == kids["Offline"].data.metrics["throughput_samples_per_s"]
        assert row["peak_host_mem_mb"] == max(kids[s].data.metrics["peak_host_mem_mb"] for s in ("SingleStream", "Offline"))
        assert row["hardware"] == kids["Offline"].data.tags["aif.hardware"]
        # and the logged values are the data's: accuracy from the predictions, p99 from raw latencies
        r = bench.results[model]
        assert row["accuracy"] == pytest.approx(np.mean(r.y_pred == r.y_true))
        assert row["SingleStream.p99_ms"] == pytest.approx(np.percentile(r.latencies_s["SingleStream"], 99) * 1e3)


def test_leaderboard_sorts_and_exports(bench, tmp_path):
    with compare([EXPERIMENT], tracking_uri=bench.uri) as cmp:
        by_accuracy = cmp.to_frame()
        by_latency = cmp.to_frame(sort_by="SingleStream.p99_ms")
        assert list(by_accuracy["accuracy"]) == sorted(by_accuracy["accuracy"], reverse=True)
        assert list(by_latency["SingleStream.p99_ms"]) == sorted(by_latency["SingleStream.p99_ms"])
        with pytest.raises(ValueError, match="sort_by: no column 'speed'"):
            cmp.to_frame(sort_by="speed")
        cmp.to_csv(tmp_path / "board.csv")
        html = cmp.to_html()
    back = pd.read_csv(tmp_path / "board.csv")
    assert list(back["run_id"]) == list(by_accuracy["run_id"])
    assert np.allclose(back["accuracy"], by_accuracy["accuracy"])
    assert "logreg" in html and "forest" in html and "<table" in html


def test_pareto_front_from_runs_matches_the_definition(bench):
    with compare([EXPERIMENT], tracking_uri=bench.uri) as cmp:
        front = cmp.pareto()
    x, y = "SingleStream.p99_ms", "accuracy"
    expected = pareto.pareto_mask(front[x], front[y])
    assert list(front["pareto"]) == list(expected)
    # with one hardware group and two models, a model is dominated iff the other wins on both axes
    a, b = front.iloc[0], front.iloc[1]
    assert a["pareto"] == (not (b[x] <= a[x] and b[y] >= a[y] and (b[x] < a[x] or b[y] > a[y])))


def test_significance_is_computed_from_the_raw_artifacts(bench):
    with compare([EXPERIMENT], tracking_uri=bench.uri) as cmp:
        table = cmp.significance("logreg", n_resamples=500)
    a, b = bench.results["logreg"], bench.results["forest"]
    acc = table[table["test"] == "accuracy (McNemar)"].iloc[0]
    # McNemar's p-value equals statsmodels' on the table built from the predictions directly
    correct_a, correct_b = a.y_pred == a.y_true, b.y_pred == b.y_true
    tab = np.array([[np.sum(correct_a & correct_b), np.sum(correct_a & ~correct_b)],
                    [np.sum(~correct_a & correct_b), np.sum(~correct_a & ~correct_b)]])
    exact = tab[0, 1] + tab[1, 0] < 25
    assert acc["pvalue"] == pytest.approx(mcnemar(tab, exact=exact, correction=True).pvalue, rel=1e-12)
    lat = table[table["test"] == "latency p99 SingleStream"].iloc[0]
    expected = (np.percentile(b.latencies_s["SingleStream"], 99) - np.percentile(a.latencies_s["SingleStream"], 99)) * 1e3
    assert lat["difference"] == pytest.approx(expected)
    assert lat["ci_low"] <= lat["difference"] <= lat["ci_high"]
    assert set(table["model"]) == {"forest"} and set(table["baseline"]) == {"logreg"}


def test_regression_against_a_named_baseline_is_flagged(bench):
    """A model that is really slower and less accurate than the baseline is flagged, CLI exits 3."""
    client = bench.client
    experiment_id = client.create_experiment("issue5-regression")
    base = bench.results["logreg"]
    rng = np.random.default_rng(5)
    worse_pred = base.y_pred.copy()
    flip = rng.choice(len(worse_pred), size=len(worse_pred) // 5, replace=False)
    worse_pred[flip] = (base.y_true[flip] + 1) % 10  # wrong on 20% of samples
    slow = dataclasses.replace(base, model="slowpoke", y_pred=worse_pred,
                               # every query slower than the baseline's slowest: really slower
                               latencies_s={k: v * 2 + v.max() for k, v in base.latencies_s.items()})
    cf.log_benchmark(client, experiment_id, base)
    cf.log_benchmark(client, experiment_id, slow)
    with compare(["issue5-regression"], tracking_uri=bench.uri) as cmp:
        table = cmp.significance("logreg", n_resamples=500)
    assert table["regression"].all(), table[["test", "verdict"]]
    assert set(table["verdict"]) == {"slower", "less accurate"}
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", bench.uri, "-e", "issue5-regression",
                                       "--baseline", "logreg", "--fail-on-regression"])
    assert result.exit_code == 3, result.output
    assert "REGRESSION" in result.output and "slowpoke" in result.output


def test_cli_leaderboard_csv_and_pareto_plots(bench, tmp_path):
    png, html = tmp_path / "front.png", tmp_path / "front.html"
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", bench.uri, "-e", EXPERIMENT, "-f", "csv",
                                       "-o", str(tmp_path / "b.csv"), "--pareto", str(png), "--pareto", str(html)])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "b.csv")
    with compare([EXPERIMENT], tracking_uri=bench.uri) as cmp:
        expected = cmp.to_frame()
    assert list(board["model"]) == list(expected["model"])
    assert np.allclose(board["SingleStream.p99_ms"], expected["SingleStream.p99_ms"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    assert "logreg" in page and "forest" in page and "Plotly.newPlot" in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inlined: opens with no network
    table = CliRunner().invoke(main, ["compare", "--tracking-uri", bench.uri, "-e", EXPERIMENT, "-m", "forest"])
    assert table.exit_code == 0 and "forest" in table.output and "logreg" not in table.output


def test_bad_input_is_reported_and_the_rest_still_compares(bench):
    client = bench.client
    experiment_id = client.create_experiment("issue5-bad")
    good = bench.results["logreg"]
    ok = cf.log_benchmark(client, experiment_id, good)
    other_dataset = cf.log_benchmark(client, experiment_id, dataclasses.replace(good, model="on-mnist"),
                                     dataset="torchvision:mnist")
    other_hw = cf.log_benchmark(client, experiment_id, dataclasses.replace(good, model="on-gpu"),
                                hardware="cuda:NVIDIA H200", with_artifacts=False)
    bare = client.create_run(experiment_id, run_name="bare", tags={"aif.kind": "benchmark", "aif.model": "bare"})
    client.set_terminated(bare.info.run_id)
    deleted = cf.log_benchmark(client, experiment_id, dataclasses.replace(good, model="gone"))
    client.delete_run(deleted)
    selected = [ok, other_dataset, other_hw, bare.info.run_id, deleted, "0" * 32]
    with compare(run_ids=selected, tracking_uri=bench.uri) as cmp:
        assert {e.model for e in cmp.entries} == {"logreg", "on-mnist", "on-gpu", "bare"}
        table = cmp.significance("logreg", n_resamples=200)
        messages = "\n".join(str(i) for i in cmp.issues)
        frame = cmp.to_frame()
    assert f"run {deleted}: was deleted" in messages
    assert "not found in the tracking server" in messages
    assert "different datasets (sklearn:digits, torchvision:mnist, unknown)" in messages
    assert f"3 hardware fingerprints ({cf.HARDWARE}, cuda:NVIDIA H200, unknown)" in messages
    assert "bare: no accuracy metrics" in messages and "bare: no latency metrics" in messages
    assert "on-mnist: accuracy not compared with baseline logreg: different datasets" in messages
    assert "on-gpu: latency not compared with baseline logreg: different hardware" in messages
    # what can be compared still is: latency of on-mnist (same hardware) against logreg
    assert "latency p99 SingleStream" in set(table[table["model"] == "on-mnist"]["test"])
    assert frame.set_index("model").loc["logreg", "accuracy"] == pytest.approx(np.mean(good.y_pred == good.y_true))


def test_empty_selection_is_a_clear_error(bench):
    with pytest.raises(EmptySelection, match="experiment 'no-such-experiment': not found"):
        compare(["no-such-experiment"], tracking_uri=bench.uri)
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", bench.uri, "-e", EXPERIMENT, "-m", "nobody"])
    assert result.exit_code == 1
    assert "no benchmark runs match" in result.output and "Traceback" not in result.output
    bad_tag = CliRunner().invoke(main, ["compare", "--tracking-uri", bench.uri, "--tag", "oops"])
    assert bad_tag.exit_code == 2 and "KEY=VALUE" in bad_tag.output


def test_unreachable_server_is_one_clear_line_not_minutes_of_retries():
    from aifactory.common.net import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    for command in ("compare", "report"):
        result = CliRunner().invoke(main, [command, "--tracking-uri", dead, "-e", EXPERIMENT])
        assert result.exit_code == 1, result.output
        assert f"MLflow tracking server {dead} is not reachable" in result.output
        assert "Traceback" not in result.output


def test_energy_front_appears_when_energy_was_measured(bench, tmp_path):
    client = bench.client
    experiment_id = client.create_experiment("issue5-energy")
    base = bench.results["logreg"]
    energies = {"frugal": 0.02, "hungry": 0.09}
    for name, joules in energies.items():
        result = dataclasses.replace(base, model=name, extra_metrics={
            s: {"energy_j_per_inference": joules} for s in base.latencies_s})
        cf.log_benchmark(client, experiment_id, result, hardware="cuda:NVIDIA H200", with_artifacts=False)
    with compare(["issue5-energy"], tracking_uri=bench.uri) as cmp:
        assert ("energy_j_per_inference", "accuracy") in cmp.fronts()
        front = cmp.pareto("energy_j_per_inference", "accuracy").set_index("model")
        cmp.plot(tmp_path / "energy.png", x="energy_j_per_inference")
    assert front.loc["frugal", "energy_j_per_inference"] == energies["frugal"]
    # same predictions, so the same accuracy: the frugal model dominates the hungry one
    assert front["pareto"].to_dict() == {"frugal": True, "hungry": False}
    assert (tmp_path / "energy.png").stat().st_size > 1000
