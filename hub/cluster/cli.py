"""`aif cluster up | down | status | adduser`: the Slurm mini-cluster for dev, demos and tests."""

import json
from pathlib import Path

import click

from .cluster import ClusterError, MiniCluster, default_cluster_dir

state_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=default_cluster_dir, show_default=True,
    help="Directory holding the cluster's configuration, keys, spool and logs (env AIF_CLUSTER_DIR).",
)


@click.group()
def cluster():
    """A real single-node Slurm (munge, slurmctld, slurmd) with simulated GPUs; needs root."""


@cluster.command()
@state_option
@click.option("--gpus", default=4, show_default=True, help="Simulated GPUs (character devices) on the node.")
def up(state_dir, gpus):
    """Start the mini-cluster (idempotent) and print the SLURM_CONF to export."""
    from .cluster import ClusterSpec

    mini = MiniCluster(state_dir, ClusterSpec(gpus=gpus))
    try:
        mini.up()
    except ClusterError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"mini-cluster up; use it with:\n  export SLURM_CONF={mini.slurm_conf}")


@cluster.command()
@state_option
def down(state_dir):
    """Cancel all jobs and stop the daemons."""
    MiniCluster(state_dir).down()
    click.echo("mini-cluster down")


@cluster.command()
@state_option
def status(state_dir):
    """Daemons, nodes and job count as JSON; exit status 1 when not up."""
    mini = MiniCluster(state_dir)
    click.echo(json.dumps(mini.status(), indent=2))
    if not mini.is_up():
        raise SystemExit(1)


@cluster.command()
@state_option
@click.argument("name")
@click.option("--group", "groups", multiple=True, help="Unix group to add the user to (repeatable).")
def adduser(state_dir, name, groups):
    """Create a real Unix user (with a home) whose sessions run as Slurm jobs."""
    try:
        MiniCluster(state_dir).add_user(name, groups)
    except ClusterError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"user {name} ready")
