"""Self-tests of the OIDCProvider fixture, speaking the protocol over plain HTTP.

They pin down that the provider is a real OpenID Connect implementation (what a
relying party sees), independently of JupyterHub.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import jwt
import pytest
import requests

from aifactory.hub.testing.oidc_idp import OIDCProvider, OIDCProviderError

REDIRECT = "http://127.0.0.1:9/cb"  # never contacted: redirects are not followed
ENT = "urn:geant:example.eu:group:aif:acme#idp.example.eu"


class _Form(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""


def pkce():
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize(s, idp, *, username="alice", password="pw", scope="openid profile email",
              challenge=None, method="S256", client_id="rp", redirect_uri=REDIRECT):
    """Drive the browser part of the code flow with a requests session; return the
    query of the final redirect to redirect_uri (code/state or error)."""
    disco = idp.discovery()
    params = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
              "scope": scope, "state": "st4te"}
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method=method)
    r = s.get(disco["authorization_endpoint"], params=params, allow_redirects=False)
    if r.status_code == 302 and r.headers["Location"].startswith(redirect_uri):
        return parse_qs(urlparse(r.headers["Location"]).query)
    assert r.status_code == 302, r.text[:500]
    login_url = urljoin(r.url, r.headers["Location"])
    page = s.get(login_url)
    assert page.status_code == 200 and "<form" in page.text
    form = _Form()
    form.feed(page.text)
    assert {"username", "password", "csrfmiddlewaretoken"} <= form.fields.keys()
    form.fields.update(username=username, password=password)
    r = s.post(urljoin(page.url, form.action), data=form.fields, allow_redirects=False)
    if r.status_code == 200:  # login form shown again with an error
        return {"login_error": [r.text]}
    assert r.status_code == 302, r.text[:500]
    r = s.get(urljoin(r.url, r.headers["Location"]), allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith(redirect_uri), r.text[:500]
    return parse_qs(urlparse(r.headers["Location"]).query)


def token(idp, data, secret="rp-secret"):
    return requests.post(idp.discovery()["token_endpoint"],
                         data={"client_id": "rp", "client_secret": secret, **data})


@pytest.fixture
def idp(oidc_provider):
    oidc_provider.add_client("rp", "rp-secret", [REDIRECT],
                             post_logout_redirect_uris=["http://127.0.0.1:9/bye"],
                             scopes=["openid", "profile", "email", "eduperson_entitlement"])
    oidc_provider.add_user("alice", "pw", claims={"eduperson_entitlement": [ENT],
                                                  "groups": ["staff"]})
    return oidc_provider


def login_tokens(idp, scope="openid profile email eduperson_entitlement"):
    verifier, challenge = pkce()
    with requests.Session() as s:
        q = authorize(s, idp, challenge=challenge, scope=scope)
    assert q["state"] == ["st4te"]
    r = token(idp, {"grant_type": "authorization_code", "code": q["code"][0],
                    "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    return r.json()


def verify(idp, id_token):
    jwks = jwt.PyJWKClient(idp.discovery()["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(id_token)
    return jwt.decode(id_token, key.key, algorithms=["RS256"], audience="rp",
                      issuer=idp.issuer)


def test_startup_and_discovery(oidc_provider):
    idp = oidc_provider
    assert idp.startup_seconds < 10
    d = idp.discovery()
    assert d["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}/realms/aif"
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint",
                "jwks_uri", "end_session_endpoint"):
        assert d[key].startswith(idp.issuer + "/"), key
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert d["id_token_signing_alg_values_supported"] == ["RS256"]
    (k,) = idp.jwks()["keys"]
    assert k["kty"] == "RSA" and k["alg"] == "RS256" and k["kid"]


def test_code_flow_pkce_signed_id_token_userinfo(idp):
    tok = login_tokens(idp)
    assert tok["refresh_token"] and tok["access_token"]
    claims = verify(idp, tok["id_token"])  # RS256 over the provider's JWKS
    assert claims["preferred_username"] == "alice"
    assert claims["eduperson_entitlement"] == [ENT]
    info = requests.get(idp.discovery()["userinfo_endpoint"],
                        headers={"Authorization": f"Bearer {tok['access_token']}"}).json()
    assert info["preferred_username"] == "alice"
    assert info["email"] == "alice@example.org"
    assert info["eduperson_entitlement"] == [ENT]
    assert info["groups"] == ["staff"]  # not scope-bound: released with openid


def test_custom_claim_needs_its_scope(idp):
    tok = login_tokens(idp, scope="openid profile")
    info = requests.get(idp.discovery()["userinfo_endpoint"],
                        headers={"Authorization": f"Bearer {tok['access_token']}"}).json()
    assert "eduperson_entitlement" not in info and "email" not in info


def test_pkce_is_required_and_checked(idp):
    with requests.Session() as s:
        q = authorize(s, idp, challenge=None)
    assert q["error"] == ["invalid_request"]
    with requests.Session() as s:
        q = authorize(s, idp, challenge="x" * 43, method="plain")
    assert q["error"] == ["invalid_request"]
    _, challenge = pkce()
    with requests.Session() as s:
        q = authorize(s, idp, challenge=challenge)
    r = token(idp, {"grant_type": "authorization_code", "code": q["code"][0],
                    "redirect_uri": REDIRECT, "code_verifier": pkce()[0]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_client_secret_and_redirect_uri_checked(idp):
    verifier, challenge = pkce()
    with requests.Session() as s:
        q = authorize(s, idp, challenge=challenge)
    r = token(idp, {"grant_type": "authorization_code", "code": q["code"][0],
                    "redirect_uri": REDIRECT, "code_verifier": verifier}, secret="wrong")
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    with requests.Session() as s:
        r = s.get(idp.discovery()["authorization_endpoint"], allow_redirects=False,
                  params={"client_id": "rp", "redirect_uri": "http://evil.example/cb",
                          "response_type": "code", "scope": "openid"})
    assert r.status_code == 200 and "Location" not in r.headers  # error page, no redirect
    assert "redirect" in r.text.lower()


def test_wrong_password_shows_login_error(idp):
    with requests.Session() as s:
        q = authorize(s, idp, password="nope", challenge=pkce()[1])
    assert "didn&#x27;t match" in q["login_error"][0] or "didn't match" in q["login_error"][0]


def test_refresh_then_deactivate(idp):
    tok = login_tokens(idp)
    r = token(idp, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["access_token"] != tok["access_token"]
    assert verify(idp, new["id_token"])["preferred_username"] == "alice"
    assert idp.user("alice")["tokens"] == 1
    idp.deactivate("alice")
    assert idp.user("alice") == {"username": "alice", "active": False, "tokens": 0,
                                 "claims": {"eduperson_entitlement": [ENT],
                                            "groups": ["staff"]}}
    r = token(idp, {"grant_type": "refresh_token", "refresh_token": new["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = requests.get(idp.discovery()["userinfo_endpoint"],
                     headers={"Authorization": f"Bearer {new['access_token']}"})
    assert r.status_code == 401
    with requests.Session() as s:
        q = authorize(s, idp, challenge=pkce()[1])
    assert "login_error" in q


def test_claims_changes_are_served(idp):
    idp.update_claims("alice", eduperson_entitlement=[], groups=None)
    tok = login_tokens(idp)
    info = requests.get(idp.discovery()["userinfo_endpoint"],
                        headers={"Authorization": f"Bearer {tok['access_token']}"}).json()
    assert info["eduperson_entitlement"] == [] or "eduperson_entitlement" not in info
    assert "groups" not in info


def test_end_session(idp):
    tok = login_tokens(idp)
    end = idp.discovery()["end_session_endpoint"]
    r = requests.get(end, params={"id_token_hint": tok["id_token"],
                                  "post_logout_redirect_uri": "http://127.0.0.1:9/bye",
                                  "state": "s1"}, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "http://127.0.0.1:9/bye?state=s1"


@pytest.mark.parametrize("mode", ["signature", "claims", "alg-none", "foreign-key"])
def test_tampered_id_tokens_fail_verification(idp, mode):
    idp.tamper_id_tokens(mode, claims={"preferred_username": "mallory"})
    tok = login_tokens(idp)
    with pytest.raises(jwt.PyJWTError):
        verify(idp, tok["id_token"])
    idp.tamper_id_tokens(None)
    assert verify(idp, login_tokens(idp)["id_token"])["preferred_username"] == "alice"


def test_restart_keeps_state_and_issuer(idp):
    issuer, kid = idp.issuer, idp.jwks()["keys"][0]["kid"]
    pid = idp.pid
    idp.stop()
    assert not idp.running
    with pytest.raises(OSError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(idp.discovery_url, timeout=2)
    idp.start()
    assert idp.issuer == issuer and idp.jwks()["keys"][0]["kid"] == kid
    assert idp.user("alice")["active"]
    login_tokens(idp)


def test_control_api_needs_its_token(idp):
    r = requests.get(idp.url("_test/users"))
    assert r.status_code == 403


def test_start_failure_is_reported(tmp_path):
    bad = OIDCProvider(tmp_path, python="/bin/false")
    with pytest.raises(OIDCProviderError, match="exited"):
        bad.start()
    bad.close()
