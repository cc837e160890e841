"""The platform's JupyterHub settings, applied by jupyterhub_config.py inside the hub process.

`aif up` (launcher.py) writes <state_dir>/runtime.json with the ports and paths of this start
and passes its path in AIF_RUNTIME; everything the hub needs is derived from it here.
"""

import json
import os
import sys
from pathlib import Path

from ...common import envvars
from ...common.files import PRIVATE_UMASK
from .config import ConfigError

MLFLOW_SERVICE = "mlflow"
WORKSHOP_SERVICE = "workshops"
ADMIN_SERVICE = "aif-admin"

ADMIN_SERVICE_SCOPES = [
    "admin:users", "admin:servers", "admin:groups", "tokens", "list:users", "read:users",
    "list:groups", "read:groups", "read:hub", "read:services", "list:services", "access:servers",
]


def runtime():
    path = envvars.RUNTIME.get()
    if not path:
        raise ConfigError(f"{envvars.RUNTIME} is not set: the hub is started by `aif up`, which sets it")
    return json.loads(Path(path).read_text())


def site_config_file():
    return envvars.CONFIG_FILE.get()


def configure_hub(c):
    # the hub's database, cookie secret and its services' stores are the platform's alone, also
    # when a site starts the hub without `aif up`
    os.umask(PRIVATE_UMASK)
    rt = runtime()
    state = Path(rt["state_dir"])
    _network(c, rt)
    _storage(c, rt, state)
    _auth(c, rt, state)
    _spawner(c, rt)
    _services_and_roles(c, rt, state)
    if rt["spawner"] == "slurm":
        # idle sessions must release their GPUs (issue 3); least-privilege service, see culler.py
        from ..culler import add_idle_culler

        add_idle_culler(c)
        _workshops(c, rt, state)


def _network(c, rt):
    c.JupyterHub.bind_url = rt["public_url"]
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = rt["hub_port"]
    # the proxy is started by `aif up`, outside the hub, so its routes (and users' sessions)
    # survive a hub restart
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{rt['proxy_api_port']}"
    # servers are stopped by `aif up` itself when it stops (unless told to keep them), never by
    # a hub restart
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False


def _storage(c, rt, state):
    c.JupyterHub.db_url = rt["hub_db_url"]
    c.JupyterHub.cookie_secret_file = str(state / "secrets" / "cookie_secret")
    c.JupyterHub.pid_file = str(state / "hub" / "jupyterhub.pid")


def _auth(c, rt, state):
    c.JupyterHub.authenticator_class = "aifactory.hub.auth.AIFLocalAuthenticator"
    c.AIFLocalAuthenticator.users_file = str(state / "users.json")
    c.Authenticator.admin_users = {rt["admin_user"]}


def _spawner(c, rt):
    if rt["spawner"] == "slurm":
        c.JupyterHub.spawner_class = "aif-slurm"
    else:
        c.JupyterHub.spawner_class = "aif-local"
        if os.geteuid() != 0:
            # the hub cannot switch accounts: sessions are the processes of the person who ran
            # `aif up`, so only that person (the admin account) may start one
            c.AIFLocalSpawner.single_user = rt["admin_user"]
    c.PlatformEnvMixin.mlflow_tracking_uri = rt["public_url"].rstrip("/") + f"/services/{MLFLOW_SERVICE}"
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = 300
    # counted from the job's port report to JupyterLab answering: a class of 30 starting on
    # shared cores takes ~2 min (perf/login_scale.py), so give it the whole start budget
    c.Spawner.http_timeout = 300


def _service_timeout(seconds):
    """How long the hub waits for the service to listen (JupyterHub >= 6; 30 s before).

    Importing the service takes long on a loaded 2-core machine; the MLflow server itself
    starts after the service listens.
    """
    from jupyterhub.services.service import Service

    return {"timeout": seconds} if "timeout" in Service.class_traits(input=True) else {}


def _services_and_roles(c, rt, state):
    ml = rt["mlflow"]
    c.JupyterHub.services = [
        {
            "name": MLFLOW_SERVICE,
            "url": f"http://127.0.0.1:{ml['service_port']}",
            "display": True,
            "oauth_no_confirm": True,
            **_service_timeout(120),
            "command": [
                sys.executable, "-m", "aifactory.hub.tracking.service",
                "--state-dir", str(state / "mlflow"),
                "--backend-store-uri", ml["backend_store_uri"],
                "--auth-db-uri", ml["auth_db_uri"],
                "--artifacts-destination", ml["artifacts_destination"],
                "--mlflow-port", str(ml["server_port"]),
                "--workers", str(ml["workers"]),
                *(["--assistant"] if ml.get("assistant") else []),
            ],
        },
        {"name": ADMIN_SERVICE, "api_token": rt["admin_service_token"]},
    ]
    access_mlflow = f"access:services!service={MLFLOW_SERVICE}"
    c.JupyterHub.load_roles = [
        {"name": "user", "scopes": ["self", access_mlflow]},
        # a user's server token is what MLflow clients in the session authenticate with
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", access_mlflow]},
        {"name": "mlflow-service", "services": [MLFLOW_SERVICE], "scopes": ["read:users", "list:users", "read:groups", "list:groups"]},
        {"name": "aif-admin", "services": [ADMIN_SERVICE], "scopes": ADMIN_SERVICE_SCOPES},
    ]


def _workshops(c, rt, state):
    """Workshops (`aif workshop`): the trainer page, each trainer's role, the group banner."""
    from ..workshops.record import WorkshopBook, announcement_for

    book = WorkshopBook(state / "workshops")
    c.AIFSlurmSpawner.workshops_dir = str(book.root)
    env = {k: os.environ[k] for k in ("PATH", "SLURM_CONF") if k in os.environ}
    c.JupyterHub.services.append({
        "name": WORKSHOP_SERVICE,
        "url": f"http://127.0.0.1:{rt['workshop_service_port']}",
        "display": True,
        "oauth_no_confirm": True,
        # start/stop go to the hub with the trainer's token: the hub grants it only the trainer's
        # own servers!group= (see workshops/service.py)
        "oauth_client_allowed_scopes": ["servers"],
        "environment": {**env, envvars.STATE_DIR.name: str(state)},
        "command": [sys.executable, "-m", "aifactory.hub.workshops.service"],
    })
    c.JupyterHub.load_roles.append({
        "name": "workshop-service", "services": [WORKSHOP_SERVICE],
        "scopes": ["list:users", "read:users", "read:servers", "read:groups", "list:groups"],
    })
    # roles are hub configuration: `aif workshop create/end` restart the hub to change them
    c.JupyterHub.load_roles.extend(ws.trainer_role() for ws in book.active())
    c.JupyterHub.template_vars = {"announcement": lambda user: announcement_for(book, user)}
