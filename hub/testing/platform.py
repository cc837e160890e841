"""The real platform (proxy + JupyterHub + MLflow service) for tests and perf, and a person's way in.

`start_platform` starts one on free ports under a state directory; `login`, `open_lab` and
`start_server` do what a person (or an admin) does through the hub. The pytest fixtures that
start and always stop platforms are in fixtures.py; running code in a session is kernel.py.
"""

import os
import time
import uuid

import requests

from ...common.net import free_port
from ..platform import Platform


def start_platform(state_dir, **kwargs):
    """A started Platform on a free public port (waits until hub, proxy and MLflow are healthy)."""
    platform = Platform(state_dir, port=kwargs.pop("port", None) or free_port(), **kwargs)
    platform.start(timeout=240)
    return platform


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


def mlflow_env(platform, token):
    return {**os.environ, "MLFLOW_TRACKING_URI": platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": token}


def processes_of_state(state_dir):
    """{pid: command line} of live processes whose command line, working directory or environment
    mentions the state directory: what a stopped platform must not leave behind."""
    needle = str(state_dir).encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # a zombie runs nothing
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
            cwd = os.readlink(f"/proc/{entry.name}/cwd").encode()
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if needle in cmdline or cwd.startswith(needle) or needle in environ:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found
