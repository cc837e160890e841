"""Platform configuration: one traitlets config file, as JupyterHub's own.

The same file configures the launcher (`AIFPlatform`, `MLflowService`) and everything the hub
runs (`c.JupyterHub.*`, `c.Authenticator.*`, `c.AIFSlurmSpawner.*`): `aif up` reads the former,
the hub process loads the whole file after the platform's defaults, so a site's settings win.
"""

import os
from pathlib import Path

from traitlets import Bool, Integer, Unicode, default, validate
from traitlets.config import Config, Configurable, PyFileConfigLoader
from traitlets.config.loader import ConfigFileNotFound

from ...common.envvars import STATE_DIR
from ...common.errors import AIFError


class ConfigError(AIFError):
    """A configuration problem, worded for the person who can fix it."""


def default_state_dir():
    """$AIF_STATE_DIR, else the user's data folder (XDG) / aifactory-lab."""
    if STATE_DIR.get():
        return STATE_DIR.get()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "aifactory-lab")


class AIFPlatform(Configurable):
    """Where the platform keeps its state and how its parts are wired."""

    state_dir = Unicode(
        help="""Directory holding all platform state: hub database, MLflow store and artifacts,
        users' files (local spawner), logs, secrets. Survives restarts.""",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self):
        return default_state_dir()

    ip = Unicode("127.0.0.1", help="Address the public proxy listens on.").tag(config=True)

    port = Integer(8000, help="Public port of the proxy (the URL users open).").tag(config=True)

    @validate("port")
    def _check_port(self, proposal):
        if not 0 < proposal.value < 65536:
            raise ConfigError(f"AIFPlatform.port: {proposal.value} is not a TCP port (1-65535)")
        return proposal.value

    public_url = Unicode(
        help="""URL users and their sessions reach the platform at. Default: http://{ip}:{port}.
        At a site, the proxy's public https URL.""",
    ).tag(config=True)

    @default("public_url")
    def _default_public_url(self):
        return f"http://{self.ip}:{self.port}"

    spawner = Unicode(
        "local",
        help="""Where users' servers run: 'local' (processes on this machine, files under the
        state directory) or 'slurm' (jobs on the Slurm cluster named by SLURM_CONF).""",
    ).tag(config=True)

    @validate("spawner")
    def _check_spawner(self, proposal):
        if proposal.value not in ("local", "slurm"):
            raise ConfigError(f"AIFPlatform.spawner: {proposal.value!r} is not one of 'local', 'slurm'")
        return proposal.value

    auth = Unicode(
        "local",
        help="""How people log in: 'local' (accounts in <state_dir>/users.json, `aif user add`) or
        'oidc' (the site's OpenID Connect provider, configured by c.AIFOIDCAuthenticator.*;
        local accounts such as workshop seats keep working beside it). See docs/oidc.md.""",
    ).tag(config=True)

    @validate("auth")
    def _check_auth(self, proposal):
        if proposal.value not in ("local", "oidc"):
            raise ConfigError(f"AIFPlatform.auth: {proposal.value!r} is not one of 'local', 'oidc'")
        return proposal.value

    hub_db_url = Unicode(
        help="""SQLAlchemy URL of the hub database. Default: SQLite in the state directory.
        A site uses PostgreSQL: postgresql://hub:PASSWORD@dbhost/jupyterhub""",
    ).tag(config=True)

    @default("hub_db_url")
    def _default_hub_db_url(self):
        return f"sqlite:///{Path(self.state_dir, 'hub', 'jupyterhub.sqlite')}"

    admin_user = Unicode(
        "admin",
        help="""Name of the generated admin account (local authenticator). Its password is
        written once to <state_dir>/admin-password (mode 0600).""",
    ).tag(config=True)

    projects_root = Unicode(
        "/srv/aifactory/projects",
        help="""Directory holding companies' project spaces (`aif project create`): one setgid
        directory per project, mode 2770. Its filesystem must hold setgid directories and default
        ACLs; on a cluster, a shared filesystem the compute nodes mount at the same path.""",
    ).tag(config=True)

    keep_servers_on_stop = Bool(
        False,
        help="""Leave users' servers running when the platform stops (a site running Slurm
        sessions wants True, so that a hub restart never kills a session).""",
    ).tag(config=True)

    @property
    def state_path(self):
        return Path(self.state_dir).expanduser().resolve()


class MLflowService(Configurable):
    """The MLflow tracking server, run as a hub-managed service behind the hub's login."""

    backend_store_uri = Unicode(
        help="""MLflow backend store. Default: SQLite (WAL mode) in the state directory.
        A site uses PostgreSQL: postgresql://mlflow:PASSWORD@dbhost/mlflow""",
    ).tag(config=True)

    auth_db_uri = Unicode(
        help="""Database of MLflow's auth app (users and permissions). Default: SQLite next to
        the backend store; at a site, PostgreSQL like the backend store.""",
    ).tag(config=True)

    artifacts_destination = Unicode(
        help="""Where the server stores artifacts it serves (a path, or s3://... at a site).
        Default: <state_dir>/mlflow/artifacts.""",
    ).tag(config=True)

    workers = Integer(
        2, help="Number of MLflow server worker processes."
    ).tag(config=True)

    assistant = Bool(
        False,
        help="""Let users reach MLflow's AI assistant. Off by default: it sends a company's
        runs and traces to an external model provider and runs tools on the MLflow server's
        host, which takes every request through the platform's service as a local one.""",
    ).tag(config=True)

    share_group = Unicode(
        "evaluators",
        help="Group offered by default when an owner shares an experiment read-only.",
    ).tag(config=True)


class ServeService(Configurable):
    """The hub's serve service: `aif serve` endpoints behind hub tokens (docs/serving.md)."""

    idle_timeout = Integer(
        3600,
        help="""Seconds without a request through the hub after which an endpoint is stopped,
        as `aif serve stop` does (its MLflow run ended, its Slurm job cancelled), so that it
        releases its GPUs. Counted from when its engine is ready, and again from each start of
        the hub. 0: endpoints run until their walltime or `aif serve stop`.""",
    ).tag(config=True)

    @validate("idle_timeout")
    def _check_idle_timeout(self, proposal):
        if proposal.value < 0:
            raise ConfigError(f"ServeService.idle_timeout: {proposal.value} is negative (seconds; 0 turns it off)")
        return proposal.value


def load_config_file(path):
    """Load a traitlets config file, turning every failure into a one-line ConfigError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    loader = PyFileConfigLoader(path.name, str(path.parent))
    try:
        return loader.load_config()
    except ConfigFileNotFound:
        raise ConfigError(f"config file {path} not found") from None
    except SyntaxError as err:
        raise ConfigError(f"config file {path}, line {err.lineno}: {err.msg}") from None
    except Exception as err:  # the file is Python: anything can go wrong in it
        raise ConfigError(f"config file {path}: {type(err).__name__}: {err}") from None


def resolve_config_file(state_dir, config_file=None):
    """The explicit file, else <state_dir>/aif_config.py when it exists."""
    if config_file:
        return Path(config_file).expanduser()
    candidate = Path(state_dir).expanduser() / "aif_config.py"
    return candidate if candidate.is_file() else None


def build_platform_config(state_dir=None, config_file=None, overrides=None):
    """Effective config: file, then command-line overrides (AIFPlatform keys)."""
    config = Config()
    base_state = state_dir or default_state_dir()
    path = resolve_config_file(base_state, config_file)
    if path is not None:
        config.merge(load_config_file(path))
    if state_dir:
        config.AIFPlatform.state_dir = str(Path(state_dir).expanduser().resolve())
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(config.AIFPlatform, key, value)
    return config, path


def make_platform_settings(config):
    try:
        return AIFPlatform(config=config), MLflowService(config=config)
    except ConfigError:
        raise
    except Exception as err:  # traitlets TraitError for a wrongly typed value
        raise ConfigError(f"invalid configuration value: {err}") from None
