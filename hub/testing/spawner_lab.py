"""A minimal real JupyterHub + configurable-http-proxy for exercising Slurm spawners.

Used by the spawner tests and perf/spawner_compare.py, which need to compare our spawner with
stock batchspawner under identical conditions and to restart the hub on its own. The proxy runs
outside the hub (as in production) so routes to running sessions survive hub restarts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

from ...common.net import free_port, port_open

VENV = Path(sys.prefix)
CHP = VENV / "node" / "node_modules" / ".bin" / "configurable-http-proxy"


class SpawnerLab:
    """JupyterHub (as root, cleanup_servers=False) behind an external CHP, under `state_dir`."""

    def __init__(self, state_dir, spawner_class="aif-slurm", extra_config="", env=None, password=None):
        self.state_dir = Path(state_dir)
        self.spawner_class = spawner_class
        self.extra_config = extra_config
        self.env = {**os.environ, **(env or {})}
        self.password = password or secrets.token_hex(8)
        self.token = secrets.token_hex(16)
        self.proxy_token = secrets.token_hex(16)
        self.proxy_port, self.proxy_api_port, self.hub_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self._proxy = None
        self._hub = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout=60):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "jupyterhub_config.py").write_text(self._config())
        try:
            self._start_proxy()
            self.start_hub(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_hub(self, timeout=60):
        log = open(self.state_dir / "hub.log", "ab")
        self._hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.state_dir / "jupyterhub_config.py")],
            cwd=self.state_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait(lambda: self._hub_answers(), timeout, "the hub did not answer")

    def stop_hub(self):
        if self._hub and self._hub.poll() is None:
            self._hub.terminate()
            try:
                self._hub.wait(20)
            except subprocess.TimeoutExpired:
                self._hub.kill()
                self._hub.wait()
        self._hub = None

    def restart_hub(self, timeout=60):
        self.stop_hub()
        self.start_hub(timeout)

    def stop_all_servers(self, timeout=30):
        """Stop every user's server through the API (the hub itself leaves them running)."""
        if not self._hub:
            return
        try:
            users = self.api("GET", "/users").json()
        except (requests.RequestException, ValueError):
            return
        for user in users:
            if user.get("server") or user.get("pending"):
                self.api("DELETE", f"/users/{user['name']}/server", timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            users = self.api("GET", "/users").json()
            if not any(u.get("server") or u.get("pending") for u in users):
                return
            time.sleep(0.5)

    def stop(self):
        try:
            self.stop_all_servers()
        finally:
            self.stop_hub()
            if self._proxy and self._proxy.poll() is None:
                self._proxy.terminate()
                self._proxy.wait(10)
            self._proxy = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- API helpers -------------------------------------------------------------------------
    def api(self, method, path, timeout=30, **kwargs):
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=timeout, **kwargs)

    def add_user(self, name, groups=()):
        self.api("POST", f"/users/{name}")
        for group in groups:
            if self.api("GET", f"/groups/{group}").status_code == 404:
                self.api("POST", f"/groups/{group}")
            self.api("POST", f"/groups/{group}/users", json={"users": [name]})

    def user_token(self, name):
        response = self.api("POST", f"/users/{name}/tokens", json={"note": "spawner tests"})
        response.raise_for_status()
        return response.json()["token"]

    def wait_ready(self, user, timeout=90):
        """The user's model once their server is up; fails at once when the spawn ended without one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            if model["server"] and not model["pending"]:
                return model
            if not model["pending"] and not model["server"]:
                raise AssertionError(f"{user}'s spawn ended without a server; hub log:\n{self.log_text()[-3000:]}")
            time.sleep(0.25)
        raise AssertionError(f"{user} not ready within {timeout}s; hub log:\n{self.log_text()[-3000:]}")

    def log_text(self):
        path = self.state_dir / "hub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- internals ---------------------------------------------------------------------------
    def _start_proxy(self):
        if not CHP.exists() or shutil.which("node") is None:
            raise RuntimeError(f"configurable-http-proxy not found at {CHP}: run `make install`")
        log = open(self.state_dir / "proxy.log", "ab")
        self._proxy = subprocess.Popen(
            [str(CHP), "--ip", "127.0.0.1", "--port", str(self.proxy_port), "--api-ip", "127.0.0.1",
             "--api-port", str(self.proxy_api_port), "--default-target", f"http://127.0.0.1:{self.hub_port}",
             "--error-target", f"http://127.0.0.1:{self.hub_port}/hub/error"],
            env={**self.env, "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait(lambda: port_open(self.proxy_api_port), 20, "configurable-http-proxy did not listen")

    def _hub_answers(self):
        if self._hub.poll() is not None:
            raise RuntimeError(f"the hub exited ({self._hub.returncode}); log:\n{self.log_text()[-3000:]}")
        try:
            return self.api("GET", "/users", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait(self, predicate, timeout, message):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{message} within {timeout}s; hub log tail:\n{self.log_text()[-3000:]}")

    def _config(self):
        s = self.state_dir
        return textwrap.dedent(f"""\
            c = get_config()  # noqa
            c.JupyterHub.bind_url = "{self.url}"
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.should_start = False
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.ConfigurableHTTPProxy.auth_token = "{self.proxy_token}"
            c.JupyterHub.cleanup_servers = False
            c.JupyterHub.db_url = "sqlite:///{s}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{s}/jupyterhub_cookie_secret"
            c.JupyterHub.pid_file = "{s}/jupyterhub.pid"
            c.JupyterHub.authenticator_class = "dummy"
            c.DummyAuthenticator.password = "{self.password}"
            c.Authenticator.allow_all = True
            c.JupyterHub.services = [{{"name": "lab-admin", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{"name": "admin", "services": ["lab-admin"]}}]
            c.JupyterHub.spawner_class = "{self.spawner_class}"
            c.JupyterHub.default_url = "/hub/home"
            c.Spawner.default_url = "/lab"
            c.Spawner.http_timeout = 60
            """) + "\n" + self.extra_config + "\n"
