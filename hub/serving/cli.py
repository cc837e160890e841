"""`aif serve`: models behind OpenAI-compatible endpoints on Slurm nodes, reached through the hub."""

from __future__ import annotations

import click

from ...common.errors import cli_errors
from . import manager
from .overview import hub_path


@click.group()
def serve():
    """Serve a model behind an OpenAI-compatible endpoint (vLLM in a Slurm job), behind the hub login."""


@serve.command()
@click.argument("model", type=click.Path(file_okay=False, path_type=str))
@click.option("--name", help="Endpoint name (default: from the model directory); part of its URL.")
@click.option("--engine", default="vllm", show_default=True, help="Inference engine.")
@click.option("--profile", help="Resource profile (as for notebook sessions; default: the first you may use).")
@click.option("--gpus", type=int, help="GPUs (within the profile and your group's limits).")
@click.option("--hours", type=int, help="Walltime in hours (within the limits).")
@click.option("--cpus", type=int, help="CPUs per task (within the profile).")
@click.option("--memory-gb", type=int, help="Memory in GB (within the profile).")
@click.option("--max-model-len", type=int, help="Longest context the engine allows (default: the model's).")
@click.option("--wait/--no-wait", default=False, help="Wait until the endpoint is ready (stopped on timeout).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits.")
@cli_errors
def start(model, name, engine, profile, gpus, hours, cpus, memory_gb, max_model_len, wait, timeout):
    """Start serving MODEL (a Hugging Face text-generation model directory) in a Slurm job."""
    endpoint = manager.start(model, name=name, engine=engine, profile=profile, gpus=gpus, hours=hours, cpus=cpus,
                             memory_gb=memory_gb, max_model_len=max_model_len)
    click.echo(f"endpoint {endpoint.name}: Slurm job {endpoint.job_id} submitted; URL (through the hub): "
               f"{hub_path(endpoint)}; model name {endpoint.served_model_name!r}")
    if wait:
        manager.wait_ready(endpoint.name, timeout, on_change=lambda s: click.echo(s.line()))


@serve.command(name="list")
@cli_errors
def list_endpoints():
    """Your endpoints and their state."""
    from .endpoints import EndpointStore

    endpoints = EndpointStore(manager.current_user()).all()
    if not endpoints:
        click.echo("no endpoints (start one with `aif serve start MODEL`)")
    for endpoint in endpoints:
        state = manager.describe(endpoint)
        shared = f", shared with {', '.join(endpoint.groups)}" if endpoint.groups else ""
        phase = f"{state.phase} {endpoint.stop_reason}" if endpoint.stopped and endpoint.stop_reason else state.phase
        click.echo(f"{endpoint.name}\t{phase}\t{hub_path(endpoint)}\t{endpoint.model}{shared}")


@serve.command()
@click.argument("name")
@cli_errors
def status(name):
    """State of endpoint NAME: queued (position, reason), loading, ready, ended (with the log tail)."""
    click.echo(manager.status(name).line())


@serve.command()
@click.argument("name")
@click.option("-n", "--lines", default=50, show_default=True)
@cli_errors
def logs(name, lines):
    """The last lines of the engine's log."""
    from .endpoints import EndpointStore

    click.echo(manager.log_tail(EndpointStore(manager.current_user()).get(name), lines))


@serve.command()
@click.argument("name")
@click.option("--remove", is_flag=True, help="Also delete the endpoint's record (its name can be reused).")
@cli_errors
def stop(name, remove):
    """Stop endpoint NAME: cancel its job; nothing keeps running."""
    endpoint = manager.stop(name, remove=remove)
    click.echo(f"endpoint {name} stopped (Slurm job {endpoint.job_id} cancelled)" + ("; record removed" if remove else ""))


@serve.command()
@click.argument("name")
@click.option("--group", required=True, help="Hub group whose members may call the endpoint.")
@click.option("--remove", is_flag=True, help="Stop sharing with the group.")
@cli_errors
def share(name, group, remove):
    """Let members of a hub group call endpoint NAME (with their own hub tokens)."""
    endpoint = manager.share(name, group, remove=remove)
    click.echo(f"endpoint {name} is shared with: {', '.join(endpoint.groups) or 'nobody'}")
