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
SERVE_SERVICE = "serve"
ADMIN_SERVICE = "aif-admin"
#: the entry point that runs a service module with its guard armed first
GUARDED = "aifactory.common.guarded"

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
    _serve_home_page(c, rt)
    if rt["spawner"] == "slurm":
        # idle sessions must release their GPUs (issue 3); least-privilege service, see culler.py
        from ..culler import add_idle_culler

        add_idle_culler(c)
        _workshops(c, rt, state)
    _guard_managed_services(c, state)


def _guard_managed_services(c, state):
    """Every service the hub starts arms its death-of-parent guard first and records itself.

    JupyterHub starts services in their own session and installs its signal handlers only once
    they are all up: a hub stopped meanwhile dies without stopping them. So each service ends
    with the hub by itself (common/guarded.py, checked against this hub's pid), and records its
    process group for `aif up`, which stops what is left (common/procutil.py).
    """
    guard = {
        envvars.PARENT_PID.name: str(os.getpid()),  # this file runs inside the hub process
        envvars.PROCESS_RECORD.name: str(state / "run" / "processes.jsonl"),
    }
    for service in c.JupyterHub.services:
        command = service.get("command") or []
        if command[:2] == [sys.executable, "-m"] and command[2] != GUARDED:
            service["command"] = [sys.executable, "-m", GUARDED, *command[2:]]
            service["environment"] = {**service.get("environment", {}), **guard}


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
    c.Authenticator.admin_users = {rt["admin_user"]}
    if rt.get("auth") == "oidc":
        # federated login beside the local accounts (admin, workshop seats); see hub/oidc.py
        c.JupyterHub.authenticator_class = "aifactory.hub.oidc.AIFOIDCAuthenticator"
        for key, value in oidc_defaults(rt["public_url"], state).items():
            setattr(c.AIFOIDCAuthenticator, key, value)
        return
    c.JupyterHub.authenticator_class = "aifactory.hub.auth.AIFLocalAuthenticator"
    c.AIFLocalAuthenticator.users_file = str(state / "users.json")


IDENTITIES_FILE = "oidc-identities.json"  # which provider identity owns which hub name (hub/oidc.py)


def oidc_defaults(public_url, state):
    """What the platform decides for federated login: its URLs and where it keeps the files.

    The site's config file sets the rest (issuer, client, claims, groups) and may override these.
    """
    hub = public_url.rstrip("/") + "/hub"
    return {
        "oauth_callback_url": f"{hub}/oauth_callback",  # the redirect URI to register with the provider
        "post_logout_redirect_uri": f"{hub}/login",
        "users_file": str(Path(state) / "users.json"),
        "identities_file": str(Path(state) / IDENTITIES_FILE),
        "discovery_cache": str(Path(state) / "oidc-discovery.json"),
        "refresh_pre_spawn": True,  # a user revoked at the provider cannot start a new session
    }


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
        _serve_service(rt),
    ]
    access_mlflow = f"access:services!service={MLFLOW_SERVICE}"
    c.JupyterHub.load_roles = [
        {"name": "user", "scopes": ["self", access_mlflow]},
        # a user's server token is what MLflow clients in the session authenticate with
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", access_mlflow]},
        {"name": "mlflow-service", "services": [MLFLOW_SERVICE], "scopes": ["read:users", "list:users", "read:groups", "list:groups"]},
        {"name": "aif-admin", "services": [ADMIN_SERVICE], "scopes": ADMIN_SERVICE_SCOPES},
        # the serve service checks each caller's token and groups itself (owner or a shared group);
        # `tokens`: an idle stop ends the owner's MLflow run with a short-lived MLflow-only token
        {"name": "serve-service", "services": [SERVE_SERVICE],
         "scopes": ["read:users", "list:users", "read:groups", "list:groups", "tokens"]},
    ]


def _serve_service(rt):
    """`aif serve` endpoints behind the hub: /services/serve/<owner>/<name>/v1 (hub/serving/front.py).

    Its idle timeout comes from the site's file (c.ServeService), added by finish_hub.
    """
    passed = (envvars.SERVE_DIR.name, "PATH", "SLURM_CONF")
    mlflow = f"http://127.0.0.1:{rt['mlflow']['service_port']}/services/{MLFLOW_SERVICE}"
    return {
        "name": SERVE_SERVICE,
        "url": f"http://127.0.0.1:{rt['serve_service_port']}",
        "display": False,  # an API (hub tokens only), no page to open from the Services menu
        **_service_timeout(60),
        "environment": {k: os.environ[k] for k in passed if k in os.environ},
        "command": [sys.executable, "-m", "aifactory.hub.serving.front", "--mlflow-url", mlflow],
    }


def _serve_home_page(c, rt):
    """The owner's endpoints (state, URL, walltime left) on the hub's home page."""
    from ..serving.overview import HomePageEndpoints

    # first: its home.html extends the stock one ("templates/home.html")
    c.JupyterHub.template_paths.prepend([str(Path(__file__).parents[1] / "serving" / "templates")])
    base = rt["public_url"]
    c.JupyterHub.template_vars.update(
        {"aif_endpoints": lambda user: HomePageEndpoints(user.name if user else None, base)})


def finish_hub(c):
    """What the site's file may change and the platform passes on; runs after that file is loaded."""
    from .config import ServeService

    try:
        serve = ServeService(config=c)
    except ConfigError:
        raise
    except Exception as err:  # a wrongly typed value
        raise ConfigError(f"invalid configuration value: {err}") from None
    for service in c.JupyterHub.services:
        if service.get("name") == SERVE_SERVICE:
            service["command"] = [*service["command"], "--idle-timeout", str(serve.idle_timeout)]


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
    c.JupyterHub.template_vars.update({"announcement": lambda user: announcement_for(book, user)})
