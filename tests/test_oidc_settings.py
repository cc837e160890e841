"""`aif up --auth oidc` refuses bad settings before anything starts, naming the setting.

Against a real provider (django-oidc-provider on loopback): a discovery URL that does not answer
or is not OpenID Connect, a client secret the provider rejects, a secret file others can read,
no allowed groups, a pattern without its group. Each start fails with one error and leaves no
account, runtime file, key or process behind. Also the claim mappings on their own.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aifactory.common.net import free_port, port_is_free
from aifactory.hub.oidc import DEFAULT_ENTITLEMENT_PATTERN, EntitlementGroups, unix_name
from aifactory.hub.platform import Platform, PlatformError

CLIENT_ID = "aif-lab"
SECRET = "right-secret"
AIF = str(Path(sys.executable).with_name("aif"))


@pytest.fixture
def idp(oidc_provider):
    oidc_provider.add_client(CLIENT_ID, SECRET, ["http://127.0.0.1:9/hub/oauth_callback"])
    return oidc_provider


def secret_file(tmp_path, text=SECRET, mode=0o600):
    path = tmp_path / "client-secret"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def start_fails(tmp_path, oidc, extra_config='c.AIFOIDCAuthenticator.allowed_groups = {"acme"}\n', idp=None,
                register=True):
    state = tmp_path / "state"
    port = free_port()
    if idp is not None and register:  # the client is registered with this platform's redirect URI
        idp.update_client(CLIENT_ID, redirect_uris=[f"http://127.0.0.1:{port}/hub/oauth_callback"])
    platform = Platform(state, port=port, auth="oidc", oidc=oidc, extra_config=extra_config)
    with pytest.raises(PlatformError) as err:
        platform.start()
    # nothing half-created: no account, no key, no runtime, nothing listening
    for leftover in ("users.json", "admin-password", "runtime.json", "platform.json", "secrets/crypt_key",
                     "oidc-identities.json"):
        assert not (state / leftover).exists(), leftover
    assert port_is_free(port)
    return str(err.value)


def test_discovery_url_that_does_not_answer(tmp_path):
    issuer = f"http://127.0.0.1:{free_port()}/realms/aif"
    message = start_fails(tmp_path, {"issuer_url": issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path))})
    assert "AIFOIDCAuthenticator.issuer_url" in message and "does not answer" in message, message
    assert issuer in message


def test_discovery_url_that_is_not_openid_connect(tmp_path, idp):
    issuer = idp.issuer.rsplit("/realms/", 1)[0] + "/not-a-realm"  # the provider answers, with an HTML 404
    message = start_fails(tmp_path, {"issuer_url": issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path))})
    assert "AIFOIDCAuthenticator.issuer_url" in message and "is not an OpenID Connect discovery document" in message


def test_redirect_uri_not_registered_is_named(tmp_path, idp):
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path))}, idp=idp, register=False)
    assert "/hub/oauth_callback registered as this client's redirect URI" in message, message


def test_good_settings_pass_the_check(tmp_path, idp):
    """The control for the tests around it: the same check accepts the right client."""
    from aifactory.hub.oidc import AIFOIDCAuthenticator

    auth = AIFOIDCAuthenticator(issuer_url=idp.issuer, client_id=CLIENT_ID, client_secret=SECRET,
                                oauth_callback_url="http://127.0.0.1:9/hub/oauth_callback", allowed_groups={"acme"},
                                discovery_cache=str(tmp_path / "disco.json"))
    assert auth.check_settings()["issuer"] == idp.issuer
    assert auth.token_url == idp.discovery()["token_endpoint"] and oct((tmp_path / "disco.json").stat().st_mode)[-3:] == "600"


def test_client_secret_the_provider_rejects(tmp_path, idp):
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path, "wrong-secret"))}, idp=idp)
    assert "invalid_client" in message and "AIFOIDCAuthenticator.client_secret_file" in message, message


def test_unknown_client_id(tmp_path, idp):
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": "nobody",
                                     "client_secret_file": str(secret_file(tmp_path))}, idp=idp)
    assert "AIFOIDCAuthenticator.client_id" in message and "'nobody'" in message, message


def test_secret_file_readable_by_others(tmp_path, idp):
    path = secret_file(tmp_path, mode=0o644)
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(path)})
    assert "client_secret_file" in message and f"chmod 600 {path}" in message, message


def test_no_allowed_groups(tmp_path, idp):
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path))}, extra_config="")
    assert "AIFOIDCAuthenticator.allowed_groups is empty" in message, message


def test_pattern_without_its_group(tmp_path, idp):
    message = start_fails(tmp_path, {"issuer_url": idp.issuer, "client_id": CLIENT_ID,
                                     "client_secret_file": str(secret_file(tmp_path))},
                          extra_config='c.AIFOIDCAuthenticator.allowed_groups = {"acme"}\n'
                                       'c.AIFOIDCAuthenticator.entitlement_patterns = [r"^urn:geant:.*$"]\n')
    assert "AIFOIDCAuthenticator.entitlement_patterns" in message and "(?P<group>" in message, message


def test_aif_up_command_line_names_the_setting(tmp_path):
    issuer = f"http://127.0.0.1:{free_port()}/realms/aif"
    proc = subprocess.run(
        [AIF, "up", "--state-dir", str(tmp_path / "state"), "--port", str(free_port()), "--auth", "oidc",
         "--oidc-issuer", issuer, "--oidc-client-id", CLIENT_ID,
         "--oidc-client-secret-file", str(secret_file(tmp_path))],
        capture_output=True, text=True, timeout=120, env={**os.environ, "AIF_STATE_DIR": ""})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "AIFOIDCAuthenticator.issuer_url" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    usage = subprocess.run([AIF, "up", "--state-dir", str(tmp_path / "s2"), "--auth", "local",
                            "--oidc-issuer", issuer], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "--oidc-* options need --auth oidc" in usage.stderr


# --- the claim mappings -------------------------------------------------------------------------

def test_entitlements_become_hub_groups():
    groups = EntitlementGroups([DEFAULT_ENTITLEMENT_PATTERN])
    assert groups([
        "urn:geant:example.eu:group:aif:acme#idp.example.eu",
        "urn:geant:example.eu:group:aif:Globex:ml-team",
        "urn:geant:example.eu:group:other:acme",          # not the platform's namespace
        "urn:mace:dir:entitlement:common-lib-terms",
        "urn:geant:example.eu:group:aif:bad!name",        # not a valid group name: ignored
    ]) == {"acme", "globex-ml-team"}
    assert groups("urn:geant:x.eu:group:aif:solo") == {"solo"}
    assert groups(None) == set()
    keycloak = EntitlementGroups([r"^/aif/(?P<group>[^/]+)$"])
    assert keycloak(["/aif/acme", "/staff", "/aif/acme/sub"]) == {"acme"}


@pytest.mark.parametrize("value, strip, name", [
    ("Alice.Smith", False, "alice-smith"),
    ("alice@uni.example", True, "alice"),
    ("alice@uni.example", False, "alice-uni-example"),
    (" Bob_O'Neil ", False, "bob_o-neil"),
])
def test_usernames_are_normalised_to_unix_names(value, strip, name):
    assert unix_name(value, strip) == name
