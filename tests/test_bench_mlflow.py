"""The benchmark suite against a real MLflow server: layout, failures, unreachable server + upload."""

import json
from pathlib import Path

import numpy as np
import pytest
from bench_fixtures import tiny_config
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from aifactory.benchmarks import BenchmarkResult
from aifactory.benchmarks.config import BenchmarkConfig
from aifactory.benchmarks.models import ModelError
from aifactory.benchmarks.runner import run_benchmark
from aifactory.hub.cli import main

PARENT_TAGS = {"aif.kind", "aif.model", "aif.dataset", "aif.task", "aif.hardware", "aif.environment"}
CHILD_TAGS = PARENT_TAGS | {"aif.backend", "aif.precision", "aif.scenario"}
LATENCY_METRICS = {"latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms",
                   "latency_max_ms", "throughput_samples_per_s", "peak_host_mem_mb"}


def _children(client, parent):
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {(r.data.tags["aif.backend"], r.data.tags["aif.scenario"]): r for r in runs}


def _artifacts(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.fixture(scope="module")
def logged(mlflow_server, tmp_path_factory):
    """One benchmark of two backends (ONNX Runtime, and torch on the TorchScript original) in MLflow."""
    results = tmp_path_factory.mktemp("results")
    config = tiny_config(
        results,
        model={"path": str(Path(tiny_config(results)["model"]["path"]).with_suffix(".pt"))},
        backends=[{"kind": "torch", "threads": 1}, {"kind": "onnxruntime", "threads": 1}],
        scenario={"scenarios": ["SingleStream", "Server"], "server_search": False, "server_target_qps": 200.0},
        accuracy={"robustness": True, "robustness_levels": [0.1, 1.0]},
        mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": "bench-layout"})
    result = run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    client = MlflowClient(mlflow_server)
    return result, client, client.get_run(result.mlflow_run_id)


def test_parent_and_nested_runs_follow_the_layout(logged):
    result, client, parent = logged
    assert parent.info.status == "FINISHED"
    assert PARENT_TAGS <= set(parent.data.tags)
    assert parent.data.tags["aif.kind"] == "benchmark"
    assert parent.data.tags["aif.dataset"] == "sklearn:digits"
    assert parent.data.tags["aif.task"] == "classification"
    assert parent.data.tags["aif.hardware"].startswith("cpu:")
    assert parent.data.params["model.path"].endswith("digits_mlp.pt")
    children = _children(client, parent)
    expected = {(b, s) for b in ("torch:eager", "onnxruntime:CPUExecutionProvider")
                for s in ("Accuracy", "SingleStream", "Server")}
    assert set(children) == expected
    for (backend, scenario), run in children.items():
        assert run.info.status == "FINISHED"
        assert CHILD_TAGS <= set(run.data.tags), run.data.tags
        assert run.data.tags["aif.kind"] == "benchmark.child"
        assert run.data.tags["aif.precision"] == "fp32"
        assert run.data.params["backend.kind"] == backend.split(":")[0]
        if scenario != "Accuracy":
            assert LATENCY_METRICS <= set(run.data.metrics)
            assert run.data.tags["aif.loadgen.result_valid"] in ("VALID", "INVALID")
            assert run.data.tags["aif.loadgen.early_stopping"]


def test_metrics_and_artifacts_equal_the_local_result(logged):
    result, client, parent = logged
    children = _children(client, parent)
    for child in result.children:
        run = children[(child.backend, child.scenario)]
        for name, value in child.metrics.items():
            assert run.data.metrics[name] == pytest.approx(value), name
        artifacts = set(_artifacts(client, run.info.run_id))
        if child.scenario == "Accuracy":
            assert artifacts == {"predictions.npz", "robustness.json"}
        else:
            assert artifacts == {"latencies.npy", "latency_histogram.png", "loadgen/mlperf_log_summary.txt",
                                 "loadgen/mlperf_log_detail.txt"}
    # the reference backend's accuracy is copied to the parent, with its CI
    accuracy = children[("torch:eager", "Accuracy")].data.metrics
    for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "f1_macro_ci_high"):
        assert parent.data.metrics[name] == accuracy[name]
    # agreement of the ONNX export with its TorchScript original, on the same inputs
    agreement = children[("onnxruntime:CPUExecutionProvider", "Accuracy")].data.metrics
    assert agreement["agreement_top1"] == 1.0
    assert agreement["agreement_max_abs_diff"] < 1e-3
    assert _artifacts(client, parent.info.run_id) == ["results.json"]
    downloaded = client.download_artifacts(parent.info.run_id, "results.json")
    assert BenchmarkResult.from_json(downloaded).mlflow_run_id == parent.info.run_id


def test_robustness_and_reproducing_command(logged, tmp_path):
    result, client, parent = logged
    run = _children(client, parent)[("torch:eager", "Accuracy")]
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "robustness.json", str(tmp_path))).read_text())
    assert report["perturbation"] == "gaussian_noise" and report["relative_to"] == "feature_std"
    assert [level["level"] for level in report["levels"]] == [0.1, 1.0]
    for level in report["levels"]:
        assert level["accuracy_drop"] == pytest.approx(run.data.metrics["accuracy"] - level["accuracy"])
    assert report["levels"][1]["accuracy"] < report["levels"][0]["accuracy"]  # more noise, less accuracy
    assert run.data.metrics["robustness_max_accuracy_drop"] == max(l["accuracy_drop"] for l in report["levels"])
    command = parent.data.tags["aif.command"]
    assert command.startswith("aif bench run ") and command.endswith("config.yaml")
    reproduced = BenchmarkConfig.from_yaml(command.split(" ", 3)[3])
    assert reproduced.to_dict() == result.config


def test_predictions_artifact_holds_the_scored_predictions(logged, tmp_path):
    result, client, parent = logged
    run = _children(client, parent)[("torch:eager", "Accuracy")]
    path = client.download_artifacts(run.info.run_id, "predictions.npz", str(tmp_path))
    with np.load(path) as npz:
        assert set(npz.files) == {"y_true", "y_pred", "scores", "sample_index"}
        assert npz["scores"].dtype == np.float32
        assert run.data.metrics["accuracy"] == pytest.approx(np.mean(npz["y_true"] == npz["y_pred"]))


def test_failed_benchmark_marks_runs_failed_and_keeps_no_result(mlflow_server, tmp_path):
    # a NaN-producing model fails the benchmark after MLflow runs exist
    import torch

    nan_model = tmp_path / "nan_model.pt"
    module = torch.nn.Sequential(torch.nn.Linear(64, 10))
    with torch.no_grad():
        module[0].bias.fill_(float("nan"))
    torch.jit.save(torch.jit.script(module), str(nan_model))
    config = tiny_config(tmp_path / "results", model={"path": str(nan_model), "input_shape": [64]},
                         backends=[{"kind": "torch"}],
                         mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": "bench-failed"})
    with pytest.raises(ValueError, match="NaN"):
        run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("bench-failed")
    runs = client.search_runs([experiment.experiment_id])
    assert runs, "the parent run should exist"
    assert {r.info.status for r in runs} == {"FAILED"}
    assert "NaN" in runs[0].data.tags["aif.error"]
    assert not list((tmp_path / "results").glob("*/results.json"))
    assert not list((tmp_path / "results").iterdir()), "no partial result directory"


def test_unreachable_mlflow_keeps_results_and_upload_pushes_them(mlflow_server, tmp_path):
    from aifactory.common.net import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    results = tmp_path / "results"
    config = tiny_config(results, mlflow={"enabled": True, "tracking_uri": dead, "experiment": "bench-upload"})
    result = run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    marker = json.loads((Path(result.results_dir) / ".mlflow.json").read_text())
    assert marker["uploaded"] is False and "unreachable" in marker["reason"]

    cli = CliRunner().invoke(main, ["bench", "upload", "--results-dir", str(results), "--tracking-uri", mlflow_server])
    assert cli.exit_code == 0, cli.output
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("bench-upload")
    parents = client.search_runs([experiment.experiment_id], "tags.`aif.kind` = 'benchmark'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = _children(client, parents[0])
    assert set(children) == {("onnxruntime:CPUExecutionProvider", "Accuracy"),
                             ("onnxruntime:CPUExecutionProvider", "SingleStream")}
    single = children[("onnxruntime:CPUExecutionProvider", "SingleStream")]
    assert single.data.metrics["latency_p90_ms"] == pytest.approx(result.metric("latency_p90_ms", scenario="SingleStream"))
    assert "loadgen/mlperf_log_detail.txt" in _artifacts(client, single.info.run_id)
    # a second upload finds nothing pending
    again = CliRunner().invoke(main, ["bench", "upload", "--results-dir", str(results), "--tracking-uri", mlflow_server])
    assert again.exit_code == 0 and "nothing to upload" in again.output


def test_upload_to_a_dead_server_fails_clearly(tmp_path):
    from aifactory.common.net import free_port

    config = tiny_config(tmp_path / "results")
    result = run_benchmark(BenchmarkConfig.from_dict(config), progress=False)
    dead = f"http://127.0.0.1:{free_port()}"
    cli = CliRunner().invoke(main, ["bench", "upload", result.results_dir, "--tracking-uri", dead])
    assert cli.exit_code != 0
    assert "unreachable" in cli.output and result.results_dir in cli.output


def test_cli_run_logs_to_mlflow_from_env(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = Path(tiny_config(tmp_path)["model"]["path"])
    config = tmp_path / "bench.yaml"
    import yaml

    raw = tiny_config(tmp_path / "results", mlflow={"enabled": True, "experiment": "bench-cli"})
    del raw["model"]
    config.write_text(yaml.safe_dump(raw))
    cli = CliRunner().invoke(main, ["bench", "run", str(config), "--model", str(model), "--no-progress"])
    assert cli.exit_code == 0, cli.output
    assert "SingleStream" in cli.output and "mlflow run:" in cli.output
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("bench-cli")
    assert len(client.search_runs([experiment.experiment_id])) == 3  # parent, Accuracy, SingleStream


def test_cli_reports_bad_model_without_traceback(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((Path(tiny_config(tmp_path)["model"]["path"])).read_bytes()[:500])
    cli = CliRunner().invoke(main, ["bench", "run", "--model", str(broken), "--data", "sklearn:digits",
                                    "--no-mlflow", "--results-dir", str(tmp_path / "r")])
    assert cli.exit_code != 0
    assert "broken.onnx" in cli.output and "not a valid ONNX model" in cli.output
    assert isinstance(cli.exception, SystemExit)  # a ClickException, not a crash
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def test_model_error_type_is_exported():
    assert issubclass(ModelError, ValueError)


def test_mlflow_model_uris_load_and_run(mlflow_server, tmp_path, monkeypatch):
    """models:/NAME/VERSION (onnx flavor) and runs:/ID/PATH (pytorch flavor) from the real server."""
    import mlflow
    import onnx
    import torch

    from aifactory.benchmarks.config import ModelConfig
    from aifactory.benchmarks.models import load_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("bench-models")
    onnx_path = Path(tiny_config(tmp_path)["model"]["path"])
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 10))
    with mlflow.start_run() as run:
        mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="onnx", registered_model_name="bench-digits")
        mlflow.pytorch.log_model(module, name="torch", input_example=np.zeros((1, 64), np.float32))
    registered = load_model(ModelConfig(path="models:/bench-digits/1"))
    assert (registered.kind, registered.input_shape, registered.name) == ("onnx", (64,), "bench-digits")
    from_run = load_model(ModelConfig(path=f"runs:/{run.info.run_id}/torch"))
    assert (from_run.kind, from_run.input_shape) == ("torch_module", (64,))  # from the MLflow signature
    x = torch.rand(1, 64)  # MLflow's pt2 export fixes the batch size at the input example's
    with torch.no_grad():
        assert torch.allclose(from_run.module(x), module(x))
    # and a benchmark runs on the registered model end to end
    result = run_benchmark(BenchmarkConfig.from_dict(tiny_config(tmp_path / "r", model={"path": "models:/bench-digits/1"})),
                           progress=False)
    assert result.model == "bench-digits"
    assert result.child(scenario="Accuracy").metrics["accuracy"] > 0.9
