"""`aif bench submit`: a benchmark config as a Slurm batch job, a sweep as a job array.

Each array task runs `python -m aifactory.benchmarks.cli run config-<task>.yaml` (that module path
is baked into job scripts already submitted: keep it). Job files and logs go under
`<results_dir>/jobs/<stamp>/`, where compute nodes can write.
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from aifactory.common.errors import cli_errors

from ..errors import LaunchError

#: what a job runs; `python -m` of this module path must keep working for submitted jobs
JOB_ENTRY = "aifactory.benchmarks.cli"


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
    options = {"--job-name": f"aif-bench-{name}", "--output": f"{job_dir}/slurm-%A_%a.out",
               "--partition": partition, "--gres": gpus and f"gpu:{gpus}", "--time": time_limit,
               "--cpus-per-task": cpus, "--mem": mem, "--array": count > 1 and f"0-{count - 1}"}
    lines = ["#!/bin/bash", *(f"#SBATCH {key}={value}" for key, value in options.items() if value)]
    lines += [f"#SBATCH {arg}" for arg in extra]
    command = shlex.join([sys.executable, "-m", JOB_ENTRY, "run"])
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(job_dir))}",
        'CONFIG="config-$(printf %03d "${SLURM_ARRAY_TASK_ID:-0}").yaml"',
        f'exec {command} "$CONFIG" --no-progress',
    ]
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--partition", default="gpu", show_default=True)
@click.option("--gpus", default=1, show_default=True, type=int, help="GPUs per job (0 for a CPU job).")
@click.option("--time", "time_limit", default="01:00:00", show_default=True)
@click.option("--cpus", type=int, help="CPUs per task.")
@click.option("--mem", help="Memory per node, e.g. 16G.")
@click.option("--sweep", multiple=True, help="KEY=V1,V2 over the config (repeatable): a job array, one task each.")
@click.option("--sbatch-arg", "extra", multiple=True, help="Extra sbatch option, e.g. --reservation=ws1.")
@click.option("--dry-run", is_flag=True, help="Write the job files and print the script; submit nothing.")
@cli_errors
def submit(config_path, partition, gpus, time_limit, cpus, mem, sweep, extra, dry_run):
    """Run CONFIG.yaml as a Slurm batch job on a GPU partition (a job array for sweeps)."""
    from ..config import BenchmarkConfig

    config = BenchmarkConfig.from_yaml(config_path)
    base = config.to_dict()
    configs = sweep_configs(base, sweep)
    for i, variant in enumerate(configs):
        BenchmarkConfig.from_dict(variant, source=f"--sweep variant {i}")
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
        raise LaunchError("sbatch not found: `aif bench submit` needs the Slurm client (and SLURM_CONF)") from None
    if done.returncode != 0:
        raise LaunchError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]
