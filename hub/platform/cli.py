"""`aif up`, `aif status`, `aif config show|generate`, `aif user ...`."""

import os
import pwd
import signal
import threading
from pathlib import Path

import click

from ...common.errors import cli_errors
from ..cli_options import state_dir_option
from .config import build_platform_config, make_platform_settings
from .launcher import Platform, PlatformError

config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="Platform config file (default: <state-dir>/aif_config.py when present).",
)


@click.command()
@state_dir_option()
@config_option
@click.option("--port", type=int, default=None, help="Public port (default 8000).")
@click.option("--spawner", type=click.Choice(["local", "slurm"]), default=None,
              help="Run users' servers as local processes or as Slurm jobs.")
@click.option("--slurm-conf", type=click.Path(dir_okay=False, exists=True), default=None,
              help="slurm.conf of the cluster to submit to (default: the mini-cluster's, with --spawner slurm).")
@click.option("--auth", type=click.Choice(["local", "oidc"]), default=None,
              help="How people log in: local accounts, or the site's OpenID Connect provider (docs/oidc.md).")
@click.option("--oidc-issuer", default=None, metavar="URL",
              help="The provider's issuer URL (its discovery document is <URL>/.well-known/openid-configuration).")
@click.option("--oidc-client-id", default=None, help="The client id the provider registered for this platform.")
@click.option("--oidc-client-secret-file", default=None, type=click.Path(dir_okay=False),
              help="File (mode 0600) holding the client secret the provider issued.")
@cli_errors
def up(state_dir, config_file, port, spawner, slurm_conf, auth, oidc_issuer, oidc_client_id,
       oidc_client_secret_file):
    """Start the platform: proxy, JupyterHub and the MLflow service. Ctrl-C stops it."""
    stop = _catch_stop_signals()
    reload = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: reload.set())  # `aif workshop` changed hub roles
    try:
        oidc = {"issuer_url": oidc_issuer, "client_id": oidc_client_id,
                "client_secret_file": oidc_client_secret_file and str(Path(oidc_client_secret_file).resolve())}
        if any(oidc.values()) and (auth or "oidc") != "oidc":
            raise click.UsageError("--oidc-* options need --auth oidc")
        platform = Platform(state_dir, port=port, spawner=spawner, config_file=config_file,
                            slurm_conf=slurm_conf or _mini_cluster_conf(spawner),
                            auth=auth or ("oidc" if any(oidc.values()) else None), oidc=oidc)
        platform.reload_on_signal = True
        click.echo(f"Starting AI Factory Lab in {platform.state} ...")
        platform.start()  # stops what it started if interrupted or failing
    except _Stopped as sig:
        raise click.ClickException(f"{sig} during start; everything started was stopped") from None
    federated = ""
    if platform.settings.auth == "oidc":
        federated = (f"  users sign in through the identity provider; redirect URI to register there:\n"
                     f"            {platform.url}/hub/oauth_callback\n")
    try:
        click.echo(
            f"\nAI Factory Lab is up: {platform.url}/\n"
            f"  MLflow:   {platform.mlflow_url}/\n{federated}"
            f"  log in as '{platform.settings.admin_user}', password in {platform.admin_password_file}\n"
            f"{_sessions_line(platform)}"
            "Ctrl-C stops it."
        )
        while not stop.wait(1):
            if reload.is_set():
                reload.clear()
                _restart_hub(platform)
    except _Stopped:
        pass
    finally:  # also on an unexpected error: never leave the platform running without its launcher
        stop.set()  # from here on, stop signals are ignored: nothing cuts the stop short
        click.echo("Stopping ...")
        platform.stop()


@click.command()
@state_dir_option()
@config_option
@cli_errors
def down(state_dir, config_file):
    """Stop the platform on a state directory, or what a previous run left running there."""
    platform = Platform(state_dir, config_file=config_file)
    stopped = platform.down()
    if stopped:
        click.echo(f"stopped {', '.join(map(str, stopped))} on {platform.state}")
    else:
        click.echo(f"nothing of the platform on {platform.state} was running")


def _sessions_line(platform):
    """Whose account users' sessions run as: said at start, never silently shared."""
    if platform.settings.spawner != "local":
        return ""
    if os.geteuid() == 0:
        return "  sessions: each user's own Unix account (made at first start, home 0700)\n"
    me = pwd.getpwuid(os.geteuid()).pw_name
    return (f"  single-user: the hub runs as '{me}', not root, so sessions are {me}'s own processes and only\n"
            f"  '{platform.settings.admin_user}' may start one (start it as root for several users)\n")


def _restart_hub(platform):
    click.echo("Restarting the hub (configuration changed) ...")
    try:
        platform.restart_hub(timeout=300)
    except PlatformError as err:
        click.echo(f"hub restart failed: {err}", err=True)


def _mini_cluster_conf(spawner):
    if spawner != "slurm":
        return None
    from ..cluster import MiniCluster, default_cluster_dir

    # `aif cluster up` keeps it outside the (root-only) platform state dir; see cluster/mini.py
    conf = MiniCluster(default_cluster_dir()).slurm_conf
    return conf if Path(conf).exists() else None


class _Stopped(BaseException):
    """Raised from a signal handler so that start-up unwinds and stops what it started."""


def _catch_stop_signals():
    """Ctrl-C, SIGTERM or SIGHUP: the first unwinds start-up or the main loop (which then stop
    everything); later ones are ignored, so a second Ctrl-C cannot cut the stop short."""
    stop = threading.Event()

    def handler(signum, _frame):
        if stop.is_set():
            return
        stop.set()
        raise _Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    return stop


@click.command()
@state_dir_option()
@config_option
@cli_errors
def status(state_dir, config_file):
    """Health of the hub, proxy and MLflow service; exit 1 naming what fails."""
    platform = Platform.attach(state_dir, config_file)
    results = platform.check_health()
    width = max(map(len, results))
    for name, state in results.items():
        click.echo(f"{name:<{width}}  {state}")
    failing = [name for name, state in results.items() if state != "ok"]
    if failing:
        raise click.ClickException(f"not healthy: {', '.join(failing)} (logs in {platform.state / 'logs'})")


@click.group()
def config():
    """Inspect the platform configuration, or write the documented example."""


@config.command("show")
@state_dir_option()
@config_option
@cli_errors
def config_show(state_dir, config_file):
    """Print the effective platform settings and where they come from."""
    cfg, path = build_platform_config(state_dir, config_file)
    platform, mlflow = make_platform_settings(cfg)
    click.echo(f"# config file: {path or '(none: defaults)'}")
    for obj in (platform, mlflow):
        for name in sorted(obj.traits(config=True)):
            click.echo(f"{type(obj).__name__}.{name} = {getattr(obj, name)!r}")


@config.command("generate")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
def config_generate(output):
    """Write the example config: every setting with its help and default, then site examples."""
    from .example import example_config

    text = example_config()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


@click.group()
def user():
    """Manage accounts: the local ones, and which provider identity a federated name belongs to."""


@user.command("add")
@click.argument("name")
@state_dir_option()
@click.option("--admin", is_flag=True, help="Make the user a hub admin.")
@click.option("--group", "groups", multiple=True, help="Hub group (repeatable), e.g. sme, evaluators.")
@cli_errors
def user_add(name, state_dir, admin, groups):
    """Create an account and print its generated password."""
    users = Platform(state_dir).users
    try:
        password = users.add(name, admin=admin, groups=groups)
    except OSError as err:  # a full or read-only state directory: say which file and why
        raise click.ClickException(f"could not write the users file {users.path}: {err.strerror}; "
                                   "nothing was changed") from None
    click.echo(password)


@user.command("list")
@state_dir_option()
@cli_errors
def user_list(state_dir):
    """List accounts with their groups."""
    for name, record in sorted(Platform(state_dir).users.read().items()):
        flags = " (admin)" if record.get("admin") else ""
        click.echo(f"{name}{flags}  groups: {', '.join(record.get('groups') or []) or '-'}")


@user.command("remove")
@click.argument("name")
@state_dir_option()
@cli_errors
def user_remove(name, state_dir):
    """Remove an account (its files and MLflow runs are kept)."""
    if not Platform(state_dir).users.remove(name):
        raise click.ClickException(f"no user {name!r}")


@user.command("unbind")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Confirm: NAME's files and runs go to the next identity that logs in as NAME.")
@state_dir_option()
@cli_errors
def user_unbind(name, yes, state_dir):
    """Release NAME from the provider identity it is bound to (federated login).

    For a person whose identity changed at the provider (a new subject): the next identity that
    logs in as NAME takes the name, with its home, sessions and MLflow runs. The old identity's
    browser sessions must log in again at their next auth refresh, and are then refused.
    """
    from ..oidc import IdentityBook
    from .hubconfig import IDENTITIES_FILE

    book = IdentityBook(Platform(state_dir).state / IDENTITIES_FILE)
    identity = book.owner(name)
    if identity is None:
        raise click.ClickException(f"no provider identity is bound to {name!r}")
    if not yes:
        raise click.ClickException(f"{name!r} is bound to {identity}; unbinding gives {name}'s home, sessions and "
                                   "runs to the next identity that logs in as it. Rerun with --yes to do so")
    book.unbind(name)
    click.echo(f"{name} released from {identity}; the next identity that logs in as {name} takes it")


__all__ = ["up", "down", "status", "config", "user"]
