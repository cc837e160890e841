"""A real OpenID Connect provider for tests, started on a loopback port.

``OIDCProvider`` runs `django-oidc-provider <https://pypi.org/project/django-oidc-provider/>`_
(a maintained, spec-following OpenID Connect Provider for Django) in a subprocess:
a minimal Django project configured entirely in code (``settings.configure``), with
its SQLite database, log and RSA signing key under a state directory in the caller's
temporary directory.  Nothing is mocked on the protocol side: the hub under test talks
to the discovery document, the authorization endpoint (a real HTML login form that a
browser fills in), the token endpoint (client secret checked, PKCE S256 verified and
*required*), the userinfo endpoint, the JWKS endpoint (ID tokens are RS256-signed) and
the end_session endpoint.

Test-only additions, all behind a bearer token on ``<issuer>/_test/...``:

* users and their claims (``add_user``, ``set_claims``, ``update_claims``,
  ``deactivate``, ``remove_user``, ``revoke_tokens``), clients (``add_client``,
  ``update_client``) and token lifetimes (``set_token_lifetime``);
* ``tamper_id_tokens(mode)``: rewrites the ``id_token`` of token-endpoint responses
  (bad signature, altered claims, ``alg: none``, a foreign signing key) so that a test
  can prove what the relying party does and does not verify.

Usage::

    with OIDCProvider(tmp_path) as idp:
        idp.add_client("hub", "s3cret", ["http://127.0.0.1:8000/hub/oauth_callback"])
        idp.add_user("alice", "pw", claims={"eduperson_entitlement": ["urn:..."]})
        idp.issuer            # http://127.0.0.1:PORT/realms/aif
        idp.discovery()       # the provider's openid-configuration

The parent side needs only the standard library; the child (this same
module run with ``python -m``) needs the test extra's ``django`` and ``django-oidc-provider``
(pyproject.toml): the platform itself never imports them.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["OIDCProvider", "OIDCProviderError"]

# claims that the provider serves through the standard OpenID scopes (profile, email);
# every other claim given to add_user/set_claims is a custom claim (see claim_scopes)
STANDARD_CLAIMS = frozenset(
    """name given_name family_name middle_name nickname preferred_username profile
    picture website gender birthdate zoneinfo locale updated_at email email_verified
    phone_number phone_number_verified address""".split()
)

TAMPER_MODES = ("signature", "claims", "alg-none", "foreign-key")


class OIDCProviderError(RuntimeError):
    """The provider failed to start, or a test-control request failed."""


class OIDCProvider:
    """A django-oidc-provider instance in a subprocess on a free loopback port.

    Parameters
    ----------
    tmpdir:
        a directory the caller owns (e.g. pytest's ``tmp_path``); the provider keeps
        its state in ``<tmpdir>/oidc-provider`` (removed on exit unless ``keep_state``;
        ``provider.log`` is always kept for post-mortems).
    host:
        loopback address to bind; the issuer is ``http://{host}:{port}{issuer_path}``.
    issuer_path:
        path of the issuer, Keycloak-style by default, so that clients must derive the
        endpoints from the discovery document instead of guessing them.
    require_pkce:
        refuse authorization requests without ``code_challenge_method=S256``.
    claim_scopes:
        custom claim -> scope that must be granted for the claim to be released
        (e.g. ``{"eduperson_entitlement": "eduperson_entitlement"}``, as MyAccessID
        does); custom claims not listed here are released with ``openid``.
    id_token_claims:
        also put the user's claims into the ID token (``OIDC_IDTOKEN_INCLUDE_CLAIMS``).
    token_lifetime, id_token_lifetime:
        seconds an access token / ID token is valid (changeable later with
        ``set_token_lifetime``).
    """

    def __init__(
        self,
        tmpdir,
        *,
        host: str = "127.0.0.1",
        issuer_path: str = "/realms/aif",
        require_pkce: bool = True,
        claim_scopes: dict | None = None,
        id_token_claims: bool = True,
        token_lifetime: int = 3600,
        id_token_lifetime: int = 600,
        python: str = sys.executable,
        startup_timeout: float = 30.0,
        keep_state: bool = False,
        db_template: str | os.PathLike | None = None,
    ):
        self.state_dir = Path(tmpdir) / "oidc-provider"
        self.host = host
        self.issuer_path = "/" + issuer_path.strip("/") if issuer_path.strip("/") else ""
        self.python = python
        self.startup_timeout = startup_timeout
        self.keep_state = keep_state
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._admin_token = secrets.token_urlsafe(24)
        self._config = {
            "host": host,
            "port": 0,
            "issuer_path": self.issuer_path,
            "admin_token": self._admin_token,
            "require_pkce": require_pkce,
            "claim_scopes": dict(claim_scopes or {}),
            "id_token_claims": id_token_claims,
            "token_lifetime": token_lifetime,
            "id_token_lifetime": id_token_lifetime,
            "db_template": str(db_template) if db_template else None,
        }

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "OIDCProvider":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> "OIDCProvider":
        """Start (or restart after ``stop``) the provider; returns once it serves.

        A restart keeps the port, the database (users, clients, signing key) and so
        the issuer, like a real provider coming back after an outage.
        """
        if self.running:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ready = self.state_dir / "ready.json"
        ready.unlink(missing_ok=True)
        (self.state_dir / "config.json").write_text(json.dumps(self._config))
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "aifactory.hub.testing.oidc_idp", "serve", str(self.state_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills it whole
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        _LIVE.add(self)
        deadline = t0 + self.startup_timeout
        while not ready.exists():
            if self._proc.poll() is not None:
                raise OIDCProviderError(
                    f"OIDC provider exited with {self._proc.returncode} during startup:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise OIDCProviderError(
                    f"OIDC provider not ready after {self.startup_timeout}s:\n" + self.log_tail()
                )
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.port = info["port"]
        self._config["port"] = self.port  # a restart binds the same port again
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the provider process (its state stays: ``start()`` brings it back)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        _LIVE.discard(self)

    def close(self) -> None:
        """Stop the provider and remove its state (``provider.log`` is kept)."""
        self.stop()
        if not self.keep_state and self.state_dir.exists():
            for child in self.state_dir.iterdir():
                if child.name == "provider.log":
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "provider.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ URLs
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise OIDCProviderError("provider not started")
        return f"http://{self.host}:{self.port}"

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def url(self, path: str) -> str:
        return self.issuer + "/" + path.lstrip("/")

    def discovery(self) -> dict:
        return self._request("GET", self.discovery_url, auth=False)

    def jwks(self) -> dict:
        return self._request("GET", self.discovery()["jwks_uri"], auth=False)

    # ------------------------------------------------------------------ users
    def add_user(
        self,
        username: str,
        password: str,
        claims: dict | None = None,
        *,
        email: str | None = None,
        given_name: str = "",
        family_name: str = "",
        active: bool = True,
    ) -> dict:
        """Create a user who can sign in on the login page with ``password``.

        ``claims`` may hold standard claims (``preferred_username``, ``email``, ``name``
        ... override the defaults taken from the account) and custom ones
        (``eduperson_entitlement``, ``groups`` ...), served by userinfo and, with
        ``id_token_claims``, inside the ID token.
        """
        return self._request(
            "POST",
            self.url("_test/users"),
            {
                "username": username,
                "password": password,
                "claims": claims or {},
                "email": email if email is not None else f"{username}@example.org",
                "given_name": given_name,
                "family_name": family_name,
                "active": active,
            },
        )

    def user(self, username: str) -> dict:
        """``{"username", "active", "claims", "tokens"}`` (tokens: live access tokens)."""
        return self._request("GET", self.url(f"_test/users/{_q(username)}"))

    def set_claims(self, username: str, claims: dict) -> dict:
        """Replace all of the user's custom/overridden claims."""
        return self._request("PATCH", self.url(f"_test/users/{_q(username)}"), {"claims": claims})

    def update_claims(self, username: str, **claims) -> dict:
        """Merge claims into the user's claims (a value of None removes that claim)."""
        return self._request(
            "PATCH", self.url(f"_test/users/{_q(username)}"), {"merge_claims": claims}
        )

    def set_password(self, username: str, password: str) -> dict:
        return self._request(
            "PATCH", self.url(f"_test/users/{_q(username)}"), {"password": password}
        )

    def deactivate(self, username: str) -> dict:
        """Disable the account: it can no longer sign in, and its sessions, codes,
        access and refresh tokens are revoked (so a relying party's refresh fails)."""
        return self._request("POST", self.url(f"_test/users/{_q(username)}/deactivate"))

    def activate(self, username: str) -> dict:
        return self._request("PATCH", self.url(f"_test/users/{_q(username)}"), {"active": True})

    def revoke_tokens(self, username: str) -> dict:
        """Revoke the user's access and refresh tokens, keep the account."""
        return self._request("POST", self.url(f"_test/users/{_q(username)}/revoke"))

    def remove_user(self, username: str) -> dict:
        return self._request("DELETE", self.url(f"_test/users/{_q(username)}"))

    # ------------------------------------------------------------------ clients
    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        redirect_uris,
        *,
        post_logout_redirect_uris=(),
        scopes=("openid", "profile", "email"),
        require_consent: bool = False,
        jwt_alg: str = "RS256",
    ) -> dict:
        """Register a client; ``client_secret=None`` registers a public client."""
        return self._request(
            "POST",
            self.url("_test/clients"),
            {
                "client_id": client_id,
                "client_secret": client_secret or "",
                "client_type": "confidential" if client_secret else "public",
                "redirect_uris": list(redirect_uris),
                "post_logout_redirect_uris": list(post_logout_redirect_uris),
                "scopes": list(scopes),
                "require_consent": require_consent,
                "jwt_alg": jwt_alg,
            },
        )

    def update_client(self, client_id: str, **fields) -> dict:
        """Change ``client_secret``, ``redirect_uris``, ``post_logout_redirect_uris``,
        ``scopes`` or ``require_consent`` of a registered client."""
        return self._request("PATCH", self.url(f"_test/clients/{_q(client_id)}"), fields)

    # ------------------------------------------------------------------ test knobs
    def set_token_lifetime(self, access_token: int | None = None, id_token: int | None = None):
        """Seconds new access tokens / ID tokens live (running provider only)."""
        return self._request(
            "POST", self.url("_test/settings"), {"token_lifetime": access_token,
                                                 "id_token_lifetime": id_token}
        )

    def tamper_id_tokens(self, mode: str | None, claims: dict | None = None) -> dict:
        """Rewrite the ``id_token`` in token-endpoint responses from now on.

        mode: ``"signature"`` (corrupt the RS256 signature), ``"claims"`` (replace
        payload claims with ``claims``, keep the old signature), ``"alg-none"``
        (unsigned token), ``"foreign-key"`` (``claims`` applied and validly signed with
        a key that is not in the provider's JWKS), or None to stop tampering.
        """
        if mode is not None and mode not in TAMPER_MODES:
            raise ValueError(f"mode must be one of {TAMPER_MODES} or None")
        return self._request("POST", self.url("_test/tamper"), {"mode": mode,
                                                               "claims": claims or {}})

    # ------------------------------------------------------------------ internals
    def _request(self, method, url, body=None, *, auth=True):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise OIDCProviderError(
                f"{method} {url} -> {e.code}: {e.read().decode(errors='replace')[:2000]}"
            ) from None
        return json.loads(payload) if payload else None


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


# providers still running when the interpreter exits (a test run interrupted between
# __enter__ and __exit__) are stopped here, so no stray process outlives pytest
_LIVE: set = set()


@atexit.register
def _stop_all():
    for provider in list(_LIVE):
        try:
            provider.stop()
        except Exception:
            pass


# =============================================================================
# child process: the Django project, configured in code
# =============================================================================

_LOGIN_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - AIF test identity provider</title>
<style>body{font-family:sans-serif;max-width:26em;margin:4em auto}label{display:block;margin-top:1em}
input{width:100%;padding:.4em}.error{color:#b00020}button{margin-top:1.5em;padding:.5em 2em}</style>
</head><body>
<h1>AIF test identity provider</h1>
<p>Sign in with your institutional account.</p>
{% if form.errors %}<p class="error" role="alert" id="login-error">Your username and password
didn't match, or the account is disabled. Please try again.</p>{% endif %}
<form method="post" action="{{ request.path }}" id="login-form">{% csrf_token %}
<label for="id_username">Username</label>
<input type="text" name="username" id="id_username" autocomplete="username" required autofocus
 value="{{ form.username.value|default_if_none:'' }}">
<label for="id_password">Password</label>
<input type="password" name="password" id="id_password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{{ next }}">
<button type="submit" id="login-submit">Sign in</button>
</form></body></html>
"""

urlpatterns: list = []  # filled by _serve() once Django is configured (ROOT_URLCONF)
_TAMPER = {"mode": None, "claims": {}}


def _serve(state_dir: str) -> None:  # pragma: no cover - runs in the child
    import base64
    import logging
    import threading

    state = Path(state_dir)
    cfg = json.loads((state / "config.json").read_text())
    module = sys.modules[__name__]
    if cfg.get("db_template") and not (state / "db.sqlite3").exists():
        template = Path(cfg["db_template"])
        if template.exists():  # a migrated, empty database: saves ~2 s per start
            shutil.copyfile(template, state / "db.sqlite3")

    # bind first: the issuer URL contains the port, and binding port 0 here (not
    # in the parent) means there is no window in which another process can take it
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - keep access log in the file
            sys.stdout.write("%s %s\n" % (self.address_string(), format % args))

    server = ThreadedWSGIServer((cfg["host"], cfg["port"]), QuietHandler)
    server.daemon_threads = True
    port = server.server_address[1]
    site_url = f"http://{cfg['host']}:{port}"
    prefix = cfg["issuer_path"].strip("/")
    prefix_re = f"^{prefix}/" if prefix else "^"

    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS=[cfg["host"], "localhost", "127.0.0.1", "[::1]"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oidc_provider",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            f"{__name__}._tamper_middleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(state / "db.sqlite3"),
                # a throwaway database: no fsync (migrate on a fresh file takes ~3 s
                # with fsync on every migration, ~0.5 s without)
                "OPTIONS": {"timeout": 20,
                            "init_command": "PRAGMA synchronous=OFF; PRAGMA journal_mode=WAL;"},
            }
        },
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "OPTIONS": {
                    "loaders": [
                        ("django.template.loaders.locmem.Loader",
                         {"registration/login.html": _LOGIN_TEMPLATE}),
                        "django.template.loaders.app_directories.Loader",
                    ],
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                    ],
                },
            }
        ],
        USE_TZ=True,
        LOGIN_URL=f"/{prefix}/login/" if prefix else "/login/",
        # cookies are per host, not per port: the hub on the same 127.0.0.1 must not
        # see (or clobber) "sessionid"/"csrftoken" cookies of the provider
        SESSION_COOKIE_NAME="aif_test_idp_session",
        CSRF_COOKIE_NAME="aif_test_idp_csrftoken",
        # test-only: fast hashing so that adding users costs milliseconds
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        # django-oidc-provider
        SITE_URL=site_url,
        OIDC_USERINFO=f"{__name__}._userinfo",
        OIDC_EXTRA_SCOPE_CLAIMS=f"{__name__}._ExtraClaims",
        OIDC_IDTOKEN_INCLUDE_CLAIMS=bool(cfg["id_token_claims"]),
        OIDC_TOKEN_EXPIRE=int(cfg["token_lifetime"]),
        OIDC_IDTOKEN_EXPIRE=int(cfg["id_token_lifetime"]),
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"out": {"class": "logging.StreamHandler", "stream": sys.stdout}},
            "loggers": {
                "oidc_provider": {"handlers": ["out"], "level": "DEBUG"},
                "django.request": {"handlers": ["out"], "level": "WARNING"},
            },
        },
    )

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth import views as auth_views
    from django.contrib.sessions.models import Session
    from django.core.management import call_command
    from django.http import HttpResponseForbidden, JsonResponse
    from django.urls import include, re_path
    from django.views.decorators.csrf import csrf_exempt
    import jwt
    from oidc_provider import views as oidc_views
    from oidc_provider.lib.claims import ScopeClaims
    from oidc_provider.lib.endpoints.authorize import AuthorizeEndpoint
    from oidc_provider.lib.errors import AuthorizeError
    from oidc_provider.models import Client, Code, ResponseType, RSAKey, Token, UserConsent

    t0 = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    template = Path(cfg["db_template"]) if cfg.get("db_template") else None
    if template is not None and not template.exists() and not RSAKey.objects.exists():
        # first provider with this template path: save the migrated, empty database
        from django.db import connection

        template.parent.mkdir(parents=True, exist_ok=True)
        part = template.with_name(f"{template.name}.{os.getpid()}.part")
        with connection.cursor() as cur:
            cur.execute("VACUUM INTO %s", [str(part)])
        part.replace(template)
    if not RSAKey.objects.exists():
        call_command("creatersakey")  # a new signing key for every provider
    print(f"migrate+key: {time.monotonic() - t0:.2f}s", flush=True)

    User = get_user_model()
    claims_path = state / "claims.json"
    claims_lock = threading.Lock()

    def load_claims() -> dict:
        with claims_lock:
            try:
                return json.loads(claims_path.read_text())
            except FileNotFoundError:
                return {}

    def save_claims(all_claims: dict) -> None:
        with claims_lock:
            tmp = claims_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(all_claims))
            tmp.replace(claims_path)

    # --- claims served by userinfo (and the ID token) ---------------------------
    def _userinfo(claims, user):
        custom = load_claims().get(user.username, {})
        claims["preferred_username"] = user.username
        claims["email"] = user.email
        claims["email_verified"] = bool(user.email)
        full = " ".join(p for p in (user.first_name, user.last_name) if p)
        claims["name"] = full or user.username
        for key in STANDARD_CLAIMS & custom.keys():
            claims[key] = custom[key]
        return claims

    class _ExtraClaims(ScopeClaims):
        """Custom (non-standard) claims, each released when its scope is granted."""

        def create_response_dic(self):
            custom = load_claims().get(self.user.username, {})
            out = {}
            for key, value in custom.items():
                if key in STANDARD_CLAIMS:
                    continue
                needed = cfg["claim_scopes"].get(key, "openid")
                if needed in self.scopes:
                    out[key] = value
            return out

    # --- PKCE: S256 required -----------------------------------------------------
    class PKCEAuthorizeEndpoint(AuthorizeEndpoint):
        def validate_params(self):
            super().validate_params()  # client and redirect_uri are valid from here on
            if cfg["require_pkce"] and (
                not self.params["code_challenge"]
                or self.params["code_challenge_method"] != "S256"
            ):
                raise AuthorizeError(self.params["redirect_uri"], "invalid_request",
                                     self.grant_type)

    class AuthorizeView(oidc_views.AuthorizeView):
        authorize_endpoint_class = PKCEAuthorizeEndpoint

    # --- discovery: advertise what this provider really does -------------------
    provider_info = oidc_views.ProviderInfoView.as_view()

    def discovery(request):
        resp = provider_info(request)
        doc = json.loads(resp.content)
        doc["id_token_signing_alg_values_supported"] = ["RS256"]
        doc["response_types_supported"] = ["code"]  # clients here get the code flow only
        doc["code_challenge_methods_supported"] = ["S256"]
        doc["grant_types_supported"] = ["authorization_code", "refresh_token"]
        doc["response_modes_supported"] = ["query"]
        doc["scopes_supported"] = sorted({"openid", "profile", "email",
                                          *cfg["claim_scopes"].values()})
        doc["claims_supported"] = sorted(
            {"sub", "iss", "aud", "exp", "iat", "preferred_username", "name", "email",
             "email_verified", *cfg["claim_scopes"].keys()})
        out = JsonResponse(doc)
        out["Access-Control-Allow-Origin"] = "*"
        return out

    # --- test control API ------------------------------------------------------
    def admin(view):
        @csrf_exempt
        def wrapped(request, *args, **kwargs):
            if request.headers.get("Authorization") != f"Bearer {cfg['admin_token']}":
                return HttpResponseForbidden("bad test-control token")
            body = json.loads(request.body) if request.body else {}
            try:
                return view(request, body, *args, **kwargs)
            except User.DoesNotExist:
                return JsonResponse({"error": "no such user"}, status=404)
            except Client.DoesNotExist:
                return JsonResponse({"error": "no such client"}, status=404)
        return wrapped

    def user_dict(user):
        return {
            "username": user.username,
            "active": user.is_active,
            "claims": load_claims().get(user.username, {}),
            "tokens": Token.objects.filter(user=user).count(),
        }

    def revoke(user, sessions=True):
        Token.objects.filter(user=user).delete()
        Code.objects.filter(user=user).delete()
        UserConsent.objects.filter(user=user).delete()
        if sessions:
            for s in Session.objects.all():
                if s.get_decoded().get("_auth_user_id") == str(user.pk):
                    s.delete()

    @admin
    def users(request, body):
        if request.method != "POST":
            return JsonResponse({"users": [user_dict(u) for u in User.objects.all()]})
        user = User.objects.create_user(
            body["username"], email=body.get("email", ""), password=body["password"],
            first_name=body.get("given_name", ""), last_name=body.get("family_name", ""),
        )
        user.is_active = bool(body.get("active", True))
        user.save()
        all_claims = load_claims()
        all_claims[user.username] = body.get("claims") or {}
        save_claims(all_claims)
        return JsonResponse(user_dict(user), status=201)

    @admin
    def one_user(request, body, username):
        user = User.objects.get(username=username)
        if request.method == "DELETE":
            revoke(user)
            user.delete()
            all_claims = load_claims()
            all_claims.pop(username, None)
            save_claims(all_claims)
            return JsonResponse({"deleted": username})
        if request.method == "PATCH":
            all_claims = load_claims()
            if "claims" in body:
                all_claims[username] = body["claims"] or {}
            if "merge_claims" in body:
                mine = all_claims.setdefault(username, {})
                for key, value in body["merge_claims"].items():
                    if value is None:
                        mine.pop(key, None)
                    else:
                        mine[key] = value
            save_claims(all_claims)
            if "password" in body:
                user.set_password(body["password"])
            if "active" in body:
                user.is_active = bool(body["active"])
            user.save()
        return JsonResponse(user_dict(user))

    @admin
    def deactivate(request, body, username):
        user = User.objects.get(username=username)
        user.is_active = False
        user.save()
        revoke(user)
        return JsonResponse(user_dict(user))

    @admin
    def revoke_view(request, body, username):
        user = User.objects.get(username=username)
        revoke(user, sessions=False)
        return JsonResponse(user_dict(user))

    def client_dict(c):
        return {"client_id": c.client_id, "client_type": c.client_type,
                "redirect_uris": c.redirect_uris,
                "post_logout_redirect_uris": c.post_logout_redirect_uris,
                "scopes": c.scope, "require_consent": c.require_consent}

    def apply_client(c, body):
        if "client_secret" in body:
            c.client_secret = body["client_secret"] or ""
        if "client_type" in body:
            c.client_type = body["client_type"]
        if "redirect_uris" in body:
            c.redirect_uris = body["redirect_uris"]
        if "post_logout_redirect_uris" in body:
            c.post_logout_redirect_uris = body["post_logout_redirect_uris"]
        if "scopes" in body:
            c.scope = body["scopes"]
        if "require_consent" in body:
            c.require_consent = bool(body["require_consent"])
            c.reuse_consent = True
        if "jwt_alg" in body:
            c.jwt_alg = body["jwt_alg"]
        c.save()

    @admin
    def clients(request, body):
        c = Client(name=body["client_id"], client_id=body["client_id"])
        apply_client(c, body)
        c.response_types.add(ResponseType.objects.get(value="code"))
        return JsonResponse(client_dict(c), status=201)

    @admin
    def one_client(request, body, client_id):
        c = Client.objects.get(client_id=client_id)
        if request.method == "PATCH":
            apply_client(c, body)
        return JsonResponse(client_dict(c))

    @admin
    def settings_view(request, body):
        if body.get("token_lifetime") is not None:
            settings.OIDC_TOKEN_EXPIRE = int(body["token_lifetime"])
        if body.get("id_token_lifetime") is not None:
            settings.OIDC_IDTOKEN_EXPIRE = int(body["id_token_lifetime"])
        return JsonResponse({"token_lifetime": settings.OIDC_TOKEN_EXPIRE,
                             "id_token_lifetime": settings.OIDC_IDTOKEN_EXPIRE})

    @admin
    def tamper(request, body):
        _TAMPER["mode"] = body.get("mode")
        _TAMPER["claims"] = body.get("claims") or {}
        return JsonResponse(_TAMPER)

    def health(request):
        return JsonResponse({"ok": True})

    # --- ID-token tampering (a man in the middle, for relying-party tests) ------
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def unb64(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    def tamper_token(token: str) -> str:
        header_b64, payload_b64, sig_b64 = token.split(".")
        mode = _TAMPER["mode"]
        payload = json.loads(unb64(payload_b64))
        payload.update(_TAMPER["claims"])
        if mode == "signature":
            sig = bytearray(unb64(sig_b64))
            sig[len(sig) // 2] ^= 0xFF
            return f"{header_b64}.{payload_b64}.{b64(bytes(sig))}"
        if mode == "claims":
            return f"{header_b64}.{b64(json.dumps(payload).encode())}.{sig_b64}"
        if mode == "alg-none":
            header = json.loads(unb64(header_b64))
            header["alg"] = "none"
            return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."
        if mode == "foreign-key":
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            kid = json.loads(unb64(header_b64)).get("kid")
            return jwt.encode(payload, key, algorithm="RS256",
                              headers={"kid": kid} if kid else None)
        return token

    def _tamper_middleware(get_response):
        token_path = f"/{prefix}/token" if prefix else "/token"

        def middleware(request):
            response = get_response(request)
            if (_TAMPER["mode"] and request.path.rstrip("/") == token_path
                    and response.status_code == 200):
                doc = json.loads(response.content)
                if doc.get("id_token"):
                    doc["id_token"] = tamper_token(doc["id_token"])
                    response.content = json.dumps(doc).encode()
                    response["Content-Length"] = str(len(response.content))
            return response

        return middleware

    module._userinfo = _userinfo
    module._ExtraClaims = _ExtraClaims
    module._tamper_middleware = _tamper_middleware

    module.urlpatterns[:] = [
        re_path(prefix_re + r"authorize/?$", AuthorizeView.as_view(), name="authorize"),
        re_path(prefix_re + r"\.well-known/openid-configuration/?$", discovery),
        re_path(prefix_re + r"login/$", auth_views.LoginView.as_view(), name="login"),
        re_path(prefix_re + r"_test/health$", health),
        re_path(prefix_re + r"_test/users$", users),
        re_path(prefix_re + r"_test/users/(?P<username>[^/]+)$", one_user),
        re_path(prefix_re + r"_test/users/(?P<username>[^/]+)/deactivate$", deactivate),
        re_path(prefix_re + r"_test/users/(?P<username>[^/]+)/revoke$", revoke_view),
        re_path(prefix_re + r"_test/clients$", clients),
        re_path(prefix_re + r"_test/clients/(?P<client_id>[^/]+)$", one_client),
        re_path(prefix_re + r"_test/settings$", settings_view),
        re_path(prefix_re + r"_test/tamper$", tamper),
        re_path(prefix_re, include("oidc_provider.urls", namespace="oidc_provider")),
    ]

    from django.core.handlers.wsgi import WSGIHandler

    server.set_app(WSGIHandler())
    logging.getLogger("django.server").setLevel(logging.WARNING)

    def on_term(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    tmp = state / "ready.tmp"
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    tmp.replace(state / "ready.json")
    print(f"serving {site_url}/{prefix}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        sys.exit(f"usage: python -m aifactory.hub.testing.oidc_idp serve STATE_DIR")
