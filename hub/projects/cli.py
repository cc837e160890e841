"""`aif project create NAME --members a,b`: a company's project space (see space.py)."""

import click

from ...common.errors import cli_errors
from ..cli_options import state_dir_option
from ..platform import Platform
from .space import ProjectMaker


@click.group()
def project():
    """Company project spaces: a shared directory and a hub group for a project's members."""


@project.command()
@click.argument("name")
@click.option("--members", required=True, help="Comma-separated hub users who share the space.")
@click.option("--projects-root", type=click.Path(file_okay=False), default=None,
              help="Directory that holds project spaces (default: AIFPlatform.projects_root).")
@state_dir_option()
@cli_errors
def create(name, members, projects_root, state_dir):
    """Create project NAME: Unix and hub group, <projects-root>/NAME (2770), ~/projects/NAME links."""
    platform = Platform.attach(state_dir)
    root = projects_root or platform.settings.projects_root
    path = ProjectMaker(platform, root).create(name, members.split(","))
    click.echo(f"project {name} ready: {path} (members: {members}); members see it at ~/projects/{name} "
               "from their next session start")
