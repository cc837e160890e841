"""Attack cases: one user against another on the real platform, and path traversal on artifacts.

Attacker B (own hub token, own logged-in browser session) goes after victim A: the hub REST
API, A's running JupyterLab server, A's private MLflow experiment, run and artifacts, forged
identity headers and MLflow's own port. Then traversal on artifacts: uploads and downloads with
`..`, absolute paths and (double) URL-encoded dots through MLflow's artifact proxy, get-artifact
and artifacts/list, and experiments whose artifact location points outside the artifact root.
Every attempt is its own parametrized case; each must be refused (401/403/404, or 400 for a
malformed path) without leaking A's data; no file lands outside the artifact root. One nuance:
the proxy (CHP) collapses `..` segments before the MLflow service sees a URL, so an upload path
that climbs out of B's run and back down inside B's own experiment is written there; that case
is accepted only if the file is inside B's experiment (never A's, never outside the root).

One platform (the session's) and one server for A serve the whole module.
"""

import http.client
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
from aifactory.hub.testing.platform import login, start_server, unique_user

SECRET = f"victim-secret-{uuid.uuid4().hex}"
MARKER = f"aif-traversal-{uuid.uuid4().hex[:12]}"  # the name every traversal upload tries to write
REFUSED = (400, 401, 403, 404)




def raw(method, url, headers=None, body=None):
    """An HTTP request sent exactly as written: no client-side cleaning of `..` or `%2e`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, url[len(f"{parts.scheme}://{parts.netloc}"):], body=body, headers=headers or {})
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    return SimpleNamespace(status_code=response.status, content=content, text=content.decode(errors="replace"),
                           headers=response.headers)


class Victim:
    """A's world, set up once: a running server with a file, a private MLflow experiment and run."""

    def __init__(self, platform):
        self.platform = platform
        self.a, self.b = unique_user("victim"), unique_user("attacker")
        platform.add_user(self.a)
        self.b_password = platform.add_user(self.b, groups=["attackers"])
        self.token_a, self.token_b = platform.user_token(self.a), platform.user_token(self.b)
        self.server = start_server(platform, self.a)
        self.api_a = {"Authorization": f"token {self.token_a}"}
        self.api_b = {"Authorization": f"token {self.token_b}"}
        put = requests.put(f"{self.server}/api/contents/secret.txt", headers=self.api_a, timeout=60,
                           json={"type": "file", "format": "text", "content": SECRET})
        put.raise_for_status()
        self.experiment, self.run = self.mlflow_run(self.token_a, f"{self.a}/private")
        self.b_experiment, self.b_run = self.mlflow_run(self.token_b, f"{self.b}/own")
        self.artifact_root = Path(platform.runtime["mlflow"]["artifacts_destination"]).resolve()
        uploaded = self.artifact_put(self.token_a, f"{self.experiment}/{self.run}/artifacts/secret.txt", SECRET)
        assert uploaded.status_code == 200, uploaded.text
        self.browser_b = login(platform.url, self.b, self.b_password)
        self.mlflow_direct = f"http://127.0.0.1:{platform.runtime['mlflow']['server_port']}/services/mlflow"

    def mlflow(self, token, method, endpoint, **kwargs):
        return requests.request(method, f"{self.platform.mlflow_url}/api/2.0/mlflow/{endpoint}",
                                headers={"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})},
                                timeout=60, **kwargs)

    def mlflow_run(self, token, experiment_name):
        created = self.mlflow(token, "POST", "experiments/create", json={"name": experiment_name})
        assert created.status_code == 200, created.text
        experiment = created.json()["experiment_id"]
        run = self.mlflow(token, "POST", "runs/create", json={"experiment_id": experiment})
        assert run.status_code == 200, run.text
        run_id = run.json()["run"]["info"]["run_id"]
        value = SECRET if token == self.token_a else "the attacker's own"
        assert self.mlflow(token, "POST", "runs/log-parameter",
                           json={"run_id": run_id, "key": "secret", "value": value}).status_code == 200
        return experiment, run_id

    def artifact_url(self, path):
        return f"{self.platform.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{path}"

    def artifact_put(self, token, path, content=MARKER):
        return raw("PUT", self.artifact_url(path), {"Authorization": f"Bearer {token}"}, content.encode())


@pytest.fixture(scope="module")
def victim(platform):
    world = Victim(platform)
    try:
        yield world
    finally:
        platform.api("DELETE", f"/users/{world.a}/server")


def hub(v, method, path, **kwargs):
    return requests.request(method, f"{v.platform.url}/hub/api{path}", headers=v.api_b, timeout=60,
                            allow_redirects=False, **kwargs)


def browser_api(v, method, path, **kwargs):
    """B's logged-in browser session calling the hub API (with its xsrf token, as a page would)."""
    xsrf = v.browser_b.cookies.get("_xsrf", path="/hub/") or ""
    return v.browser_b.request(method, f"{v.platform.url}/hub/api{path}", headers={"X-XSRFToken": xsrf},
                               timeout=60, allow_redirects=False, **kwargs)


# --- the hub REST API --------------------------------------------------------------------------

HUB_ATTACKS = {
    "read A's model": lambda v: hub(v, "GET", f"/users/{v.a}"),
    "start A's server": lambda v: hub(v, "POST", f"/users/{v.a}/server"),
    "stop A's server": lambda v: hub(v, "DELETE", f"/users/{v.a}/server"),
    "create a token for A": lambda v: hub(v, "POST", f"/users/{v.a}/tokens", json={"note": "mine now"}),
    "read A's tokens": lambda v: hub(v, "GET", f"/users/{v.a}/tokens"),
    "post activity for A": lambda v: hub(v, "POST", f"/users/{v.a}/activity",
                                         json={"last_activity": "2030-01-01T00:00:00Z"}),
    "rename or delete A": lambda v: hub(v, "DELETE", f"/users/{v.a}"),
    "make self admin": lambda v: hub(v, "PATCH", f"/users/{v.b}", json={"admin": True}),
    "add self to a group": lambda v: hub(v, "POST", "/groups/sme/users", json={"users": [v.b]}),
    "create a group": lambda v: hub(v, "POST", "/groups/pwned"),
    "create a user": lambda v: hub(v, "POST", "/users/pwned-user"),
    "read the proxy table": lambda v: hub(v, "GET", "/proxy"),
    "shut the hub down": lambda v: hub(v, "POST", "/shutdown"),
    "start a named server for A": lambda v: hub(v, "POST", f"/users/{v.a}/servers/extra"),
    "browser: read A's model": lambda v: browser_api(v, "GET", f"/users/{v.a}"),
    "browser: stop A's server": lambda v: browser_api(v, "DELETE", f"/users/{v.a}/server"),
    "browser: token for A": lambda v: browser_api(v, "POST", f"/users/{v.a}/tokens", json={}),
    "browser: spawn page of A": lambda v: v.browser_b.get(f"{v.platform.url}/hub/spawn/{v.a}", timeout=60,
                                                          allow_redirects=False),
    "browser: admin page": lambda v: v.browser_b.get(f"{v.platform.url}/hub/admin", timeout=60,
                                                     allow_redirects=False),
}


@pytest.mark.parametrize("attack", list(HUB_ATTACKS))
def test_hub_api_refuses_another_user(victim, attack):
    response = HUB_ATTACKS[attack](victim)
    assert response.status_code in (403, 404), f"{attack}: HTTP {response.status_code} {response.text[:300]}"
    assert victim.token_a not in response.text
    model = victim.platform.api("GET", f"/users/{victim.a}").json()
    assert model["server"] and not model["admin"], "A's server or account was changed"
    assert not victim.platform.api("GET", f"/users/{victim.b}").json()["admin"]


def test_user_list_does_not_leak_other_users(victim):
    response = hub(victim, "GET", "/users")
    assert response.status_code == 403 or victim.a not in response.text


# --- A's running server ------------------------------------------------------------------------

SERVER_ATTACKS = {
    "list A's files": ("GET", "/api/contents", None),
    "read A's file": ("GET", "/api/contents/secret.txt", None),
    "download A's file": ("GET", "/files/secret.txt", None),
    "write into A's home": ("PUT", "/api/contents/pwned.txt", {"type": "file", "format": "text", "content": "x"}),
    "list A's kernels": ("GET", "/api/kernels", None),
    "start a kernel as A": ("POST", "/api/kernels", {}),
    "open a terminal as A": ("POST", "/api/terminals", None),
    "list A's sessions": ("GET", "/api/sessions", None),
    "open A's JupyterLab": ("GET", "/lab", None),
    "A's session info": ("GET", "/aif/session", None),
}


def xsrf_for(session, url):
    """The _xsrf cookie a page at `url` would send back (the hub and each server set their own)."""
    path = urlsplit(url).path
    cookies = [c for c in session.cookies if c.name == "_xsrf" and path.startswith(c.path)]
    return max(cookies, key=lambda c: len(c.path)).value if cookies else ""


def server_leaks(victim, response):
    return SECRET in response.text or "secret.txt" in response.text


@pytest.mark.parametrize("attack", list(SERVER_ATTACKS))
@pytest.mark.parametrize("credential", ["token", "token-in-query", "browser"])
def test_a_users_server_refuses_another_user(victim, attack, credential):
    method, path, body = SERVER_ATTACKS[attack]
    url = f"{victim.server}{path}"
    if credential == "browser":
        # B's browser follows the hub's OAuth redirects: the hub must refuse B for A's server
        response = victim.browser_b.request(method, url, json=body, timeout=60,
                                            headers={"X-XSRFToken": xsrf_for(victim.browser_b, url)})
        assert response.status_code in (403, 404) or response.url.startswith(f"{victim.platform.url}/hub/login"), \
            f"{attack}: HTTP {response.status_code} at {response.url}"
    else:
        kwargs = ({"params": {"token": victim.token_b}} if credential == "token-in-query" else {"headers": victim.api_b})
        response = requests.request(method, url, json=body, timeout=60, allow_redirects=False, **kwargs)
        assert response.status_code in (302, 403, 404), f"{attack}: HTTP {response.status_code}"
        if response.status_code == 302:
            assert "/hub/" in response.headers["Location"], response.headers["Location"]
    assert not server_leaks(victim, response)
    listing = requests.get(f"{victim.server}/api/contents", headers=victim.api_a, timeout=60).json()
    assert "pwned.txt" not in {item["name"] for item in listing["content"]}


# --- MLflow: A's private experiment, runs and artifacts -------------------------------------------

def mlflow_b(v, method, endpoint, **kwargs):
    return v.mlflow(v.token_b, method, endpoint, **kwargs)


MLFLOW_ATTACKS = {
    "get A's experiment": lambda v: mlflow_b(v, "GET", "experiments/get", params={"experiment_id": v.experiment}),
    "get A's experiment by name": lambda v: mlflow_b(v, "GET", "experiments/get-by-name",
                                                     params={"experiment_name": f"{v.a}/private"}),
    "get A's run": lambda v: mlflow_b(v, "GET", "runs/get", params={"run_id": v.run}),
    "search A's experiment": lambda v: mlflow_b(v, "POST", "runs/search", json={"experiment_ids": [v.experiment]}),
    "read A's metric history": lambda v: mlflow_b(v, "GET", "metrics/get-history",
                                                  params={"run_id": v.run, "metric_key": "loss"}),
    "log a metric to A's run": lambda v: mlflow_b(v, "POST", "runs/log-metric", json={
        "run_id": v.run, "key": "pwned", "value": 1, "timestamp": 0}),
    "log a batch to A's run": lambda v: mlflow_b(v, "POST", "runs/log-batch", json={
        "run_id": v.run, "params": [{"key": "pwned", "value": "1"}]}),
    "set a tag on A's run": lambda v: mlflow_b(v, "POST", "runs/set-tag", json={
        "run_id": v.run, "key": "pwned", "value": "1"}),
    "end A's run": lambda v: mlflow_b(v, "POST", "runs/update", json={"run_id": v.run, "status": "FAILED"}),
    "delete A's run": lambda v: mlflow_b(v, "POST", "runs/delete", json={"run_id": v.run}),
    "create a run in A's experiment": lambda v: mlflow_b(v, "POST", "runs/create", json={
        "experiment_id": v.experiment}),
    "rename A's experiment": lambda v: mlflow_b(v, "POST", "experiments/update", json={
        "experiment_id": v.experiment, "new_name": "pwned"}),
    "tag A's experiment": lambda v: mlflow_b(v, "POST", "experiments/set-experiment-tag", json={
        "experiment_id": v.experiment, "key": "pwned", "value": "1"}),
    "delete A's experiment": lambda v: mlflow_b(v, "POST", "experiments/delete", json={
        "experiment_id": v.experiment}),
    "claim A's experiment namespace": lambda v: mlflow_b(v, "POST", "experiments/create", json={
        "name": f"{v.a}/planted"}),
    "give self permission on A's experiment": lambda v: requests.post(
        f"{v.platform.mlflow_url}/api/3.0/mlflow/users/permissions/grant", timeout=60,
        headers={"Authorization": f"Bearer {v.token_b}"},
        json={"username": v.b, "resource_type": "experiment", "resource_id": v.experiment, "permission": "MANAGE"}),
    "make self an MLflow admin": lambda v: mlflow_b(v, "PATCH", "users/update-admin", json={
        "username": v.b, "is_admin": True}),
    "share A's experiment with own group": lambda v: requests.post(
        f"{v.platform.mlflow_url}/aif/share", headers={"Authorization": f"Bearer {v.token_b}"}, timeout=60,
        json={"experiment_id": v.experiment, "group": "attackers"}),
    "list A's artifacts": lambda v: mlflow_b(v, "GET", "artifacts/list", params={"run_id": v.run}),
    "get-artifact of A's run": lambda v: requests.get(
        f"{v.platform.mlflow_url}/get-artifact", params={"run_id": v.run, "path": "secret.txt"},
        headers={"Authorization": f"Bearer {v.token_b}"}, timeout=60),
    "download A's artifact via the proxy": lambda v: raw(
        "GET", v.artifact_url(f"{v.experiment}/{v.run}/artifacts/secret.txt"), {"Authorization": f"Bearer {v.token_b}"}),
    "overwrite A's artifact via the proxy": lambda v: v.artifact_put(
        v.token_b, f"{v.experiment}/{v.run}/artifacts/secret.txt"),
    "list A's artifacts via the proxy": lambda v: raw(
        "GET", f"{v.platform.mlflow_url}/api/2.0/mlflow-artifacts/artifacts?path={v.experiment}/{v.run}/artifacts",
        {"Authorization": f"Bearer {v.token_b}"}),
    "forged X-Aif-User header": lambda v: mlflow_b(v, "GET", "runs/get", params={"run_id": v.run},
                                                   headers={"X-Aif-User": v.a, "X-Forwarded-User": v.a}),
    "forged identity, no token": lambda v: requests.get(
        f"{v.platform.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": v.run}, timeout=60,
        headers={"X-Aif-User": v.a, "X-Aif-Bridge-Secret": "guess"}),
    "MLflow port directly as A": lambda v: requests.get(
        f"{v.mlflow_direct}/api/2.0/mlflow/runs/get", params={"run_id": v.run}, timeout=60,
        headers={"X-Aif-User": v.a, "X-Aif-Bridge-Secret": "guess"}),
    "MLflow port directly with basic auth": lambda v: requests.get(
        f"{v.mlflow_direct}/api/2.0/mlflow/runs/get", params={"run_id": v.run}, timeout=60,
        auth=("aif-service", "password")),
    "MLflow port directly, artifacts": lambda v: raw(
        "GET", f"{v.mlflow_direct}/api/2.0/mlflow-artifacts/artifacts/{v.experiment}/{v.run}/artifacts/secret.txt",
        {"X-Aif-User": v.a}),
    "browser session: A's run": lambda v: v.browser_b.get(
        f"{v.platform.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": v.run}, timeout=60),
}


@pytest.mark.parametrize("attack", list(MLFLOW_ATTACKS))
def test_mlflow_refuses_another_users_experiment(victim, attack):
    response = MLFLOW_ATTACKS[attack](victim)
    if attack == "search A's experiment" and response.status_code == 200:
        assert not response.json().get("runs"), "A's runs leaked through search"
    else:
        assert response.status_code in REFUSED, f"{attack}: HTTP {response.status_code} {response.text[:300]}"
    assert SECRET not in response.text
    run = victim.mlflow(victim.token_a, "GET", "runs/get", params={"run_id": victim.run}).json()["run"]
    assert run["info"]["status"] == "RUNNING" and run["info"]["lifecycle_stage"] == "active"
    assert not {m["key"] for m in run["data"].get("metrics", [])} and "pwned" not in str(run["data"])
    experiment = victim.mlflow(victim.token_a, "GET", "experiments/get", params={"experiment_id": victim.experiment})
    assert experiment.json()["experiment"]["name"] == f"{victim.a}/private"


def test_searches_do_not_leak_other_users_runs(victim):
    experiments = mlflow_b(victim, "POST", "experiments/search", json={"max_results": 1000})
    runs = mlflow_b(victim, "POST", "runs/search", json={"experiment_ids": [victim.b_experiment, victim.experiment]})
    assert victim.experiment not in {e["experiment_id"] for e in experiments.json().get("experiments", [])}
    assert runs.status_code in REFUSED or victim.run not in runs.text
    assert SECRET not in experiments.text + runs.text


# --- path traversal on artifacts ---------------------------------------------------------------

def own_prefix(v):
    return f"{v.b_experiment}/{v.b_run}/artifacts"


UPLOADS = {
    "dot-dot to the artifact root's parent": lambda v: f"{own_prefix(v)}/../../../../{MARKER}",
    "dot-dot into A's experiment": lambda v: f"{own_prefix(v)}/../../../{v.experiment}/{v.run}/artifacts/{MARKER}",
    "dot-dot to a sibling run folder": lambda v: f"{own_prefix(v)}/../../{v.run}/artifacts/{MARKER}",
    "dot-dot far out": lambda v: f"{own_prefix(v)}/" + "../" * 12 + f"tmp/{MARKER}",
    "url-encoded dot-dot": lambda v: f"{own_prefix(v)}/" + "%2e%2e%2f" * 6 + MARKER,
    "url-encoded slash only": lambda v: f"{own_prefix(v)}/..%2f..%2f..%2f..%2f{MARKER}",
    "double-encoded dot-dot": lambda v: f"{own_prefix(v)}/" + "%252e%252e%252f" * 6 + MARKER,
    "absolute path": lambda v: f"/tmp/{MARKER}",
    "absolute path, encoded slash": lambda v: f"%2Ftmp%2F{MARKER}",
    "backslash dot-dot": lambda v: f"{own_prefix(v)}/..\\..\\..\\..\\{MARKER}",
    "dot-dot at the start": lambda v: f"../../{MARKER}",
}


@pytest.mark.parametrize("attack", list(UPLOADS))
def test_artifact_upload_cannot_escape_the_artifact_root(victim, attack):
    response = victim.artifact_put(victim.token_b, UPLOADS[attack](victim))
    written = [p.resolve() for p in victim.artifact_root.rglob(MARKER)]
    if response.status_code == 200:
        # `..` collapsed before MLflow's check: acceptable only if it stayed in B's own experiment
        own = victim.artifact_root / victim.b_experiment
        assert written and all(p.is_relative_to(own) for p in written), f"{attack}: written to {written}"
    else:
        assert response.status_code in REFUSED, f"{attack}: HTTP {response.status_code} {response.text[:300]}"
    assert not any(p.is_relative_to(victim.artifact_root / victim.experiment) for p in written), "into A's experiment"
    assert not written_outside_root(victim)


def written_outside_root(v):
    """Files named MARKER anywhere under the platform's state or /tmp but outside the artifact root."""
    found = []
    for top in {v.platform.state.resolve(), Path("/tmp")}:
        for path in top.rglob(MARKER):
            if not path.resolve().is_relative_to(v.artifact_root):
                found.append(path)
    return found


DOWNLOADS = {
    "proxy: dot-dot to the hub's secrets": lambda v: ("raw", v.artifact_url(
        f"{own_prefix(v)}/../../../../secrets/proxy_token")),
    "proxy: url-encoded dot-dot to secrets": lambda v: ("raw", v.artifact_url(
        f"{own_prefix(v)}/" + "%2e%2e%2f" * 4 + "secrets/proxy_token")),
    "proxy: dot-dot into A's run": lambda v: ("raw", v.artifact_url(
        f"{own_prefix(v)}/../../{v.run}/artifacts/secret.txt")),
    "proxy: encoded dot-dot into A's run": lambda v: ("raw", v.artifact_url(
        f"{own_prefix(v)}/%2e%2e/%2e%2e/{v.run}/artifacts/secret.txt")),
    "proxy: absolute path": lambda v: ("raw", v.artifact_url("/etc/passwd")),
    "proxy: list the parent": lambda v: ("raw", (f"{v.platform.mlflow_url}/api/2.0/mlflow-artifacts/artifacts"
                                                 f"?path={own_prefix(v)}/../../..")),
    "get-artifact: dot-dot": lambda v: ("get-artifact", "../../../../../secrets/admin_service_token"),
    "get-artifact: absolute path": lambda v: ("get-artifact", "/etc/passwd"),
    "get-artifact: encoded dot-dot": lambda v: ("get-artifact", "%2e%2e/%2e%2e/%2e%2e/secrets/proxy_token"),
    "artifacts/list: dot-dot": lambda v: ("list", "../../.."),
}


@pytest.mark.parametrize("attack", list(DOWNLOADS))
def test_artifact_download_cannot_escape_the_run(victim, attack):
    kind, target = DOWNLOADS[attack](victim)
    headers = {"Authorization": f"Bearer {victim.token_b}"}
    if kind == "raw":
        response = raw("GET", target, headers)
    elif kind == "get-artifact":
        response = requests.get(f"{victim.platform.mlflow_url}/get-artifact", headers=headers, timeout=60,
                                params={"run_id": victim.b_run, "path": target})
    else:
        response = mlflow_b(victim, "GET", "artifacts/list", params={"run_id": victim.b_run, "path": target})
    assert response.status_code in REFUSED, f"{attack}: HTTP {response.status_code} {response.text[:300]}"
    secrets = [victim.platform.proxy_token, victim.platform.admin_service_token, SECRET, "root:x:0:0"]
    assert not any(s in response.text for s in secrets)


ARTIFACT_LOCATIONS = {
    "the hub's secrets folder": lambda v: str(v.platform.state / "secrets"),
    "file URI of the state folder": lambda v: f"file://{v.platform.state}",
    "A's run folder": lambda v: str(v.artifact_root / v.experiment / v.run / "artifacts"),
    "relative escape": lambda v: "mlflow-artifacts:/../../secrets",
}


@pytest.mark.parametrize("attack", list(ARTIFACT_LOCATIONS))
def test_experiment_artifact_location_cannot_point_outside_the_root(victim, attack):
    """An experiment may not choose where its artifacts go: a client would write there directly."""
    location = ARTIFACT_LOCATIONS[attack](victim)
    name = f"{victim.b}/loc-{uuid.uuid4().hex[:8]}"
    created = mlflow_b(victim, "POST", "experiments/create", json={"name": name, "artifact_location": location})
    assert created.status_code == 400 and "artifact_location" in created.json()["message"], created.text
    listed = mlflow_b(victim, "GET", "experiments/get-by-name", params={"experiment_name": name})
    assert listed.status_code == 404  # nothing was created
