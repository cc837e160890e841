"""The real platform (proxy + JupyterHub + MLflow service) as pytest fixtures, and HTTP helpers.

`platform` is session-scoped: one platform serves every test that needs one (start-up costs
tens of seconds on a 2-core machine). Tests that restart or break a platform make their own
with `platform_factory`.
"""

import datetime
import json
import os
import time
import uuid

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

from aifactory.hub.platform import Platform


def start_platform(state_dir, **kwargs):
    platform = Platform(state_dir, port=kwargs.pop("port", None) or _free_port(), **kwargs)
    platform.start(timeout=240)
    return platform


def _free_port():
    from conftest import free_port

    return free_port()


@pytest.fixture(scope="session")
def platform(tmp_path_factory):
    p = start_platform(tmp_path_factory.mktemp("platform"))
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def platform_factory(tmp_path):
    started = []

    def make(state_dir=None, **kwargs):
        p = start_platform(state_dir or tmp_path / f"state{len(started)}", **kwargs)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def unique_user(prefix="u"):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# --- a person's way in: the login form and the spawn page -----------------------------------

def login(url, username, password):
    """A requests session logged in through the hub's login form (with its xsrf token)."""
    session = requests.Session()
    session.get(f"{url}/hub/login", timeout=30).raise_for_status()
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    response = session.post(
        f"{url}/hub/login?next=", data={"username": username, "password": password, "_xsrf": xsrf},
        allow_redirects=False, timeout=30,
    )
    if response.status_code != 302:
        raise AssertionError(f"login as {username} failed: HTTP {response.status_code}")
    return session


def open_lab(session, url, username, timeout=180):
    """Follow the spawn flow as a browser does until JupyterLab answers; returns seconds taken."""
    start = time.monotonic()
    session.get(f"{url}/hub/spawn/{username}", timeout=60)
    deadline = start + timeout
    while time.monotonic() < deadline:
        response = session.get(f"{url}/user/{username}/lab", timeout=60)
        if response.status_code == 200 and "jupyter" in response.text.lower() and f"/user/{username}/" in response.url:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"JupyterLab of {username} not ready after {timeout}s")


def start_server(platform, user, timeout=180):
    """Start USER's server through the hub API (admin token); returns its public URL once ready."""
    platform.api("POST", f"/users/{user}/server").raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = platform.api("GET", f"/users/{user}").json()
        if model["server"] and not model["pending"]:
            return f"{platform.url}{model['server'].rstrip('/')}"
        time.sleep(0.5)
    raise AssertionError(f"server of {user} not ready after {timeout}s")


# --- running code inside a user's server (a real kernel, over the Jupyter websocket API) ----

def run_in_kernel(server_url, token, code, timeout=120):
    """Execute `code` in a new kernel of the server; returns its stdout. Raises on error."""
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{server_url}/api/kernels", headers=headers, json={}, timeout=60)
    kernel.raise_for_status()
    kernel_id = kernel.json()["id"]
    try:
        return IOLoop().run_sync(lambda: _execute(server_url, kernel_id, headers, code), timeout=timeout)
    finally:
        requests.delete(f"{server_url}/api/kernels/{kernel_id}", headers=headers, timeout=60)


async def _execute(server_url, kernel_id, headers, code):
    ws_url = server_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                   "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out, error = [], None
    while True:
        raw = await conn.read_message()
        if raw is None:
            raise AssertionError("kernel websocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            error = "\n".join(msg["content"]["traceback"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    conn.close()
    if error:
        raise AssertionError(f"kernel error:\n{error}")
    return "".join(out)


def mlflow_env(platform, token):
    return {**os.environ, "MLFLOW_TRACKING_URI": platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": token}
