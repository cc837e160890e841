"""The MLflow server process behind the service: its stores, auth config, start and readiness.

It listens on loopback only, runs MLflow's auth app with the bridge's plug-in (auth_plugin.py),
and takes requests only with the bridge's per-start secret.
"""

import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ...common import envvars
from ...common.files import open_private_log, secret_file, write_private
from ...common.procutil import ProcessRecord, child_guard
from .auth_plugin import SERVICE_ADMIN

AUTH_FUNCTION = "aifactory.hub.tracking.auth_plugin:authenticate_request"
# below this the stores' filesystem counts as full: SQLite then fails even to read a WAL database
MIN_FREE_BYTES = 1 << 20
#: where the server keeps artifacts, as MLflow names its proxied artifact store
ARTIFACT_ROOT = "mlflow-artifacts:/"


def out_of_space(paths):
    """The first of `paths` whose filesystem is (nearly) full, else None."""
    for path in paths:
        try:
            fs = os.statvfs(path)
        except OSError:
            continue
        if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
            return path
    return None


def prepare_sqlite(uri):
    """WAL mode for a SQLite store, so that many writers do not hit 'database is locked'."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")


def write_auth_config(path, auth_db_uri):
    write_private(
        path,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {auth_db_uri}\n"
        f"admin_username = {SERVICE_ADMIN}\n"
        f"authorization_function = {AUTH_FUNCTION}\n"
        "grant_default_workspace_access = false\n",
    )


_INIT_STORES = """
import sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
TrackingStore(sys.argv[1], sys.argv[2])
AuthStore().init_db(sys.argv[3])
"""


def _init_stores(args, env):
    """Create or migrate both databases once, before several server workers race to do it."""
    result = subprocess.run(
        [sys.executable, "-c", _INIT_STORES, args.backend_store_uri, ARTIFACT_ROOT, args.auth_db_uri],
        env=env, capture_output=True, text=True, preexec_fn=child_guard(),
    )
    if result.returncode != 0:
        raise SystemExit(f"MLflow store initialisation failed: {result.stderr.strip().splitlines()[-1:]}")


def start_mlflow_server(args, port, secret):
    """The MLflow server (auth app, served artifacts) on a loopback port, as a child that dies with us."""
    state = Path(args.state_dir)
    auth_ini = state / "auth.ini"
    write_auth_config(auth_ini, args.auth_db_uri)
    prepare_sqlite(args.backend_store_uri)
    prepare_sqlite(args.auth_db_uri)
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("JUPYTERHUB_")]:
        del env[key]  # MLflow has no business with the hub's token
    env.update({
        envvars.MLFLOW_BRIDGE_SECRET.name: secret,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file(state / "flask_secret_key"),
        # no NullPool: it reopened SQLite for every request, and each last close checkpointed the
        # WAL into the database (twice the wall time of a log-batch); MLflow's default pool keeps
        # connections (an operator's MLFLOW_SQLALCHEMYSTORE_POOLCLASS still applies). Its overflow
        # must cover a worker's request threads (40): with MLflow's 10, 40 users logging at once
        # waited 30 s for a connection and got "QueuePool limit ... reached" (make faults)
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": env.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "40"),
        # nothing of a company's work leaves the site, and nothing suggests it might: no usage
        # telemetry (server and UI), no AI gateway, no assistant reachable from users' browsers
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_ENABLE_AI_GATEWAY": env.get("MLFLOW_ENABLE_AI_GATEWAY", "false"),
        "MLFLOW_ENABLE_REMOTE_ASSISTANT": "false",
        # a log-batch in one INSERT (store.py): sessions send their points 1,000 at a time
        envvars.MLFLOW_BULK_INGEST.name: env.get(envvars.MLFLOW_BULK_INGEST.name, "1"),
        # the GenAI job runner (huey consumers) costs four processes and is not used here
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    })
    _init_stores(args, env)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow), "server", "--app-name", "basic-auth",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
        "--backend-store-uri", args.backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", args.artifacts_destination,
        "--default-artifact-root", ARTIFACT_ROOT,
        "--static-prefix", args.prefix.rstrip("/"),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]
    log_file = open_private_log(state / "mlflow-server.log")
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=child_guard())
    record = ProcessRecord.from_env()
    if record:  # its own session: the launcher stops its group if this service cannot
        record.add("mlflow-server", proc.pid, proc.pid)
    return proc


async def wait_for_mlflow(client, url, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"MLflow server exited with code {proc.returncode}; see mlflow-server.log")
        try:
            response = await client.fetch(f"{url}health", request_timeout=5, raise_error=False)
            if response.code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise SystemExit(f"MLflow server did not answer within {timeout}s; see mlflow-server.log")


def store_dirs(args):
    """Local directories the stores write to: the service's own, SQLite files', local artifacts."""
    dirs = [args.state_dir]
    for uri in (args.backend_store_uri, args.auth_db_uri):
        if uri.startswith("sqlite:///"):
            dirs.append(str(Path(uri[len("sqlite:///"):]).parent))
    if "://" not in args.artifacts_destination:
        dirs.append(args.artifacts_destination)
    return list(dict.fromkeys(dirs))

