"""`aif cluster up | down | status | adduser`: the Slurm mini-cluster for dev, demos and tests."""

import json

import click

from ...common.envvars import CLUSTER_DIR
from ...common.errors import cli_errors
from ..cli_options import state_dir_option
from .mini import ClusterSpec, MiniCluster, default_cluster_dir

cluster_state_dir = state_dir_option(
    default=default_cluster_dir,
    help=f"Directory holding the cluster's configuration, keys, spool and logs (env {CLUSTER_DIR}).",
)


@click.group()
def cluster():
    """A real single-node Slurm (munge, slurmctld, slurmd) with simulated GPUs; needs root."""


@cluster.command()
@cluster_state_dir
@click.option("--gpus", default=4, show_default=True, help="Simulated GPUs (character devices) on the node.")
@cli_errors
def up(state_dir, gpus):
    """Start the mini-cluster (idempotent) and print the SLURM_CONF to export."""
    mini = MiniCluster(state_dir, ClusterSpec(gpus=gpus))
    mini.up()
    click.echo(f"mini-cluster up; use it with:\n  export SLURM_CONF={mini.slurm_conf}")


@cluster.command()
@cluster_state_dir
@cli_errors
def down(state_dir):
    """Cancel all jobs and stop the daemons."""
    MiniCluster(state_dir).down()
    click.echo("mini-cluster down")


@cluster.command()
@cluster_state_dir
def status(state_dir):
    """Daemons, nodes and job count as JSON; exit status 1 when not up."""
    mini = MiniCluster(state_dir)
    click.echo(json.dumps(mini.status(), indent=2))
    if not mini.is_up():
        raise SystemExit(1)


@cluster.command()
@cluster_state_dir
@click.argument("name")
@click.option("--group", "groups", multiple=True, help="Unix group to add the user to (repeatable).")
@cli_errors
def adduser(state_dir, name, groups):
    """Create a real Unix user (with a home) whose sessions run as Slurm jobs."""
    MiniCluster(state_dir).add_user(name, groups)
    click.echo(f"user {name} ready")
