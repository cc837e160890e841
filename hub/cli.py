"""The `aif` command line: one entry point for the whole platform.

Each area owns its command group in its own module; this file only maps names to them,
imported lazily so that `aif --help` stays fast and one area's import cost never lands on another.
"""

import importlib

import click

# command name -> "module:attribute" of a click command or group
SUBCOMMANDS = {
    "up": "aifactory.hub.platform.cli:up",
    "down": "aifactory.hub.platform.cli:down",
    "status": "aifactory.hub.platform.cli:status",
    "config": "aifactory.hub.platform.cli:config",
    "user": "aifactory.hub.platform.cli:user",
    "cluster": "aifactory.hub.cluster.cli:cluster",
    "bench": "aifactory.benchmarks.cli:bench",
    "compare": "aifactory.benchmarks.compare_cli:compare",
    "report": "aifactory.benchmarks.compare_cli:report",
    "images": "aifactory.images.cli:images",
    "workshop": "aifactory.hub.workshops.cli:workshop",
    "serve": "aifactory.hub.serving.cli:serve",
    "project": "aifactory.hub.projects.cli:project",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            return _unavailable(name, module_name)
        return getattr(module, attr)


def _unavailable(name, module_name):
    @click.command(name=name, help=f"(not available in this installation: {module_name})")
    def command():
        raise click.ClickException(f"'aif {name}' is not available: {module_name} is not installed")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aifactory-lab")
def main():
    """AI Factory Lab: GPU notebooks on Slurm, MLflow behind the hub login, model benchmarks."""


if __name__ == "__main__":
    main()
