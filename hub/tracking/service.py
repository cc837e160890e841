"""The hub-managed MLflow service: MLflow's tracking server behind the hub's login.

JupyterHub starts this module as the managed service "mlflow". It starts the MLflow server
(with MLflow's auth app) on a loopback port and serves /services/mlflow/ itself:

- every request is authenticated by the hub: browsers by the hub's OAuth, API clients by a hub
  token (MLFLOW_TRACKING_TOKEN); nobody reaches MLflow without a hub identity;
- the identity is passed to MLflow's auth app (see mlflow_auth.py), which enforces permissions:
  experiments are private to their creator unless shared;
- runs are attributed to the hub user: `user_id` and the `mlflow.user` tag are set here, and a
  client that tries to set another user's name is refused;
- owners share an experiment read-only with a hub group (POST aif/share), kept in sync with the
  group's membership.
"""

import asyncio
import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlencode

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop

from .mlflow_auth import SECRET_ENV, SECRET_HEADER, USER_HEADER
from .mlflow_store import ENABLE_ENV as BULK_INGEST_ENV
from ..common.procutil import die_with_parent, stop_process_group

log = logging.getLogger("aif.mlflow")

SERVICE_ADMIN = "aif-service"  # MLflow auth-app admin the bridge acts as for housekeeping
USER_TAG = "mlflow.user"
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length", "host", "cookie", "authorization",
    USER_HEADER.lower(), SECRET_HEADER.lower(),
}
IDENTITY_TTL = 30.0  # seconds a user's hub groups/admin flag are trusted before re-reading
# below this the stores' filesystem counts as full: SQLite then fails even to read a WAL database
MIN_FREE_BYTES = 1 << 20
STORE_FULL_MESSAGE = ("the platform's MLflow store is out of disk space: nothing was recorded; "
                      "ask the platform operator to free space, then log again")


class MLflowError(web.HTTPError):
    """An error in MLflow's own JSON shape, so MLflow clients print the message."""

    def __init__(self, status, error_code, message):
        super().__init__(status, message)
        self.error_code = error_code
        self.message = message


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


# --- state kept by the bridge -------------------------------------------------------------------

class ShareStore:
    """Experiment shares with groups, and the per-user grants the bridge made for them."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS shares (experiment_id TEXT, group_name TEXT, shared_by TEXT,
                PRIMARY KEY (experiment_id, group_name));
            CREATE TABLE IF NOT EXISTS grants (experiment_id TEXT, username TEXT,
                PRIMARY KEY (experiment_id, username));
            """
        )

    def add_share(self, experiment_id, group, by):
        self.db.execute("INSERT OR REPLACE INTO shares VALUES (?, ?, ?)", (experiment_id, group, by))

    def remove_share(self, experiment_id, group):
        self.db.execute("DELETE FROM shares WHERE experiment_id=? AND group_name=?", (experiment_id, group))

    def shares_of(self, experiment_id):
        rows = self.db.execute("SELECT group_name FROM shares WHERE experiment_id=?", (experiment_id,))
        return [r[0] for r in rows]

    def experiments_for_groups(self, groups):
        if not groups:
            return set()
        marks = ",".join("?" * len(groups))
        rows = self.db.execute(f"SELECT experiment_id FROM shares WHERE group_name IN ({marks})", list(groups))
        return {r[0] for r in rows}

    def grants_of(self, username):
        return {r[0] for r in self.db.execute("SELECT experiment_id FROM grants WHERE username=?", (username,))}

    def record_grant(self, experiment_id, username):
        self.db.execute("INSERT OR IGNORE INTO grants VALUES (?, ?)", (experiment_id, username))

    def forget_grant(self, experiment_id, username):
        self.db.execute("DELETE FROM grants WHERE experiment_id=? AND username=?", (experiment_id, username))


# --- talking to MLflow and the hub --------------------------------------------------------------

class Backends:
    """HTTP calls the bridge makes: to MLflow as its service admin, and to the hub API."""

    def __init__(self, mlflow_url, prefix, secret, hub_api_url, hub_token, shares, store_dirs=()):
        self.mlflow_url = mlflow_url  # origin: http://127.0.0.1:PORT
        self.mlflow_base = mlflow_url + prefix  # MLflow serves everything under the prefix
        self.secret = secret
        self.hub_api_url = hub_api_url
        self.hub_token = hub_token
        self.shares = shares
        self.store_dirs = list(store_dirs)  # where the databases and artifacts live, to check for space
        self.client = AsyncHTTPClient(max_clients=64)
        self.ready = False
        self._identities = {}  # username -> (checked_at, admin, groups)
        self._locks = {}

    def mlflow_headers(self, username):
        return {USER_HEADER: username, SECRET_HEADER: self.secret}

    async def mlflow_admin(self, method, endpoint, body=None, params=None, version=2):
        """Call an MLflow REST endpoint as the service admin; returns (status, decoded JSON)."""
        url = f"{self.mlflow_base}api/{version}.0/mlflow/{endpoint}"
        if params:
            url += "?" + urlencode(params)
        headers = {**self.mlflow_headers(SERVICE_ADMIN), "Content-Type": "application/json"}
        response = await self.client.fetch(
            url, method=method, headers=headers, body=None if body is None else json.dumps(body),
            raise_error=False, request_timeout=60,
        )
        try:
            payload = json.loads(response.body) if response.body else {}
        except ValueError:
            payload = {"error_code": "INTERNAL_ERROR", "message": response.body[:200].decode(errors="replace")}
        return response.code, payload

    async def hub_get(self, path):
        response = await self.client.fetch(
            url_path_join(self.hub_api_url, path),
            headers={"Authorization": f"token {self.hub_token}"}, raise_error=False, request_timeout=30,
        )
        if response.code == 404:
            return None
        if response.code != 200:
            raise web.HTTPError(502, f"hub API {path}: HTTP {response.code}")
        return json.loads(response.body)

    async def hub_user(self, username):
        return await self.hub_get(f"/users/{username}")

    async def ensure_identity(self, username):
        """Make the hub user an MLflow user with the hub's admin flag and group shares."""
        cached = self._identities.get(username)
        if cached and time.monotonic() - cached[0] < IDENTITY_TTL:
            return cached
        lock = self._locks.setdefault(username, asyncio.Lock())
        async with lock:
            cached = self._identities.get(username)
            if cached and time.monotonic() - cached[0] < IDENTITY_TTL:
                return cached
            model = await self.hub_user(username) or {}
            admin, groups = bool(model.get("admin")), sorted(model.get("groups") or [])
            await self._ensure_mlflow_user(username, admin, known=cached is not None)
            await self._sync_grants(username, groups)
            entry = (time.monotonic(), admin, groups)
            self._identities[username] = entry
            return entry

    async def _ensure_mlflow_user(self, username, admin, known):
        if not known:
            # the password is never used (identity comes from the hub), but MLflow requires one
            code, payload = await self.mlflow_admin(
                "POST", "users/create", {"username": username, "password": secrets.token_urlsafe(24)}
            )
            if code != 200 and payload.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                raise web.HTTPError(502, f"MLflow users/create for {username}: {payload}")
        code, payload = await self.mlflow_admin("PATCH", "users/update-admin", {"username": username, "is_admin": admin})
        if code != 200:
            raise web.HTTPError(502, f"MLflow users/update-admin for {username}: {payload}")

    async def _sync_grants(self, username, groups):
        wanted = self.shares.experiments_for_groups(groups)
        held = self.shares.grants_of(username)
        for experiment_id in sorted(wanted - held):
            await self.grant_read(experiment_id, username)
        for experiment_id in sorted(held - wanted):
            await self.revoke_read(experiment_id, username)

    async def permission_of(self, experiment_id, username):
        """The user's effective permission on the experiment (NO_PERMISSIONS when none)."""
        code, payload = await self.mlflow_admin(
            "GET", "users/permissions/get", version=3,
            params={"username": username, "resource_type": "experiment", "resource_id": experiment_id},
        )
        return payload.get("permission") if code == 200 else None

    async def _set_permission(self, action, experiment_id, username, **extra):
        body = {"username": username, "resource_type": "experiment", "resource_id": experiment_id, **extra}
        code, payload = await self.mlflow_admin("POST", f"users/permissions/{action}", body, version=3)
        if code != 200:
            log.warning("could not %s experiment %s for %s: %s", action, experiment_id, username, payload)
        return code == 200

    async def grant_read(self, experiment_id, username):
        # never lower an owner's or editor's permission to READ
        if await self.permission_of(experiment_id, username) in (None, "NO_PERMISSIONS"):
            if await self._set_permission("grant", experiment_id, username, permission="READ"):
                self.shares.record_grant(experiment_id, username)

    async def revoke_read(self, experiment_id, username):
        if await self.permission_of(experiment_id, username) == "READ":
            await self._set_permission("revoke", experiment_id, username)
        self.shares.forget_grant(experiment_id, username)

    def store_full(self):
        path = out_of_space(self.store_dirs)
        if path:
            log.error("no space left under %s: MLflow requests fail until space is freed", path)
        return path is not None

    def forget_identity(self, username=None):
        if username is None:
            self._identities.clear()
        else:
            self._identities.pop(username, None)


# --- request handlers ---------------------------------------------------------------------------

class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def backends(self) -> Backends:
        return self.settings["backends"]

    def require_ready(self):
        # checked after authentication: the hub's own start-up probe must see a redirect, not a 503
        if not self.backends.ready:
            raise MLflowError(503, "TEMPORARILY_UNAVAILABLE", "the MLflow server is starting; try again in a few seconds")

    def check_xsrf_cookie(self):
        """Called by HubOAuth for cookie-authenticated requests that may change state.

        MLflow's UI cannot sign its fetches with an xsrf token, so instead: browsers say where a
        request comes from (Sec-Fetch-Site), and a cross-site page cannot send a JSON body
        without a CORS preflight, which this service never grants.
        """
        site = self.request.headers.get("Sec-Fetch-Site")
        if site in ("same-origin", "none") or self.request.method in ("GET", "HEAD", "OPTIONS"):
            return
        if site is None and self.request.headers.get("Content-Type", "").startswith("application/json"):
            return
        raise web.HTTPError(403, "cross-site request refused")

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code = getattr(exc, "error_code", None) or {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                                                      404: "RESOURCE_DOES_NOT_EXIST"}.get(status_code, "INTERNAL_ERROR")
        message = getattr(exc, "message", None) or getattr(exc, "log_message", None) or self._reason
        if (status_code >= 500 or code == "UNAUTHENTICATED") and self.backends.store_full():
            # a full disk breaks MLflow and the hub in many ways (SQL errors, tokens refused): name the
            # cause once; 507 because MLflow clients retry 5xx answers for minutes before giving up
            status_code, code, message = 507, "RESOURCE_EXHAUSTED", STORE_FULL_MESSAGE
            self.set_status(status_code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error_code": code, "message": message}))

    def require_user(self):
        """The hub user, or None after sending a login redirect / 403 for API clients."""
        user = self.current_user
        if user:
            return user
        wants_page = self.request.method == "GET" and "/api/" not in self.request.path and not self.request.headers.get("Authorization")
        if wants_page:
            self.redirect(self.get_login_url())
            return None
        raise MLflowError(403, "UNAUTHENTICATED", "a hub login or a hub API token (MLFLOW_TRACKING_TOKEN) is required")


class HealthHandler(BaseHandler):
    async def get(self):
        self.require_ready()
        try:
            url = f"{self.backends.mlflow_base}health"
            response = await self.backends.client.fetch(url, request_timeout=10)
            ok = response.code == 200
        except Exception:
            ok = False
        self.set_status(200 if ok else 503)
        self.finish({"mlflow": "ok" if ok else "unreachable"})


class ShareHandler(BaseHandler):
    """POST/DELETE {experiment_id, group}: share an experiment read-only with a hub group."""

    async def prepare(self):
        self.user = self.require_user()
        if self.user is None:
            return
        self.require_ready()
        try:
            self.body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise MLflowError(400, "INVALID_PARAMETER_VALUE", "the body must be JSON") from None
        self.experiment_id = str(self.body.get("experiment_id") or self.get_argument("experiment_id", ""))
        if not self.experiment_id:
            raise MLflowError(400, "INVALID_PARAMETER_VALUE", "experiment_id is required")
        await self.backends.ensure_identity(self.user["name"])
        await self._require_manage()

    async def _require_manage(self):
        name = self.user["name"]
        _, admin, _ = await self.backends.ensure_identity(name)
        if admin or await self.backends.permission_of(self.experiment_id, name) == "MANAGE":
            return
        raise MLflowError(403, "PERMISSION_DENIED",
                          f"only the owner of experiment {self.experiment_id} (MANAGE permission) can share it")

    def _group(self):
        group = self.body.get("group") or self.get_argument("group", "")
        if not group:
            raise MLflowError(400, "INVALID_PARAMETER_VALUE", "group is required")
        return group

    async def get(self):
        self.finish({"experiment_id": self.experiment_id, "groups": self.backends.shares.shares_of(self.experiment_id)})

    async def post(self):
        group = self._group()
        model = await self.backends.hub_get(f"/groups/{group}")
        if model is None:
            raise MLflowError(404, "RESOURCE_DOES_NOT_EXIST", f"hub group {group!r} does not exist")
        self.backends.shares.add_share(self.experiment_id, group, self.user["name"])
        for member in model.get("users", []):
            self.backends.forget_identity(member)
            await self.backends.ensure_identity(member)
        self.finish({"experiment_id": self.experiment_id, "groups": self.backends.shares.shares_of(self.experiment_id)})

    async def delete(self):
        group = self._group()
        self.backends.shares.remove_share(self.experiment_id, group)
        model = await self.backends.hub_get(f"/groups/{group}") or {}
        for member in model.get("users", []):
            self.backends.forget_identity(member)
            await self.backends.ensure_identity(member)
        self.finish({"experiment_id": self.experiment_id, "groups": self.backends.shares.shares_of(self.experiment_id)})


class ProxyHandler(BaseHandler):
    """Everything else: authenticate, attribute, forward to MLflow, stream the answer back."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    async def _forward(self, path):
        user = self.require_user()
        if user is None:
            return
        self.require_ready()
        name = user["name"]
        await self.backends.ensure_identity(name)
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH", "DELETE") else None
        if body is not None and self.request.method == "POST":
            body = await self._attributed_body(name, body)
        await self._stream(name, body)

    async def _attributed_body(self, name, body):
        path = self.request.path
        endpoint = next((e for e in REWRITES if path.endswith(e)), None)
        if endpoint is None:
            return body
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise MLflowError(400, "MALFORMED_REQUEST", f"{endpoint}: the body is not JSON") from None
        changed = await REWRITES[endpoint](self, name, payload)
        # a checked body goes on as it came: re-encoding 1,000-point batches is pure cost
        return json.dumps(payload).encode() if changed else body

    async def _stream(self, name, body):
        upstream = self.backends.mlflow_url + self.request.path
        if self.request.query:
            upstream += "?" + self.request.query
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in HOP_BY_HOP}
        headers.update(self.backends.mlflow_headers(name))
        self._headers_sent = False
        self._error_body = None
        request = HTTPRequest(
            upstream, method=self.request.method, headers=headers, body=body,
            allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
            request_timeout=3600, header_callback=self._on_header, streaming_callback=self._on_chunk,
        )
        try:
            await self.backends.client.fetch(request, raise_error=False)
        except HTTPClientError as err:  # connection-level failure
            raise MLflowError(502, "TEMPORARILY_UNAVAILABLE", f"MLflow server unreachable: {err}") from None
        except ConnectionError as err:
            raise MLflowError(502, "TEMPORARILY_UNAVAILABLE", f"MLflow server unreachable: {err}") from None
        if self._error_body is not None:
            if self.backends.store_full():
                raise MLflowError(507, "RESOURCE_EXHAUSTED", STORE_FULL_MESSAGE)
            self.write(b"".join(self._error_body))
        self.finish()

    def _on_header(self, line):
        if line.startswith("HTTP/"):
            self._status_line = httputil.parse_response_start_line(line.strip())
            self.set_status(self._status_line.code, self._status_line.reason)
            self._error_body = [] if self._status_line.code >= 500 else None  # held back: a full disk?
            self.clear_header("Content-Type")
            return
        if not line.strip():
            return
        key, _, value = line.partition(":")
        if key.lower() not in HOP_BY_HOP and key.lower() not in ("date", "server"):
            self.add_header(key.strip(), value.strip())

    def _on_chunk(self, chunk):
        if self._error_body is not None:
            self._error_body.append(chunk)
            return
        self.write(chunk)
        self.flush()

    get = head = post = put = patch = delete = options = _forward


# --- attribution rules, per MLflow endpoint ---------------------------------------------------
# Each gets the parsed body; it raises to refuse, and returns True when it rewrote the payload
# (otherwise the original bytes go on: MLflow parses them with the same json module).

def _refuse_user_tag(name, tags, where):
    for tag in tags or []:
        if tag.get("key") == USER_TAG and tag.get("value") != name:
            raise MLflowError(403, "PERMISSION_DENIED",
                              f"{where}: tag {USER_TAG} is set by the platform to the run's owner ({name})")


async def _attribute_new_run(handler, name, payload):
    payload["user_id"] = name
    tags = [t for t in payload.get("tags") or [] if t.get("key") != USER_TAG]
    payload["tags"] = tags + [{"key": USER_TAG, "value": name}]
    return True


async def _check_set_tag(handler, name, payload):
    _refuse_user_tag(name, [payload], "runs/set-tag")


async def _check_log_batch(handler, name, payload):
    _refuse_user_tag(name, payload.get("tags"), "runs/log-batch")


async def _check_new_experiment(handler, name, payload):
    """`other/...` names are reserved to the hub user `other` (default experiments are `<user>/default`);
    artifacts stay in the platform's store (a client would write to any path it is given)."""
    location = payload.get("artifact_location") or ""
    inside = location.startswith(PLATFORM_ARTIFACTS) and ".." not in unquote(location).split("/")
    if location and not inside:
        raise MLflowError(400, "INVALID_PARAMETER_VALUE",
                          f"experiments/create: artifact_location {location!r} is refused; leave it empty "
                          f"(artifacts go to the platform's store, {PLATFORM_ARTIFACTS})")
    owner, sep, _ = (payload.get("name") or "").partition("/")
    if not sep or owner == name:
        return
    _, admin, _ = await handler.backends.ensure_identity(name)
    if not admin and await handler.backends.hub_user(owner) is not None:
        raise MLflowError(403, "PERMISSION_DENIED",
                          f"experiments/create: names starting with '{owner}/' belong to hub user {owner}")


PLATFORM_ARTIFACTS = "mlflow-artifacts:/"

REWRITES = {
    "/mlflow/runs/create": _attribute_new_run,
    "/mlflow/runs/set-tag": _check_set_tag,
    "/mlflow/runs/log-batch": _check_log_batch,
    "/mlflow/experiments/create": _check_new_experiment,
}


# --- the MLflow server process ---------------------------------------------------------------------

def prepare_sqlite(uri):
    """WAL mode for a SQLite store, so that many writers do not hit 'database is locked'."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")


def write_auth_config(path, auth_db_uri):
    path.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {auth_db_uri}\n"
        f"admin_username = {SERVICE_ADMIN}\n"
        "authorization_function = aifactory.hub.mlflow_auth:authenticate_request\n"
        "grant_default_workspace_access = false\n"
    )


def _persistent_secret(path):
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


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
        [sys.executable, "-c", _INIT_STORES, args.backend_store_uri, "mlflow-artifacts:/", args.auth_db_uri],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"MLflow store initialisation failed: {result.stderr.strip().splitlines()[-1:]}")


def start_mlflow_server(args, port, secret):
    state = Path(args.state_dir)
    auth_ini = state / "auth.ini"
    write_auth_config(auth_ini, args.auth_db_uri)
    prepare_sqlite(args.backend_store_uri)
    prepare_sqlite(args.auth_db_uri)
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("JUPYTERHUB_")]:
        del env[key]  # MLflow has no business with the hub's token
    env.update({
        SECRET_ENV: secret,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _persistent_secret(state / "flask_secret_key"),
        # no NullPool: it reopened SQLite for every request, and each last close checkpointed the
        # WAL into the database (twice the wall time of a log-batch); MLflow's default pool keeps
        # connections (an operator's MLFLOW_SQLALCHEMYSTORE_POOLCLASS still applies). Its overflow
        # must cover a worker's request threads (40): with MLflow's 10, 40 users logging at once
        # waited 30 s for a connection and got "QueuePool limit ... reached" (make faults)
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": env.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "40"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # a log-batch in one INSERT (mlflow_store.py): sessions send their points 1,000 at a time
        BULK_INGEST_ENV: env.get(BULK_INGEST_ENV, "1"),
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
        "--default-artifact-root", "mlflow-artifacts:/",
        "--static-prefix", args.prefix.rstrip("/"),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]
    log_file = open(state / "mlflow-server.log", "ab")
    return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)


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


def make_app(prefix, backends):
    prefix = prefix.rstrip("/") + "/"
    return web.Application(
        [
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "aif/health", HealthHandler),
            (prefix + "aif/share", ShareHandler),
            (prefix.rstrip("/") + "(/.*)?", ProxyHandler),
        ],
        backends=backends,
        cookie_secret=os.urandom(32),
        login_url=url_path_join(prefix, "oauth_callback"),  # replaced by HubOAuth's login redirect
    )


def parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--backend-store-uri", required=True)
    parser.add_argument("--auth-db-uri", required=True)
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--mlflow-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefix", default=os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mlflow/"))
    return parser.parse_args(argv)


async def serve(args):
    from urllib.parse import urlparse

    die_with_parent()  # a hub killed without cleanup must not leave this service (and MLflow) behind

    secret = secrets.token_urlsafe(32)
    proc = start_mlflow_server(args, args.mlflow_port, secret)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True)
        backends = Backends(
            mlflow_url=f"http://127.0.0.1:{args.mlflow_port}", prefix=args.prefix.rstrip("/") + "/", secret=secret,
            hub_api_url=os.environ["JUPYTERHUB_API_URL"], hub_token=os.environ["JUPYTERHUB_API_TOKEN"],
            shares=ShareStore(Path(args.state_dir) / "bridge.sqlite"), store_dirs=store_dirs(args),
        )
        # listen at once (the hub gives a managed service only seconds to answer); requests
        # get 503 until the MLflow server, which takes far longer to start, is ready
        app = make_app(args.prefix, backends)
        bind = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:5000"))
        server = app.listen(bind.port, bind.hostname, max_body_size=4 * 1024**3, max_buffer_size=4 * 1024**3)
        await wait_for_mlflow(backends.client, backends.mlflow_base, proc)
        backends.ready = True
        log.info("MLflow service on %s, MLflow server pid %s", bind.geturl(), proc.pid)
        watcher = asyncio.ensure_future(asyncio.to_thread(proc.wait))
        done, _ = await asyncio.wait([asyncio.ensure_future(stop.wait()), watcher], return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            log.error("MLflow server exited (code %s); stopping the service so the hub reports it", proc.returncode)
        server.stop()
    finally:
        stop_process_group(proc)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    args = parse_args(argv if argv is not None else sys.argv[1:])
    IOLoop.current()  # tornado's loop on asyncio
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
