"""`aif bench` command line without Slurm: submit --dry-run, show, flag errors."""

import json

import yaml
from click.testing import CliRunner

from aifactory.benchmarks import BenchmarkConfig, run
from aifactory.benchmarks.testing import tiny_config
from aifactory.hub.cli import main


def test_submit_dry_run_writes_one_config_per_sweep_combination(tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "results")))
    cli = CliRunner().invoke(main, ["bench", "submit", str(config), "--partition", "gpu", "--gpus", "2",
                                    "--time", "00:20:00", "--sweep", "backends.0.precision=fp32,fp16",
                                    "--sweep", "scenario.offline_batch_size=8,64,256", "--dry-run"])
    assert cli.exit_code == 0, cli.output
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gres=gpu:2", "#SBATCH --time=00:20:00",
                 "#SBATCH --array=0-5", "-m aifactory.benchmarks.cli run \"$CONFIG\""):
        assert line in cli.output
    job_dir = next((tmp_path / "results" / "jobs").iterdir())
    variants = [BenchmarkConfig.from_yaml(p) for p in sorted(job_dir.glob("config-*.yaml"))]
    assert len(variants) == 6
    assert {(v.backends[0].precision, v.scenario.offline_batch_size) for v in variants} == {
        (p, b) for p in ("fp32", "fp16") for b in (8, 64, 256)}
    assert not (job_dir / "job_id").exists()  # nothing submitted


def test_submit_refuses_a_bad_sweep_before_sbatch(tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "results")))
    cli = CliRunner().invoke(main, ["bench", "submit", str(config), "--sweep", "backends.0.precision=fp8"])
    assert cli.exit_code != 0 and "backends[0].precision" in cli.output
    cli = CliRunner().invoke(main, ["bench", "submit", str(config), "--sweep", "scenario.profile"])
    assert cli.exit_code != 0 and "expected KEY=V1,V2" in cli.output
    assert not (tmp_path / "results" / "jobs").exists() or not any((tmp_path / "results" / "jobs").iterdir())


def test_show_prints_a_result_and_run_flags_override_the_file(tmp_path):
    result = run(tiny_config(tmp_path / "results"), progress=False)
    cli = CliRunner().invoke(main, ["bench", "show", result.results_dir])
    assert cli.exit_code == 0, cli.output
    assert "SingleStream" in cli.output and "latency_p90_ms" in cli.output
    data = json.loads((tmp_path / "results" / result.results_dir.split("/")[-1] / "results.json").read_text())
    assert data["children"][1]["metrics"]["latency_p90_ms"] == result.metric("latency_p90_ms", scenario="SingleStream")
    bad = CliRunner().invoke(main, ["bench", "run", "--model", "m.onnx", "--backend", "tensorflow", "--no-mlflow"])
    assert bad.exit_code != 0 and "unknown backend 'tensorflow'" in bad.output


def test_onnxruntime_refuses_a_precision_the_model_does_not_have(tmp_path):
    config = tiny_config(tmp_path, backends=[{"kind": "onnxruntime", "precision": "fp16"}])
    cli = CliRunner().invoke(main, ["bench", "run", "--no-mlflow", "--no-progress", "--results-dir", str(tmp_path),
                                    "--model", config["model"]["path"], "--backend", "onnxruntime",
                                    "--precision", "fp16"])
    assert cli.exit_code != 0
    assert "backends[0].precision: ONNX Runtime runs the model in its own precision (fp32)" in cli.output
