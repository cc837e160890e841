"""`aif bench`: run benchmarks, submit them to Slurm, upload kept results to MLflow.

`python -m aifactory.benchmarks.cli run CONFIG` is what Slurm jobs run (launchers/slurm.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from aifactory.common.errors import cli_errors

from .errors import BenchmarkError
from .launchers.slurm import submit
from .config import MODEL_TASKS, PRECISIONS, PROFILES
from .layout import SCENARIOS, Metrics
from .scenarios.settings import SLO_PRESETS

SUMMARY_COLUMNS = ["backend", "scenario", "batch_size", "result_valid", Metrics.LATENCY_P50, Metrics.LATENCY_P90,
                   Metrics.LATENCY_P99, Metrics.TTFT_P50, Metrics.TTFT_P99, Metrics.TPOT_P50, Metrics.TPOT_P99,
                   Metrics.THROUGHPUT, Metrics.OUTPUT_TOKENS_PER_S, Metrics.GOODPUT, Metrics.SERVER_MAX_VALID_QPS,
                   Metrics.ACCURACY, Metrics.ci_low(Metrics.ACCURACY), Metrics.ci_high(Metrics.ACCURACY),
                   Metrics.EXACT_MATCH, Metrics.ROUGE_L, Metrics.PERPLEXITY, Metrics.AGREEMENT_TOP1,
                   Metrics.AGREEMENT_TOKENS, Metrics.AGREEMENT_MAX_ABS_DIFF, Metrics.CROSSCHECK_AGREEMENT,
                   Metrics.MAE, Metrics.R2, Metrics.ENERGY_PER_INFERENCE, Metrics.ENERGY_PER_OUTPUT_TOKEN]
#: `aif bench run` flag -> (config section or None for the top level, field) it sets
FLAG_FIELDS = {"model": ("model", "path"), "output": ("model", "output"), "data": ("data", "source"),
               "label": ("data", "label"),
               "profile": ("scenario", "profile"), "results_dir": (None, "results_dir"),
               "tracking_uri": ("mlflow", "tracking_uri"), "experiment": ("mlflow", "experiment"),
               "task": ("model", "task"), "max_new_tokens": ("generation", "max_new_tokens"),
               "max_batch_size": ("generation", "max_batch_size"), "slo_preset": ("scenario", "slo_preset"),
               "ttft_ms": ("scenario", "ttft_ms"), "tpot_ms": ("scenario", "tpot_ms")}


@click.group()
def bench():
    """Benchmark a model: accuracy with confidence intervals and MLPerf LoadGen latency scenarios."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def build_config(config_path, overrides):
    """A YAML config (optional) with the common-case flags laid over it."""
    from .config import BenchmarkConfig, parse_backend_shorthand, read_yaml

    raw = read_yaml(config_path) if config_path else {}
    for flag, (section, key) in FLAG_FIELDS.items():
        if overrides.get(flag):
            (raw.setdefault(section, {}) if section else raw)[key] = overrides[flag]
    if overrides["backend"]:
        raw["backends"] = list(overrides["backend"])
    if overrides.get("endpoint"):
        raw["backends"] = [{"kind": "endpoint", "url": overrides["endpoint"], "served_model": overrides.get("served_model"),
                            "api_key_file": overrides.get("api_key_file")}]
    elif overrides.get("served_model") or overrides.get("api_key_file"):
        raise BenchmarkError("--served-model and --api-key-file go with --endpoint URL")
    if overrides.get("concurrency"):
        raw.setdefault("generation", {})["concurrency"] = overrides["concurrency"]
    raw["backends"] = [parse_backend_shorthand(b, f"backends[{i}]") if isinstance(b, str) else b
                       for i, b in enumerate(raw.get("backends") or [{}])]
    for key in ("precision", "device", "threads"):
        if overrides[key] is not None:
            for backend in raw["backends"]:
                backend[key] = overrides[key]
    if overrides["scenario"]:
        raw.setdefault("scenario", {})["scenarios"] = list(overrides["scenario"])
    if overrides["batch_sizes"]:
        raw.setdefault("scenario", {})["batch_sizes"] = [int(b) for b in overrides["batch_sizes"].split(",")]
    if overrides["no_mlflow"]:
        raw.setdefault("mlflow", {})["enabled"] = False
    return BenchmarkConfig.from_dict(raw, source=str(config_path or "flags"))


@bench.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--model", help="Model file (.onnx/.pt/.pt2; scikit-learn/LightGBM/XGBoost .joblib/.skops), "
              "package.module:factory, a Hugging Face directory (or hf:/DIR), or models:/NAME/VERSION.")
@click.option("--output", help="The model output to score (default: chosen by rule; see docs/benchmarks.md).")
@click.option("--data", help="sklearn:digits | file.npz | file.csv | file.parquet | image folder; for text models "
              "prompts.jsonl | .csv | .parquet | .txt | a datasets.save_to_disk folder.")
@click.option("--label", help="Label column/key of the data (omit for latency-only runs).")
@click.option("--backend", multiple=True, help="torch:eager, torch:compile, onnxruntime[:PROVIDER], "
              "transformers[:eager|compile] (repeatable).")
@click.option("--task", type=click.Choice(MODEL_TASKS), help="Hugging Face models: the task (default: from config.json).")
@click.option("--max-new-tokens", type=int, help="Text generation: tokens to generate per prompt (default: each "
              "record's max_new_tokens, else 64).")
@click.option("--max-batch-size", type=int, help="Text generation: static batch of Server/Offline (default 8).")
@click.option("--slo-preset", type=click.Choice(sorted(SLO_PRESETS)), help="MLPerf's TTFT/TPOT Server bounds, e.g. "
              "llama3.1-8b = 2000 / 100 ms.")
@click.option("--ttft-ms", type=float, help="Server TTFT bound at p99 (overrides the preset's).")
@click.option("--tpot-ms", type=float, help="Server TPOT bound at p99 (overrides the preset's).")
@click.option("--endpoint", help="Benchmark an OpenAI-compatible endpoint (its base URL, .../v1, e.g. an `aif serve` "
              "endpoint through the hub) instead of running the model here; --model is then the served model's "
              "directory (its tokenizer).")
@click.option("--served-model", help="With --endpoint: the model name the server knows (default: its only one).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, exists=True), help="With --endpoint: a file holding "
              "the API key (for `aif serve` endpoints, a hub token); default $OPENAI_API_KEY.")
@click.option("--concurrency", type=int, help="Text generation: workers sending batches at once (an endpoint "
              "batches concurrent requests itself).")
@click.option("--scenario", multiple=True, type=click.Choice(SCENARIOS))
@click.option("--profile", type=click.Choice(PROFILES), help="quick: seconds; full: MLPerf minimum durations.")
@click.option("--precision", type=click.Choice(PRECISIONS))
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=int)
@click.option("--batch-sizes", help="Offline batch-size sweep, e.g. 1,8,32.")
@click.option("--results-dir", help="Where local results are kept (default aif-results).")
@click.option("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI).")
@click.option("--experiment", help="MLflow experiment name.")
@click.option("--no-mlflow", is_flag=True, help="Keep results locally only.")
@click.option("--progress/--no-progress", default=True)
@cli_errors
def run(config_path, progress, **overrides):
    """Run a benchmark from CONFIG.yaml and/or flags; results go to MLflow and a local directory."""
    from .runner import run_benchmark

    _print_summary(run_benchmark(build_config(config_path, overrides), progress=progress))


def _print_summary(result):
    import pandas as pd

    from .results.local import read_marker

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
@cli_errors
def upload(results, results_dir, tracking_uri, experiment, force):
    """Push locally kept results (MLflow was unreachable, or disabled) to MLflow."""
    from .results import pending_uploads
    from .results import upload as upload_one

    directories = [Path(r) for r in results] or pending_uploads(results_dir)
    if not directories:
        click.echo("nothing to upload")
        return
    failed = 0
    for directory in directories:
        try:
            run_id = upload_one(directory, tracking_uri, experiment, force=force)
            click.echo(f"{directory}: run {run_id}")
        except BenchmarkError as err:  # one directory's failure must not stop the others
            failed += 1
            click.echo(f"error: {err}", err=True)
    if failed:
        raise BenchmarkError(f"{failed} of {len(directories)} result(s) not uploaded")


@bench.command()
@click.argument("results", type=click.Path(exists=True))
@cli_errors
def show(results):
    """Print a results directory (or results.json) as a table."""
    from .result import BenchmarkResult

    _print_summary(BenchmarkResult.from_json(results))


@bench.command("reference-models")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--tabular/--no-tabular", default=True, show_default=True,
              help="The digits/breast-cancer/diabetes models (DIRECTORY, default: the shipped folder).")
@click.option("--language/--no-language", default=True, show_default=True,
              help="The reference LM, untrained LM, encoder and their data (DIRECTORY/language, default: your cache).")
@click.option("--onnx", is_flag=True, help="Also export the language models to ONNX beside them.")
@click.option("--force", is_flag=True, help="Rebuild the language models even where their stamps match.")
@cli_errors
def reference_models(directory, tabular, language, onnx, force):
    """Build the reference models from text and data every machine has; nothing is downloaded.

    The language models (a Llama-style LM, a BPE tokenizer, a BERT classifier) train in about
    half a minute on 2 CPU cores and are reused while their inputs and versions are unchanged.
    """
    if tabular:
        from .reference import MODELS_DIR
        from .reference.build import export_all

        for path in export_all(Path(directory) if directory else MODELS_DIR):
            click.echo(path)
    if language:
        from .reference.language import BuildParams, build_all, default_dir

        out = Path(directory) / "language" if directory else default_dir()
        paths = build_all(out, BuildParams(onnx=onnx), force=force, log=lambda m: click.echo(m, err=True))
        for name, path in paths.items():
            click.echo(f"{name}: {path}")


bench.add_command(submit)

if __name__ == "__main__":
    bench()
