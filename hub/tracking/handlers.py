"""The MLflow service's request handlers: health, shares, and the authenticated proxy to MLflow.

Every request is authenticated by the hub (browsers by its OAuth, API clients by a hub token,
MLFLOW_TRACKING_TOKEN); the identity goes on to MLflow's auth app in the bridge's headers, and
the bodies of run and experiment writes pass the attribution rules (attribution.py) first.
"""

import json
import os

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httputil, web
from tornado.httpclient import HTTPClientError, HTTPRequest

from .attribution import REWRITES
from .auth_plugin import SECRET_HEADER, USER_HEADER
from .backends import Backends
from .errors import STORE_FULL_MESSAGE, MLflowError

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length", "host", "cookie", "authorization",
    USER_HEADER.lower(), SECRET_HEADER.lower(),
}


#: MLflow's assistant runs tools on the server's host and takes every request through this
#: service as a local one: off unless the operator turns it on (MLflowService.assistant)
ASSISTANT_PATH = "/mlflow/assistant/"

#: put into the UI's page before the app starts: the UI's own settings say telemetry off and
#: its notice dismissed (MLflow keeps both in localStorage), and the assistant's entry is hidden
UI_PRIVACY_SCRIPT = b"""<script>
try {
  localStorage.setItem("mlflow.settings.telemetry.enabled_v1", "false");
  localStorage.setItem("mlflow.telemetry.info.alert.dismissed_v1", "true");
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
} catch (e) {}
new MutationObserver(function () {
  document.querySelectorAll('[role="button"]').forEach(function (el) {
    if (/^Assistant\s*Beta$/.test(el.textContent.trim()) && el.parentElement) el.parentElement.style.display = "none";
  });
}).observe(document.documentElement, {childList: true, subtree: true});
</script>"""


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
        await self._resync(model)

    async def delete(self):
        group = self._group()
        self.backends.shares.remove_share(self.experiment_id, group)
        await self._resync(await self.backends.hub_get(f"/groups/{group}") or {})

    async def _resync(self, group_model):
        """Grant or revoke READ for the group's members now, not when their identity next expires."""
        for member in group_model.get("users", []):
            self.backends.forget_identity(member)
            await self.backends.ensure_identity(member)
        await self.get()


class ProxyHandler(BaseHandler):
    """Everything else: authenticate, attribute, forward to MLflow, stream the answer back."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    async def _forward(self, path):
        user = self.require_user()
        if user is None:
            return
        self.require_ready()
        if ASSISTANT_PATH in self.request.path and not self.settings["assistant"]:
            raise MLflowError(404, "ENDPOINT_NOT_FOUND", "the MLflow Assistant is off on this platform")
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
        self._page = None
        if self.request.method == "GET" and self.request.path == self.settings["ui_index"]:
            self._page = []  # the UI's page, held back to take UI_PRIVACY_SCRIPT
            headers.pop("Accept-Encoding", None)
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
        elif self._page is not None:
            self.write(b"".join(self._page).replace(b"<head>", b"<head>" + UI_PRIVACY_SCRIPT, 1))
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
        if self._page is not None:
            self._page.append(chunk)
            return
        self.write(chunk)
        self.flush()

    get = head = post = put = patch = delete = options = _forward



def make_app(prefix, backends, assistant=False):
    prefix = prefix.rstrip("/") + "/"
    return web.Application(
        [
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "aif/health", HealthHandler),
            (prefix + "aif/share", ShareHandler),
            (prefix.rstrip("/") + "(/.*)?", ProxyHandler),
        ],
        backends=backends,
        assistant=assistant,
        ui_index=prefix,
        cookie_secret=os.urandom(32),
        login_url=url_path_join(prefix, "oauth_callback"),  # replaced by HubOAuth's login redirect
    )

