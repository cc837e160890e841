"""`aif bench`: run benchmarks, submit them to Slurm, upload kept results to MLflow."""

from __future__ import annotations

import itertools
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

SUMMARY_COLUMNS = ["backend", "scenario", "batch_size", "result_valid", "latency_p50_ms", "latency_p90_ms",
                   "latency_p99_ms", "throughput_samples_per_s", "server_max_valid_qps", "accuracy", "accuracy_ci_low",
                   "accuracy_ci_high", "agreement_top1", "agreement_max_abs_diff", "mae", "r2",
                   "energy_j_per_inference"]


def _user_errors():
    from .accuracy import AccuracyError
    from .backends import BackendError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelError
    from .reporters import MLflowUnavailable
    from .scenarios import ScenarioError

    return (ConfigError, DataError, ModelError, BackendError, AccuracyError, ScenarioError, MLflowUnavailable,
            FileNotFoundError)


@click.group()
def bench():
    """Benchmark a model: accuracy with confidence intervals and MLPerf LoadGen latency scenarios."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def build_config(config_path, overrides):
    """A YAML config (optional) with the common-case flags laid over it."""
    from .config import BenchmarkConfig, parse_backend_shorthand, read_yaml

    raw = read_yaml(config_path) if config_path else {}
    model, data = raw.setdefault("model", {}), raw.setdefault("data", {})
    scenario, mlflow = raw.setdefault("scenario", {}), raw.setdefault("mlflow", {})
    if overrides["model"]:
        model["path"] = overrides["model"]
    if overrides["data"]:
        data["source"] = overrides["data"]
    if overrides["label"]:
        data["label"] = overrides["label"]
    if overrides["backend"]:
        raw["backends"] = list(overrides["backend"])
    raw["backends"] = [parse_backend_shorthand(b, f"backends[{i}]") if isinstance(b, str) else b
                       for i, b in enumerate(raw.get("backends") or [{}])]
    for key in ("precision", "device", "threads"):
        if overrides[key] is not None:
            for backend in raw["backends"]:
                backend[key] = overrides[key]
    if overrides["scenario"]:
        scenario["scenarios"] = list(overrides["scenario"])
    if overrides["profile"]:
        scenario["profile"] = overrides["profile"]
    if overrides["batch_sizes"]:
        scenario["batch_sizes"] = [int(b) for b in overrides["batch_sizes"].split(",")]
    if overrides["results_dir"]:
        raw["results_dir"] = overrides["results_dir"]
    if overrides["tracking_uri"]:
        mlflow["tracking_uri"] = overrides["tracking_uri"]
    if overrides["experiment"]:
        mlflow["experiment"] = overrides["experiment"]
    if overrides["no_mlflow"]:
        mlflow["enabled"] = False
    return BenchmarkConfig.from_dict(raw, source=str(config_path or "flags"))


@bench.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--model", help="Model file (.onnx/.pt/.pt2), package.module:factory, or models:/NAME/VERSION.")
@click.option("--data", help="sklearn:digits | file.npz | file.csv | file.parquet | image folder.")
@click.option("--label", help="Label column/key of the data (omit for latency-only runs).")
@click.option("--backend", multiple=True, help="torch:eager, torch:compile, onnxruntime[:PROVIDER] (repeatable).")
@click.option("--scenario", multiple=True, type=click.Choice(["SingleStream", "MultiStream", "Server", "Offline"]))
@click.option("--profile", type=click.Choice(["quick", "full"]), help="quick: seconds; full: MLPerf minimum durations.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=int)
@click.option("--batch-sizes", help="Offline batch-size sweep, e.g. 1,8,32.")
@click.option("--results-dir", help="Where local results are kept (default aif-results).")
@click.option("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI).")
@click.option("--experiment", help="MLflow experiment name.")
@click.option("--no-mlflow", is_flag=True, help="Keep results locally only.")
@click.option("--progress/--no-progress", default=True)
def run(config_path, progress, **overrides):
    """Run a benchmark from CONFIG.yaml and/or flags; results go to MLflow and a local directory."""
    from .runner import run_benchmark

    try:
        config = build_config(config_path, overrides)
        result = run_benchmark(config, progress=progress)
    except _user_errors() as err:
        raise click.ClickException(str(err)) from None
    _print_summary(result)


def _print_summary(result):
    import pandas as pd

    from .reporters import read_marker

    frame = result.to_frame()
    columns = [c for c in SUMMARY_COLUMNS if c in frame and frame[c].notna().any()]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        click.echo(frame[columns].to_string(index=False))
    click.echo(f"results: {result.results_dir}")
    marker = read_marker(result.results_dir)
    if marker.get("uploaded"):
        click.echo(f"mlflow run: {marker['run_id']} at {marker['tracking_uri']}")
    else:
        click.echo(f"not in MLflow ({marker.get('reason')}); push later: aif bench upload {result.results_dir}")


@bench.command()
@click.argument("results", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--results-dir", default="aif-results", show_default=True,
              help="With no RESULTS given: upload every result under here not yet in MLflow.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the run's config, then $MLFLOW_TRACKING_URI).")
@click.option("--experiment", help="MLflow experiment (default: the run's config).")
@click.option("--force", is_flag=True, help="Upload again even if already uploaded.")
def upload(results, results_dir, tracking_uri, experiment, force):
    """Push locally kept results (MLflow was unreachable, or disabled) to MLflow."""
    from .reporters import MLflowUnavailable, pending_uploads
    from .reporters import upload as upload_one

    directories = [Path(r) for r in results] or pending_uploads(results_dir)
    if not directories:
        click.echo("nothing to upload")
        return
    failed = 0
    for directory in directories:
        try:
            run_id = upload_one(directory, tracking_uri, experiment, force=force)
            click.echo(f"{directory}: run {run_id}")
        except (MLflowUnavailable, FileNotFoundError, ValueError) as err:
            failed += 1
            click.echo(f"error: {err}", err=True)
    if failed:
        raise click.ClickException(f"{failed} of {len(directories)} result(s) not uploaded")


@bench.command()
@click.argument("results", type=click.Path(exists=True))
def show(results):
    """Print a results directory (or results.json) as a table."""
    from .result import BenchmarkResult

    _print_summary(BenchmarkResult.from_json(results))


@bench.command("reference-models")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def reference_models(directory):
    """Train the reference models on bundled data and export them (ONNX, TorchScript, torch.export)."""
    from .reference import MODELS_DIR, export_all

    for path in export_all(Path(directory) if directory else MODELS_DIR):
        click.echo(path)


# --- Slurm -------------------------------------------------------------------------------------

def sweep_configs(base: dict, sweeps):
    """Cartesian product of `key.path=v1,v2` sweeps over a config dict; one config per array task."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not values:
            raise click.BadParameter(f"{sweep!r}: expected KEY=V1,V2 (e.g. backends.0.precision=fp32,bf16)",
                                     param_hint="--sweep")
        axes.append([(key, yaml.safe_load(v)) for v in values.split(",")])
    configs = []
    for combination in itertools.product(*axes) if axes else [()]:
        config = yaml.safe_load(yaml.safe_dump(base))
        for key, value in combination:
            _set_path(config, key, value)
        configs.append(config)
    return configs


def _set_path(config, dotted, value):
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def job_script(job_dir, count, name, partition, gpus, time_limit, cpus, mem, extra):
    lines = ["#!/bin/bash", f"#SBATCH --job-name=aif-bench-{name}", f"#SBATCH --output={job_dir}/slurm-%A_%a.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    if count > 1:
        lines.append(f"#SBATCH --array=0-{count - 1}")
    lines += [f"#SBATCH {arg}" for arg in extra]
    command = shlex.join([sys.executable, "-m", "aifactory.benchmarks.cli", "run"])
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(job_dir))}",
        'CONFIG="config-$(printf %03d "${SLURM_ARRAY_TASK_ID:-0}").yaml"',
        f'exec {command} "$CONFIG" --no-progress',
    ]
    return "\n".join(lines) + "\n"


@bench.command()
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--partition", default="gpu", show_default=True)
@click.option("--gpus", default=1, show_default=True, type=int, help="GPUs per job (0 for a CPU job).")
@click.option("--time", "time_limit", default="01:00:00", show_default=True)
@click.option("--cpus", type=int, help="CPUs per task.")
@click.option("--mem", help="Memory per node, e.g. 16G.")
@click.option("--sweep", multiple=True, help="KEY=V1,V2 over the config (repeatable): a job array, one task each.")
@click.option("--sbatch-arg", "extra", multiple=True, help="Extra sbatch option, e.g. --reservation=ws1.")
@click.option("--dry-run", is_flag=True, help="Write the job files and print the script; submit nothing.")
def submit(config_path, partition, gpus, time_limit, cpus, mem, sweep, extra, dry_run):
    """Run CONFIG.yaml as a Slurm batch job on a GPU partition (a job array for sweeps)."""
    from .config import BenchmarkConfig, ConfigError

    try:
        config = BenchmarkConfig.from_yaml(config_path)
        base = config.to_dict()
        configs = sweep_configs(base, sweep)
        for i, variant in enumerate(configs):
            BenchmarkConfig.from_dict(variant, source=f"--sweep variant {i}")
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    # Results and the job's own files go where compute nodes can write: the results directory.
    results_root = Path(base["results_dir"]).resolve()
    job_dir = results_root / "jobs" / time.strftime("%Y%m%d-%H%M%S")
    job_dir.mkdir(parents=True, exist_ok=True)
    for i, variant in enumerate(configs):
        variant["results_dir"] = str(results_root)
        (job_dir / f"config-{i:03d}.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
    name = config.name or Path(config.model.path).stem or "model"
    script = job_script(job_dir, len(configs), name, partition, gpus, time_limit, cpus, mem, extra)
    (job_dir / "job.sh").write_text(script)
    if dry_run:
        click.echo(script)
        click.echo(f"job files: {job_dir}")
        return
    job_id = submit_script(job_dir / "job.sh")
    (job_dir / "job_id").write_text(job_id + "\n")
    click.echo(f"submitted job {job_id}" + (f" (array of {len(configs)})" if len(configs) > 1 else "")
               + f"; logs in {job_dir}")


def submit_script(script_path):
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise click.ClickException("sbatch not found: `aif bench submit` needs the Slurm client (and SLURM_CONF)") from None
    if done.returncode != 0:
        raise click.ClickException(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


if __name__ == "__main__":
    bench()
