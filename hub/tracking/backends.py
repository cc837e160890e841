"""What the MLflow service calls: MLflow's REST API as its service admin, and the hub's API.

It also keeps each hub user's MLflow identity in step with the hub: an MLflow user with the
hub's admin flag, and READ grants on the experiments shared with the user's hub groups.
"""

import asyncio
import json
import logging
import secrets
import time
from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient

from .auth_plugin import SECRET_HEADER, SERVICE_ADMIN, USER_HEADER
from .server import out_of_space

log = logging.getLogger("aif.mlflow")

IDENTITY_TTL = 30.0  # seconds a user's hub groups/admin flag are trusted before re-reading


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
