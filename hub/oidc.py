"""Federated login (`aif up --auth oidc`): OpenID Connect through OAuthenticator's GenericOAuthenticator.

What the stock class leaves open, and this one closes (docs/oidc.md):
- the endpoints come from the issuer's discovery document, checked (and cached, so a hub restart
  while the provider is down still works); `aif up` refuses to start on a bad issuer or secret;
- every fresh ID token is verified (RS256 over the provider's JWKS, iss, aud, exp), and userinfo's
  `sub` must be the ID token's: GenericOAuthenticator only stores it;
- the user name comes from one claim, normalised to a Unix name; a name already bound to another
  identity (or a local account) is refused, never merged;
- entitlements (`urn:geant:...:group:aif:acme#...`) or a plain `groups` claim become hub groups
  through patterns; `allowed_groups` is re-checked at every refresh, not only at login;
- provider down: a 503 page naming the provider on login, and running sessions keep their auth;
- local accounts (workshop seats, the admin) still log in on the same page;
- logout ends the provider's session too (end_session_endpoint with id_token_hint).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from inspect import isawaitable
from pathlib import Path

import jwt
import requests
from jupyterhub.handlers.login import LogoutHandler
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler, OAuthLogoutHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.httputil import url_concat
from traitlets import Bool, Float, Int, List, Unicode, default, validate

from ..common.envvars import STATE_DIR
from ..common.errors import AIFError
from ..common.files import replace_private
from .auth import UsersFile
from .unix_accounts import NAME_RE, AccountError, check_name

#: urn:geant:<namespace>:group:aif:<project>[:<subgroup>...][#<authority>] (MyAccessID, AARC G002)
DEFAULT_ENTITLEMENT_PATTERN = (
    r"^urn:geant:[^:#]+:group:aif:(?P<group>[A-Za-z0-9][A-Za-z0-9_.-]*(?::[A-Za-z0-9_.-]+)*)(?:#.*)?$"
)
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: discovery fields the hub cannot work without
REQUIRED_DISCOVERY = ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")

# short reasons: JupyterHub's error page shows the reason as heading, the message below it
DOWN = "Sign-in service unavailable"
FAILED = "Sign-in failed"
REFUSED = "Sign-in refused"


class OIDCConfigError(AIFError):
    """A federated-login setting is wrong; the message names the setting and what to do."""


# --- discovery and the start-up checks -----------------------------------------------------------

def discovery_url(issuer):
    return issuer.rstrip("/") + DISCOVERY_PATH


def discover(issuer, timeout=10.0, verify=True):
    """The issuer's checked discovery document; OIDCConfigError naming `issuer_url` otherwise."""
    url = discovery_url(issuer)
    try:
        response = requests.get(url, timeout=timeout, verify=verify)
    except requests.RequestException as err:
        raise OIDCConfigError(f"AIFOIDCAuthenticator.issuer_url: the discovery document {url} does not answer "
                              f"({type(err).__name__}): check the issuer URL and that the provider is up") from None
    try:
        doc = response.json() if response.ok else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise OIDCConfigError(f"AIFOIDCAuthenticator.issuer_url: {url} is not an OpenID Connect discovery document "
                              f"(HTTP {response.status_code}, {response.headers.get('Content-Type', 'no type')})")
    missing = [key for key in REQUIRED_DISCOVERY if not doc.get(key)]
    if missing:
        raise OIDCConfigError(f"AIFOIDCAuthenticator.issuer_url: {url} is not an OpenID Connect discovery document "
                              f"(no {', '.join(missing)})")
    if doc["issuer"].rstrip("/") != issuer.rstrip("/"):
        raise OIDCConfigError(f"AIFOIDCAuthenticator.issuer_url: {issuer} is not the issuer its discovery document "
                              f"names ({doc['issuer']}): use exactly that URL")
    return doc


def check_client(doc, client_id, client_secret, redirect_uri, timeout=10.0, verify=True):
    """Ask the token endpoint whether it accepts the client: a made-up code is refused as
    `invalid_grant` once the client is authenticated, as `invalid_client` (401) before."""
    data = {"grant_type": "authorization_code", "code": "aif-startup-check", "redirect_uri": redirect_uri,
            "client_id": client_id, "client_secret": client_secret, "code_verifier": "x" * 43}
    try:
        response = requests.post(doc["token_endpoint"], data=data, timeout=timeout, verify=verify)
    except requests.RequestException as err:
        raise OIDCConfigError(f"the provider's token endpoint {doc['token_endpoint']} does not answer "
                              f"({type(err).__name__})") from None
    try:
        error = response.json().get("error", "")
    except ValueError:
        error = ""
    if error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
        raise OIDCConfigError(
            f"the provider refuses the client (token endpoint: {error or response.status_code}): check "
            f"AIFOIDCAuthenticator.client_id ({client_id!r}), the secret in AIFOIDCAuthenticator.client_secret_file, "
            f"and that the provider has {redirect_uri} registered as this client's redirect URI")


def read_secret_file(path):
    """The client secret from a file only its owner can read."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except OSError as err:
        raise OIDCConfigError(f"AIFOIDCAuthenticator.client_secret_file: cannot read {path} ({err.strerror})") from None
    if mode & 0o077:
        raise OIDCConfigError(f"AIFOIDCAuthenticator.client_secret_file: {path} is readable by others "
                              f"(mode {mode & 0o777:o}): chmod 600 {path}")
    if not secret:
        raise OIDCConfigError(f"AIFOIDCAuthenticator.client_secret_file: {path} is empty")
    return secret


# --- claims -> hub groups and user names ---------------------------------------------------------

class EntitlementGroups:
    """Claim values (entitlement URNs, or plain group names) -> hub group names.

    A value matching one of `patterns` yields its `group` part, lower-cased, with ':' (sub-groups)
    turned into '-'; values matching none are ignored (a person's other memberships at the
    institution never become hub groups), and so are names that cannot be a Unix group.
    """

    def __init__(self, patterns, log=None):
        self.patterns = [re.compile(p) for p in patterns]
        self.log = log

    def __call__(self, values):
        if isinstance(values, str):
            values = [values]
        groups = set()
        for value in values or ():
            for pattern in self.patterns:
                match = pattern.match(str(value))
                if match:
                    name = match.group("group").replace(":", "-").lower()
                    if NAME_RE.match(name):
                        groups.add(name)
                    elif self.log:
                        self.log.warning("entitlement %r maps to %r, not a valid group name: ignored", value, name)
                    break
        return groups


def unix_name(value, strip_domain=False):
    """The Unix user name for a claim value: lower case, '.' and other characters to '-'."""
    name = str(value).strip().lower()
    if strip_domain and "@" in name:
        name = name.split("@", 1)[0]
    return re.sub(r"[^a-z0-9_-]+", "-", name).strip("-")


class IdentityBook:
    """Which identity (issuer + subject) owns which hub name, in a 0600 JSON file.

    The first login binds the name; a second identity normalising to the same name is refused.
    """

    def __init__(self, path):
        self.file = UsersFile(path)  # same atomic, locked JSON file

    def owner(self, name):
        return self.file.read().get(name)

    def bind(self, name, identity):
        with self.file.editing() as book:
            if book.get(name, identity) != identity:
                return False
            book[name] = identity
        return True

    def unbind(self, name):
        """Release `name` (`aif user unbind`); returns the identity it was bound to, or None."""
        with self.file.editing() as book:
            return book.pop(name, None)


def _provider_error(err):
    """'error: description' of an OAuth error response, else None."""
    if isinstance(err, HTTPClientError) and err.response is not None and err.code != 599:
        try:
            body = json.loads(err.response.body)
        except ValueError:
            return f"HTTP {err.code}"
        error = body.get("error", f"HTTP {err.code}")
        return f"{error}: {body['error_description']}" if body.get("error_description") else error
    return None


def _unreachable(err):
    return isinstance(err, OSError) or (isinstance(err, HTTPClientError) and err.code == 599)


# --- handlers ------------------------------------------------------------------------------------

class AIFOIDCLoginHandler(OAuthLoginHandler):
    """Probe the provider before sending the browser there: a 503 page instead of the browser's
    own connection error when it is down."""

    async def get(self):
        auth = self.authenticator
        try:
            await auth.httpfetch(discovery_url(auth.issuer_url), "checking the identity provider", parse_json=False,
                                 request_timeout=auth.provider_check_timeout,
                                 connect_timeout=auth.provider_check_timeout, validate_cert=auth.validate_server_cert)
        except Exception as err:
            if _unreachable(err) or (isinstance(err, HTTPClientError) and err.code >= 500):
                self.log.warning("identity provider %s unreachable: %s", auth.issuer_url, err)
                raise web.HTTPError(503, auth.provider_down_text(), reason=DOWN) from None
            raise
        return super().get()


class AIFOIDCLogoutHandler(OAuthLogoutHandler):
    """End the provider's session too (id_token_hint), and come back to the hub's login page."""

    _id_token = None
    _local = False

    async def handle_logout(self):
        await super().handle_logout()
        user = self.current_user  # still set here; cleared just before render
        if user is not None:
            auth_state = await user.get_auth_state() or {}
            self._id_token = auth_state.get("id_token")
            self._local = bool(auth_state.get("local_account"))

    async def render_logout_page(self):
        auth = self.authenticator
        if self._local or not auth.logout_redirect_url:
            return await LogoutHandler.render_logout_page(self)  # nothing to end at the provider
        if self._id_token:
            params = {"id_token_hint": self._id_token}
            if auth.post_logout_redirect_uri:
                params["post_logout_redirect_uri"] = auth.post_logout_redirect_uri
            return self.redirect(url_concat(auth.logout_redirect_url, params))
        return await super().render_logout_page()


LOGIN_HTML = """
<div class="service-login text-center">
  <a role="button" id="oidc_login" class="btn btn-jupyter btn-lg"
     href="{{ authenticator_login_url }}">Sign in with {{ authenticator.login_service | e }}</a>
</div>
{% if authenticator.local_accounts %}
<details id="local-login" class="auth-form-body m-auto mt-4" style="max-width: 24em"
  {% if login_error %}open{% endif %}>
  <summary>Workshop seat or local account</summary>
  <form action="{{ login_url }}?next={{ next }}" method="post" role="form">
    {% if login_error %}<p class="login_error">{{ login_error | e }}</p>{% endif %}
    <input type="hidden" name="_xsrf" value="{{ xsrf }}"/>
    <label for="username_input">Username:</label>
    <input id="username_input" type="text" autocapitalize="off" autocorrect="off" autocomplete="username"
      class="form-control" name="username" value="{{ (username or '') | e }}"/>
    <label for="password_input">Password:</label>
    <input id="password_input" type="password" class="form-control" autocomplete="current-password"
      name="password"/>
    <input id="login_submit" type="submit" class="btn btn-jupyter form-control mt-2" value="Sign in"/>
  </form>
</details>
{% endif %}
"""


# --- the authenticator ---------------------------------------------------------------------------

class AIFOIDCAuthenticator(GenericOAuthenticator):
    """OpenID Connect login with the site's identity provider, beside the platform's local accounts."""

    login_handler = AIFOIDCLoginHandler
    logout_handler = AIFOIDCLogoutHandler

    issuer_url = Unicode(
        help="""The provider's issuer, e.g. https://proxy.myaccessid.org or
        https://sso.example.eu/realms/hpc. The endpoints come from its discovery document
        (<issuer>/.well-known/openid-configuration). Required.""",
    ).tag(config=True)

    client_secret_file = Unicode(
        help="""File holding the client secret the provider issued (mode 0600; read at start).""",
    ).tag(config=True)

    username_strip_domain = Bool(
        False,
        help="""Drop an '@domain' suffix of the user-name claim (alice@uni.example -> alice). Only
        where one home organisation's names are used: names from two organisations may collide
        (a collision is refused, never merged).""",
    ).tag(config=True)

    groups_claim = Unicode(
        "eduperson_entitlement",
        help="""Userinfo claim carrying the memberships: 'eduperson_entitlement' (MyAccessID, eduGAIN)
        or 'groups' (Keycloak's group mapper).""",
    ).tag(config=True)

    entitlement_patterns = List(
        Unicode(), [DEFAULT_ENTITLEMENT_PATTERN],
        help="""Regular expressions over the values of `groups_claim`, each with a named group
        `(?P<group>...)`: the hub group (project) a matching value gives. Values matching none are
        ignored. Keycloak groups: r'^/aif/(?P<group>[^/]+)$'. Admins: map an entitlement to a group
        and name it in `admin_groups`.""",
    ).tag(config=True)

    @validate("entitlement_patterns")
    def _check_patterns(self, proposal):
        for pattern in proposal.value:
            try:
                compiled = re.compile(pattern)
            except re.error as err:
                raise OIDCConfigError(f"AIFOIDCAuthenticator.entitlement_patterns: {pattern!r} is not a regular "
                                      f"expression ({err})") from None
            if "group" not in compiled.groupindex:
                raise OIDCConfigError(f"AIFOIDCAuthenticator.entitlement_patterns: {pattern!r} has no named group "
                                      "(?P<group>...) saying which hub group it gives")
        return proposal.value

    local_accounts = Bool(
        True,
        help="""Also offer the platform's local accounts (the admin, workshop seats) on the login page.""",
    ).tag(config=True)

    users_file = Unicode(help="Local accounts (`aif user add`). Default: <state_dir>/users.json.").tag(config=True)

    @default("users_file")
    def _default_users_file(self):
        return os.path.join(STATE_DIR.get("."), "users.json")

    identities_file = Unicode(
        help="""Which identity (issuer, subject) owns which hub name. Default: <state_dir>/oidc-identities.json.""",
    ).tag(config=True)

    @default("identities_file")
    def _default_identities_file(self):
        return os.path.join(STATE_DIR.get("."), "oidc-identities.json")

    discovery_cache = Unicode(
        help="""Last good discovery document, used when the provider is down at hub start.
        Default: <state_dir>/oidc-discovery.json.""",
    ).tag(config=True)

    @default("discovery_cache")
    def _default_discovery_cache(self):
        return os.path.join(STATE_DIR.get("."), "oidc-discovery.json")

    id_token_algorithms = List(Unicode(), ["RS256"], help="Signature algorithms accepted for ID tokens.").tag(config=True)
    id_token_leeway = Int(30, help="Seconds of clock skew allowed on exp/iat.").tag(config=True)
    jwks_cache_seconds = Int(600, help="How long the provider's keys are reused (refetched on an unknown kid).").tag(
        config=True)
    provider_check_timeout = Float(3.0, help="Seconds the login page waits for the provider.").tag(config=True)
    keep_auth_when_provider_down = Bool(
        True,
        help="""When a refresh cannot reach the provider, keep the user's current auth (running
        sessions keep working, and the last good memberships stand) instead of logging them out.""",
    ).tag(config=True)
    post_logout_redirect_uri = Unicode(
        help="""Where the provider sends the browser after ending its session (register it with
        the provider). Default: the hub's login page, from oauth_callback_url.""",
    ).tag(config=True)

    @default("post_logout_redirect_uri")
    def _default_post_logout(self):
        return self.oauth_callback_url.replace("/oauth_callback", "/login") if self.oauth_callback_url else ""

    # defaults the platform wants, unlike GenericOAuthenticator's
    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("enable_auth_state")
    def _default_enable_auth_state(self):
        return True

    @default("username_claim")
    def _default_username_claim(self):
        return "preferred_username"

    @default("scope")
    def _default_scope(self):
        return ["openid", "profile", "email"]

    @default("login_service")
    def _default_login_service(self):
        return "your institution"

    @default("custom_html")
    def _default_custom_html(self):
        return LOGIN_HTML

    @default("custom_403_message")
    def _default_403(self):
        return ("Your account is not entitled to this AI Factory: none of your memberships at the identity "
                "provider is one of this platform's projects. Ask your project's manager to add you.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.client_secret_file and not self.client_secret:
            self.client_secret = read_secret_file(self.client_secret_file)
        self.discovery = self._load_discovery() if self.issuer_url else {}
        for trait, key in (("authorize_url", "authorization_endpoint"), ("token_url", "token_endpoint"),
                           ("userdata_url", "userinfo_endpoint"), ("logout_redirect_url", "end_session_endpoint")):
            if not getattr(self, trait) and self.discovery.get(key):
                setattr(self, trait, self.discovery[key])
        self.entitlements = EntitlementGroups(self.entitlement_patterns, self.log)
        self._jwks, self._jwks_at = None, 0.0

    def _load_discovery(self):
        """Discovery from the provider (and cached), else the cached copy when it is down."""
        cache = Path(self.discovery_cache)
        try:
            doc = discover(self.issuer_url, verify=self.validate_server_cert)
        except OIDCConfigError as err:
            try:
                doc = json.loads(cache.read_text())
            except (OSError, ValueError):
                raise err from None
            if not isinstance(doc, dict) or doc.get("issuer", "").rstrip("/") != self.issuer_url.rstrip("/"):
                raise err from None
            self.log.warning("identity provider %s not answering: using the cached discovery document %s",
                             self.issuer_url, cache)
            return doc
        try:
            replace_private(cache, json.dumps(doc, indent=1))
        except OSError as err:
            self.log.warning("could not cache the discovery document in %s: %s", cache, err)
        return doc

    def provider_down_text(self):
        return (f"The sign-in service ({self.login_service}, {self.issuer_url}) cannot be reached right now. "
                "Sessions already running keep running; please try signing in again in a few minutes, "
                "and contact support if this persists.")

    # --- start-up checks (aif up, before anything starts) ---

    def check_settings(self):
        """Every setting a login needs, checked against the provider; OIDCConfigError naming the first wrong one."""
        for trait in ("issuer_url", "client_id"):
            if not getattr(self, trait):
                raise OIDCConfigError(f"AIFOIDCAuthenticator.{trait} is not set (aif up --auth oidc needs "
                                      f"--oidc-{trait.split('_')[0]} or c.AIFOIDCAuthenticator.{trait})")
        if not self.client_secret:
            raise OIDCConfigError("AIFOIDCAuthenticator.client_secret_file is not set: the file holding the "
                                  "client secret the provider issued (mode 0600)")
        if not (self.allowed_groups or self.allow_all or self.allowed_users):
            raise OIDCConfigError("AIFOIDCAuthenticator.allowed_groups is empty, so nobody could sign in: name the "
                                  "hub groups (projects) whose members may, or set allow_all = True")
        if not self.enable_auth_state:
            raise OIDCConfigError("AIFOIDCAuthenticator.enable_auth_state is False: refresh, group sync and "
                                  "logout need the provider's tokens kept (encrypted) in auth_state")
        if not self.oauth_callback_url:
            raise OIDCConfigError("AIFOIDCAuthenticator.oauth_callback_url is not set")
        doc = discover(self.issuer_url, verify=self.validate_server_cert)
        check_client(doc, self.client_id, self.client_secret, self.oauth_callback_url, verify=self.validate_server_cert)
        return doc

    # --- ID tokens ---

    async def _get_jwks(self, refresh=False):
        if refresh or self._jwks is None or time.monotonic() - self._jwks_at > self.jwks_cache_seconds:
            self._jwks = await self.httpfetch(self.discovery["jwks_uri"], "fetching the provider's keys",
                                              validate_cert=self.validate_server_cert)
            self._jwks_at = time.monotonic()
        return self._jwks

    async def verified_id_token(self, id_token):
        """The ID token's claims once signature, iss, aud, exp and iat check out; jwt.PyJWTError otherwise."""
        header = jwt.get_unverified_header(id_token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.id_token_algorithms:
            raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} not accepted")
        for refresh in (False, True):  # one refetch: the provider may have rotated its key
            keys = [k for k in (await self._get_jwks(refresh)).get("keys", []) if kid is None or k.get("kid") == kid]
            if keys:
                break
        else:
            raise jwt.InvalidKeyError(f"no key {kid!r} in the provider's JWKS")
        error = None
        for jwk in keys:
            try:
                return jwt.decode(id_token, jwt.PyJWK(jwk, algorithm=alg).key, algorithms=[alg],
                                  audience=self.client_id, issuer=self.discovery["issuer"],
                                  leeway=self.id_token_leeway,
                                  options={"require": ["iss", "aud", "exp", "iat", "sub"]})
            except jwt.PyJWTError as err:
                error = err
        raise error

    async def get_token_info(self, handler, params):
        try:
            token_info = await super().get_token_info(handler, params)
        except Exception as err:
            if params.get("grant_type") == "refresh_token":
                raise  # refresh_user decides
            if _unreachable(err):
                self.log.error("identity provider unreachable at the token endpoint: %s", err)
                raise web.HTTPError(503, self.provider_down_text(), reason=DOWN) from None
            refused = _provider_error(err)
            if refused is None:
                raise
            self.log.error("token endpoint refused the code exchange: %s", refused)
            if refused.startswith(("invalid_grant", "access_denied")):
                raise web.HTTPError(403, f"The sign-in could not be completed ({refused}). Please sign in again.",
                                    reason=FAILED) from None
            raise web.HTTPError(502, f"The identity provider refused this platform's client ({refused}): "
                                "AIFOIDCAuthenticator.client_id / client_secret_file do not match what the provider "
                                "registered. This is a configuration problem on our side; please contact support.",
                                reason=FAILED) from None
        id_token = token_info.get("id_token")
        if not id_token:
            raise web.HTTPError(403, "Sign-in refused: the identity provider sent no ID token (is 'openid' in "
                                "AIFOIDCAuthenticator.scope?).", reason=REFUSED)
        try:
            token_info["id_token_claims"] = await self.verified_id_token(id_token)
        except jwt.PyJWTError as err:
            self.log.error("ID token rejected: %s", err)
            raise web.HTTPError(403, "Sign-in refused: the identity provider's ID token failed verification "
                                f"({type(err).__name__}: {err}).", reason=REFUSED) from None
        return token_info

    async def token_to_user(self, token_info):
        try:
            user_info = await super().token_to_user(token_info)
        except Exception as err:
            if _unreachable(err):
                raise web.HTTPError(503, self.provider_down_text(), reason=DOWN) from None
            raise
        claims = token_info.get("id_token_claims")
        if claims and user_info.get("sub") != claims.get("sub"):
            raise web.HTTPError(403, "Sign-in refused: userinfo and the ID token name different subjects.",
                                reason=REFUSED)
        return user_info

    # --- names and groups ---

    def user_info_to_username(self, user_info):
        claim = self.username_claim
        value = user_info.get(claim) if isinstance(claim, str) else claim(user_info)
        if not value or not isinstance(value, str):
            raise web.HTTPError(403, f"Sign-in refused: the identity provider sent no '{claim}' claim, which "
                                "this platform uses as the user name (AIFOIDCAuthenticator.username_claim). "
                                "Ask support to check the scopes and claims released to it.", reason=REFUSED)
        name = unix_name(value, self.username_strip_domain)
        try:
            return check_name(name)
        except AccountError as err:
            raise web.HTTPError(403, f"Sign-in refused: the '{claim}' claim {value!r} gives no valid Unix user "
                                f"name ({err}). Ask support to map your account (AIFOIDCAuthenticator.username_claim).",
                                reason=REFUSED) from None

    def get_user_groups(self, auth_state):
        return self.entitlements((auth_state.get(self.user_auth_state_key) or {}).get(self.groups_claim))

    def _identity(self, auth_model):
        user_info = (auth_model.get("auth_state") or {}).get(self.user_auth_state_key) or {}
        return f"{self.discovery['issuer']} {user_info.get('sub')}"

    def _check_name_is_ours(self, auth_model):
        """Refuse a name held by a local account or bound to another identity: never merge two people."""
        name = auth_model["name"]
        claim = self.username_claim if isinstance(self.username_claim, str) else "user name"
        if name in UsersFile(self.users_file).read():
            raise web.HTTPError(403, f"Sign-in refused: your '{claim}' gives the user name '{name}', which is a "
                                "local account of this platform. Ask support to resolve it.", reason=REFUSED)
        owner = IdentityBook(self.identities_file).owner(name)
        if owner and owner != self._identity(auth_model):
            raise web.HTTPError(403, f"Sign-in refused: the user name '{name}' (from your '{claim}' claim) already "
                                "belongs to another identity at the provider; two accounts are never merged. Ask "
                                "support to resolve it.", reason=REFUSED)

    # --- login, refresh ---

    async def authenticate(self, handler, data=None, **kwargs):
        if data and "username" in data:  # the local-account form of the login page
            return self._authenticate_local(data)
        auth_model = await super().authenticate(handler, data, **kwargs)
        self._check_name_is_ours(auth_model)
        return auth_model

    def _authenticate_local(self, data):
        if not self.local_accounts:
            return None
        name = self.normalize_username(data.get("username", ""))
        record = UsersFile(self.users_file).check(name, data.get("password", ""))
        if record is None:
            self.log.warning("Failed local login for %s", name or "<empty>")
            return None
        return {"name": name, "admin": record.get("admin", False), "groups": record.get("groups", []),
                "auth_state": {"local_account": True}}

    async def check_allowed(self, username, auth_model):
        if auth_model and (auth_model.get("auth_state") or {}).get("local_account"):
            return True  # the users file is the allow list of local accounts
        return await super().check_allowed(username, auth_model)

    async def run_post_auth_hook(self, handler, auth_model):
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        if auth_model and not (auth_model.get("auth_state") or {}).get("local_account"):
            # bound only now that the login is allowed: a refused login leaves nothing behind
            if not IdentityBook(self.identities_file).bind(auth_model["name"], self._identity(auth_model)):
                raise web.HTTPError(403, f"Sign-in refused: the user name '{auth_model['name']}' already belongs "
                                    "to another identity at the provider.", reason=REFUSED)
        return auth_model

    async def refresh_user(self, user, handler=None, **kwargs):
        # JupyterHub 6.1.1 BaseHandler.refresh_auth reads handler._token_authenticated, only ever set
        # for token requests: a failed refresh on a cookie request gives an AttributeError (500 at
        # spawn instead of "auth has expired"). Give it its intended default.
        if handler is not None and not hasattr(handler, "_token_authenticated"):
            handler._token_authenticated = False
        auth_state = await user.get_auth_state() or {}
        if auth_state.get("local_account") or (not auth_state and self._is_local(user.name)):
            # a local account (also one made through the API that only ever used a token): valid
            # while its record is; a seat that was removed or has expired must log in again (and cannot)
            return self._local_valid(user.name)
        if IdentityBook(self.identities_file).owner(user.name) != self._identity({"auth_state": auth_state}):
            # released by `aif user unbind` (or taken by the identity it was given to): log in again
            self.log.warning("%s is no longer bound to this identity: login required", user.name)
            return False
        try:
            refreshed = await super().refresh_user(user, handler, **kwargs)
        except Exception as err:
            if self.keep_auth_when_provider_down and (_unreachable(err) or getattr(err, "status_code", 0) == 503):
                self.log.warning("identity provider unreachable refreshing %s: keeping the current auth", user.name)
                return True
            raise
        if isinstance(refreshed, dict):
            # JupyterHub checks allowed_groups at login only: without this a user whose last
            # entitlement was withdrawn keeps the hub (and spawning) until the cookie expires
            allowed = self.check_allowed(user.name, refreshed)
            if isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                self.log.warning("%s is no longer allowed (groups %s): login required", user.name,
                                 refreshed.get("groups"))
                return False
        return refreshed

    def _is_local(self, name):
        return self.local_accounts and name in UsersFile(self.users_file).read()

    def _local_valid(self, name):
        record = UsersFile(self.users_file).read().get(name) if self.local_accounts else None
        if record is None:
            return False
        expires = record.get("expires")
        return not expires or datetime.datetime.fromisoformat(expires) > datetime.datetime.now(datetime.timezone.utc)
