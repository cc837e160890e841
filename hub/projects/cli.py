"""`aif project create|add|remove|list`: company project spaces (see space.py)."""

import click

from ...common.errors import cli_errors
from ..cli_options import state_dir_option
from ..platform import Platform
from .space import ProjectMaker, Projects


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


@project.command()
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
@state_dir_option()
@cli_errors
def add(name, users, state_dir):
    """Add USERS to project NAME: its Unix and hub group, a ~/projects/NAME link."""
    path = Projects(Platform.attach(state_dir)).add(name, users)
    click.echo(f"added to project {name} ({path}): {', '.join(sorted(users))}; they see it from their next "
               "session start")


@project.command()
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
@click.option("--stop-sessions", is_flag=True, help="Also stop their running sessions, which keep the access "
                                                     "they started with.")
@state_dir_option()
@cli_errors
def remove(name, users, stop_sessions, state_dir):
    """Take USERS out of project NAME (the space and its files stay)."""
    still_open = Projects(Platform.attach(state_dir)).remove(name, users, stop_sessions=stop_sessions)
    click.echo(f"removed from project {name}: {', '.join(sorted(users))}"
               + ("; their sessions were stopped" if stop_sessions else ""))
    if still_open:
        click.echo(f"warning: running sessions keep access to {name} until they stop: {', '.join(still_open)} "
                   f"(stop them with `aif project remove {name} ... --stop-sessions`, or from the hub's admin page)",
                   err=True)


@project.command(name="list")
@state_dir_option()
@cli_errors
def list_projects(state_dir):
    """Every project: its space and members."""
    for name, path, members in Projects(Platform.attach(state_dir)).all():
        click.echo(f"{name}\t{path}\t{','.join(members)}")
