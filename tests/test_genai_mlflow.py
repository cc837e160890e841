"""Two language models benchmarked into the platform's MLflow (hub auth), then `aif compare` and
`aif report --slo "ttft p99 <= 2000 ms" --slo "tpot p99 <= 100 ms"` on them; a failing text
benchmark leaves no run RUNNING."""

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from aifactory.hub.testing.platform import unique_user

from aifactory.benchmarks import run
from aifactory.benchmarks.errors import ConfigError
from aifactory.benchmarks.testing import tiny_lm_config
from aifactory.hub.cli import main

SCENARIOS = {"scenarios": ["SingleStream", "Server", "Offline"], "server_search": False, "server_target_qps": 4.0,
             "ttft_ms": 2000.0, "tpot_ms": 100.0}


@pytest.fixture(scope="module")
def two_lms(platform, reference_lm, tmp_path_factory):
    user = unique_user("genai")
    platform.add_user(user)
    token = platform.user_token(user)
    experiment = f"genai-{user}"
    env = {"MLFLOW_TRACKING_URI": platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": token}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        results = {}
        for name in ("lm", "lm_untrained"):
            config = tiny_lm_config(tmp_path_factory.mktemp(name), model=reference_lm[name],
                                    scenario=SCENARIOS, accuracy={"perplexity_text": str(reference_lm["heldout"])},
                                    mlflow={"enabled": True, "experiment": experiment})
            results[name] = run(config, progress=False)
    return {"results": results, "experiment": experiment, "env": env, "uri": platform.mlflow_url}


def test_token_metrics_and_artifacts_reach_mlflow_through_the_hub(two_lms, monkeypatch):
    for key, value in two_lms["env"].items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(two_lms["uri"])
    result = two_lms["results"]["lm"]
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["aif.task"] == "text-generation"
    assert parent.data.metrics["exact_match"] == result.metrics["exact_match"]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_scenario = {c.data.tags["aif.scenario"]: c for c in children}
    assert set(by_scenario) == {"Accuracy", "SingleStream", "Server", "Offline"}
    server = by_scenario["Server"]
    local = result.child(scenario="Server").metrics
    for metric in ("ttft_p99_ms", "tpot_p99_ms", "output_tokens_per_s", "goodput_requests_per_s"):
        assert server.data.metrics[metric] == pytest.approx(local[metric])
    assert server.data.tags["aif.loadgen.tpot_constraint"].startswith(("met", "not met"))
    assert server.data.params["generation.max_batch_size"] == "4"
    artifacts = {a.path for a in client.list_artifacts(server.info.run_id)}
    assert "token_latencies.npz" in artifacts and "loadgen" in artifacts
    assert "generations.jsonl" in {a.path for a in client.list_artifacts(by_scenario["Accuracy"].info.run_id)}


def test_compare_ranks_the_two_lms_and_tests_exact_match_and_token_latencies(two_lms, monkeypatch, tmp_path):
    for key, value in two_lms["env"].items():
        monkeypatch.setenv(key, value)
    csv = tmp_path / "board.csv"
    out = CliRunner().invoke(main, ["compare", "-e", two_lms["experiment"], "-f", "csv", "-o", str(csv),
                                    "--significance", "--baseline", "lm", "--pareto", str(tmp_path / "front.png")])
    assert out.exit_code == 0, out.output
    import pandas as pd

    board = pd.read_csv(csv)
    assert list(board["model"]) == ["lm", "lm-untrained"]  # sorted by exact match, best first
    assert {"Server.ttft_p99_ms", "Server.tpot_p99_ms", "SingleStream.tpot_p99_ms", "perplexity"} <= set(board.columns)
    assert board.loc[0, "perplexity"] < board.loc[1, "perplexity"]  # trained ~300 vs untrained ~2,000
    assert "exact match (McNemar)" in out.output and "TPOT p99 SingleStream" in out.output
    assert (tmp_path / "front.png").stat().st_size > 1000


def test_report_judges_ttft_and_tpot_targets(two_lms, monkeypatch, tmp_path):
    from aifactory.benchmarks.compare import compare
    from aifactory.benchmarks.compare.slo import evaluate_slo, parse_slo

    for key, value in two_lms["env"].items():
        monkeypatch.setenv(key, value)
    targets = ["ttft p99 <= 2000 ms", "tpot p99 <= 100 ms", "exact_match >= 10%"]
    out = CliRunner().invoke(main, ["report", "-e", two_lms["experiment"], *[a for t in targets for a in ("--slo", t)],
                                    "-o", str(tmp_path), "--no-log"])
    assert out.exit_code == 0, out.output
    trained = (tmp_path / "readiness-lm.html").read_text()
    assert "ttft p99 &lt;= 2000 ms" in trained and "tpot p99 &lt;= 100 ms" in trained and "TTFT p99 ms" in trained
    untrained = (tmp_path / "readiness-lm-untrained.html").read_text()
    assert 'badge not-ready">not ready' in untrained  # its exact match is 0
    with compare(experiments=[two_lms["experiment"]], tracking_uri=two_lms["uri"]) as cmp:
        entry = cmp.entry("lm")
        ttft = evaluate_slo(parse_slo(targets[0]), entry)
        assert {r.scenario for r in ttft} == {"SingleStream", "Server"}  # Offline reports no TTFT
        local = two_lms["results"]["lm"]
        for result in ttft:  # LoadGen's p99, judged; a quick run LoadGen calls INVALID stays "unknown"
            assert result.measured == pytest.approx(local.child(scenario=result.scenario).metrics["ttft_p99_ms"])
            assert result.status in ("pass", "unknown") and result.measured <= 2000
        assert [r.status for r in evaluate_slo(parse_slo(targets[2]), cmp.entry("lm-untrained"))] == ["fail"]


def test_a_failing_text_benchmark_leaves_no_run_running(reference_lm, mlflow_server, tmp_path):
    config = tiny_lm_config(tmp_path, accuracy={"lm_eval": {"tasks": ["not_local"]}},
                            mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": "genai-failing"})
    with pytest.raises(ConfigError, match=r"accuracy\.lm_eval\.tasks: no local task 'not_local'"):
        run(config, progress=False)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("genai-failing")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    assert "not_local" in runs[0].data.tags["aif.error"]
    assert not list(tmp_path.glob("*-lm*"))  # and nothing half-written locally
