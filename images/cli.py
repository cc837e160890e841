"""`aif images`: render, check and build notebook environments from their specs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import build as builder
from .render import render, write_rendered
from .spec import DEFAULT_SPEC, SpecError, load_spec, shipped_specs

SPEC_ARG = click.argument("spec", default=DEFAULT_SPEC)
DEFAULT_VENV_ROOT = "/var/tmp/aif-envs"


def _load(spec):
    try:
        return load_spec(spec)
    except SpecError as err:
        raise click.ClickException(str(err)) from err


@click.group()
def images():
    """Notebook environments: one spec, rendered as Docker / Apptainer, built as a venv or image.

    SPEC is a spec file or the name of a shipped spec (see `aif images list`).
    """


@images.command("list")
def list_specs():
    """The shipped specs, with their version and digest."""
    for name in shipped_specs():
        spec = load_spec(name)
        click.echo(f"{name}\t{spec.version}\t{spec.digest[:12]}\t{spec.display_name}")


@images.command("render")
@SPEC_ARG
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for Dockerfile, <name>.def, requirements.txt, aif-environment.json "
                   "(default: print the Dockerfile).")
def render_command(spec, output):
    """Write the Dockerfile and Apptainer definition of SPEC (byte-identical for the same spec)."""
    loaded = _load(spec)
    if output is None:
        click.echo(render(loaded)["Dockerfile"], nl=False)
        return
    for path in write_rendered(loaded, output):
        click.echo(str(path))


@images.command("check")
@SPEC_ARG
@click.option("--base", type=click.Path(exists=True, file_okay=False), default=None,
              help="Resolve on top of this venv (as `build --base` would).")
def check(spec, base):
    """Resolve SPEC's pins with pip (dry run): unknown packages and conflicts fail here."""
    loaded = _load(spec)
    try:
        to_install = builder.resolve(loaded, base)
    except builder.BuildError as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps({"spec": loaded.tag, "digest": loaded.digest, "to_install": to_install}, indent=2))


@images.command("build")
@SPEC_ARG
@click.option("--format", "fmt", type=click.Choice(["venv", "docker", "apptainer"]), default="venv",
              show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help=f"venv: folder holding the envs (default {DEFAULT_VENV_ROOT}); apptainer: folder for the .sif.")
@click.option("--base", type=click.Path(exists=True, file_okay=False), default=None,
              help="venv only: layer on this venv (same Python); pip installs only what it lacks.")
@click.option("--python", "python", default=builder.SYSTEM_PYTHON, show_default=True,
              help="venv only: the interpreter the venv is created with.")
@click.option("--aifactory-wheel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="docker/apptainer: the aifactory wheel to install (default: built from this source tree).")
def build_command(spec, fmt, output, base, python, aifactory_wheel):
    """Build SPEC as a venv, a Docker image or an Apptainer image."""
    loaded = _load(spec)
    log = lambda text: click.echo(text, err=True)  # noqa: E731 - progress on stderr, result on stdout
    try:
        if fmt == "venv":
            result = builder.build_venv(loaded, Path(output or DEFAULT_VENV_ROOT), base=base, python=python, log=log)
        else:
            result = builder.build_image(loaded, fmt, Path(output or "."), aifactory_wheel=aifactory_wheel, log=log)
    except builder.BuildError as err:
        raise click.ClickException(str(err)) from err
    click.echo(str(result))


if __name__ == "__main__":
    sys.exit(images())
