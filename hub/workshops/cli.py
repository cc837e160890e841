"""`aif workshop create|status|end|list`: workshops on a running platform (see manager.py)."""

import json

import click

from ...common.errors import cli_errors
from ...common.files import write_private
from ..cli_options import state_dir_option
from ..platform import Platform
from .manager import WorkshopManager
from .record import WorkshopError


def _manager(state_dir):
    platform = Platform.attach(state_dir)
    if platform.runtime.get("spawner") != "slurm":
        raise WorkshopError("workshops need the Slurm spawner: start the platform with `aif up --spawner slurm`")
    return WorkshopManager(platform)


@click.group()
def workshop():
    """Workshops: seats, a GPU reservation, a trainer, materials, a clean end."""


@workshop.command()
@click.argument("name")
@click.option("--seats", type=int, required=True, help="Number of participants (seat accounts).")
@click.option("--trainer", required=True, help="Hub user who runs the workshop.")
@click.option("--start", default="now", show_default=True, help="'now' or ISO 8601 (e.g. 2026-12-01T09:00).")
@click.option("--duration", default="3h", show_default=True, help="e.g. 3h, 90m, 1h30m, 2d.")
@click.option("--gpus-per-seat", type=int, default=1, show_default=True)
@click.option("--cpus-per-seat", type=int, default=1, show_default=True)
@click.option("--memory-gb-per-seat", type=int, default=4, show_default=True)
@click.option("--gpu-type", default="h200", show_default=True)
@click.option("--partition", default="gpu", show_default=True)
@click.option("--materials", default="", help="Git URL of the course repository (pulled into each home).")
@click.option("--branch", default="", help="Branch of the materials repository (default: its HEAD).")
@click.option("--announcement", default="", help="Banner shown on the hub to participants and trainer.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the seat logins and passwords to this file (mode 0600).")
@state_dir_option()
@cli_errors
def create(name, seats, trainer, start, duration, gpus_per_seat, cpus_per_seat, memory_gb_per_seat, gpu_type,
           partition, materials, branch, announcement, csv_path, state_dir):
    """Create workshop NAME; prints the seats as CSV (login, generated password, expiry, URL)."""
    manager = _manager(state_dir)
    ws, seats_csv = manager.create(
        name, seats, trainer, start=start, duration=duration, gpus_per_seat=gpus_per_seat,
        cpus_per_seat=cpus_per_seat, memory_gb_per_seat=memory_gb_per_seat, gpu_type=gpu_type,
        partition=partition, materials=materials, branch=branch, announcement=announcement)
    if csv_path:
        write_private(csv_path, seats_csv)
    click.echo(seats_csv, nl=False)
    click.echo(f"# workshop {ws.name}: {ws.seats} seats, reservation {ws.reservation} ({ws.nodes} node(s)), "
               f"{ws.start_time:%Y-%m-%d %H:%M}-{ws.end_time:%H:%M} UTC; trainer page: "
               f"{manager.platform.url}/services/workshops/{ws.name}", err=True)


@workshop.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@state_dir_option()
@cli_errors
def status(name, as_json, state_dir):
    """Who is running, idle, queued or failed in workshop NAME."""
    manager = _manager(state_dir)
    ws, rows = manager.status(name)
    if as_json:
        click.echo(json.dumps({"workshop": ws.name, "state": ws.state, "participants": rows}, indent=1))
        return
    click.echo(f"workshop {ws.name} ({ws.state}), {ws.start_time:%Y-%m-%d %H:%M}-{ws.end_time:%H:%M} UTC, "
               f"trainer {ws.trainer}")
    for row in rows:
        link = f"{manager.platform.url}{row['url']}" if row["url"] else ""
        click.echo(f"  {row['login']:<24} {row['state']:<14} {row['detail']:<40} {link}".rstrip())
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    click.echo("  " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


@workshop.command()
@click.argument("name")
@click.option("--archive-dir", type=click.Path(file_okay=False), default=None,
              help="Where to put one archive per participant (default: the workshop's folder).")
@state_dir_option()
@cli_errors
def end(name, archive_dir, state_dir):
    """Stop servers, archive participants' work, remove seats and the reservation. Safe to repeat."""
    manager = _manager(state_dir)
    ws, done = manager.end(name, archive_dir)
    if not done:
        click.echo(f"workshop {ws.name} already ended ({ws.ended_at}); nothing is left to remove")
    for line in done:
        click.echo(line)
    for login, path in sorted(ws.archives.items()):
        click.echo(f"  {login}: {path}")


@workshop.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@state_dir_option()
@cli_errors
def list_(as_json, state_dir):
    """All workshops of the platform, ended ones included."""
    manager = _manager(state_dir)
    workshops = manager.book.all()
    if as_json:
        click.echo(json.dumps([{"name": w.name, "state": w.state, "seats": w.seats, "start": w.start,
                                "end": w.end, "trainer": w.trainer, "reservation": w.reservation}
                               for w in workshops], indent=1))
        return
    if not workshops:
        click.echo("no workshops")
    for w in workshops:
        click.echo(f"{w.name:<20} {w.state:<8} {w.seats:>3} seats  {w.start_time:%Y-%m-%d %H:%M}-"
                   f"{w.end_time:%H:%M} UTC  trainer {w.trainer}")


__all__ = ["workshop"]
