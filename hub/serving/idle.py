"""Idle stop: an endpoint that got no request through the hub for the operator's time is stopped.

The serve service (front.py) sees every request, so it keeps the clock: `IdleWatch.seen` on each
request it forwards, and `check` every few seconds over all endpoint records. The clock of an
endpoint starts when its engine first answers /health (loading a model can take minutes), and
again when the service starts: while the hub was down nobody could reach an endpoint.

The stop itself is `aif serve stop`'s (manager.stop: MLflow run ended with the engine's
/metrics, scancel, marked stopped, address.json removed), run as the endpoint's owner in a child
process (`python -m aifactory.hub.serving.idle NAME SECONDS`), so the record stays the owner's
and the event loop never waits on Slurm. The child reaches MLflow as the owner with a hub token
made for this stop alone (MLflow access only, minutes of life, passed on the child's stdin),
revoked afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import sys
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ...common import envvars
from .endpoints import EndpointStore, ServeError

log = logging.getLogger("aif.serve.idle")
USERS_TTL_S = 60  # how long the list of hub users (the possible owners) is reused
STOP_TIMEOUT_S = 300
TOKEN_LIFE_S = 600


def idle_reason(seconds):
    return f"after {int(seconds)} s without requests (the hub's idle timeout)"


class IdleWatch:
    """Last activity per endpoint (in memory) and the periodic check that stops idle ones."""

    def __init__(self, timeout, hub_api_url, hub_token, mlflow_url=""):
        self.timeout = timeout
        self.hub_api_url, self.hub_token, self.mlflow_url = hub_api_url.rstrip("/"), hub_token, mlflow_url
        self.last = {}  # (owner, name, job_id) -> when it was last used, or became ready
        self.stopping = set()
        self._users = (0.0, [])

    @property
    def interval(self):
        """Seconds between checks: a tenth of the timeout, 1 to 60."""
        return min(60.0, max(1.0, self.timeout / 10))

    def seen(self, endpoint):
        self.last[_key(endpoint)] = time.time()

    async def run(self):
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - one bad round must not end the watch
                log.exception("idle check failed")

    async def check(self, now=None):
        live = set()
        for endpoint in await self.endpoints():
            key = _key(endpoint)
            if endpoint.stopped or not endpoint.job_id or key in self.stopping:
                continue
            live.add(key)
            address = endpoint.address()
            if key not in self.last:
                if address and await healthy(address):
                    self.last[key] = time.time()  # ready: its clock starts now
                continue
            idle = (now or time.time()) - self.last[key]
            if idle < self.timeout:
                continue
            if not (address and await healthy(address)):
                # the job ended by itself (walltime, killed): `aif serve status` says so with its log
                self.last.pop(key)
                continue
            self.stopping.add(key)
            asyncio.ensure_future(self._stop(endpoint, idle))
        for key in set(self.last) - live - self.stopping:
            del self.last[key]

    async def endpoints(self):
        found = []
        for owner in await self.owners():
            store = EndpointStore(owner)
            try:
                names = store.names()
            except OSError:
                continue
            for name in names:
                try:
                    found.append(store.get(name))
                except (ServeError, OSError, ValueError, TypeError):
                    continue
        return found

    async def owners(self):
        """Who may own endpoints: the folders under AIF_SERVE_DIR, else the hub's users."""
        root = envvars.SERVE_DIR.get()
        if root:
            return sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        checked, names = self._users
        if time.monotonic() - checked > USERS_TTL_S:
            names = await self._hub_users()
            self._users = (time.monotonic(), names)
        return [n for n in names if _unix_account(n)]

    async def _hub_users(self):
        names, offset = [], 0
        while True:
            response = await self._hub("GET", f"/users?offset={offset}&limit=200")
            page = json.loads(response.body) if response.code == 200 else []
            page = page.get("items", []) if isinstance(page, dict) else page
            names += [u["name"] for u in page if u.get("kind", "user") == "user"]
            if len(page) < 200:
                return names
            offset += len(page)

    async def _stop(self, endpoint, idle):
        key = _key(endpoint)
        token = None
        try:
            token = await self._mlflow_token(endpoint)
            done = await _run_as(endpoint.owner, [sys.executable, "-m", __name__, endpoint.name, str(int(idle))],
                                 self._child_env(token), secret=token["token"] if token else "")
            log.info("endpoint %s/%s stopped after %d s without requests: %s", endpoint.owner, endpoint.name,
                     idle, done)
        except Exception:  # noqa: BLE001
            log.exception("idle stop of %s/%s failed", endpoint.owner, endpoint.name)
        finally:
            if token:
                await self._hub("DELETE", f"/users/{endpoint.owner}/tokens/{token['id']}")
            self.stopping.discard(key)
            self.last.pop(key, None)

    async def _mlflow_token(self, endpoint):
        """A hub token of the owner that reaches MLflow only, for this stop; None without MLflow."""
        if not self.mlflow_url or not endpoint.mlflow_run_id:
            return None
        body = {"scopes": ["access:services!service=mlflow"], "expires_in": TOKEN_LIFE_S,
                "note": f"aif serve: idle stop of {endpoint.name}"}
        response = await self._hub("POST", f"/users/{endpoint.owner}/tokens", json.dumps(body))
        if response.code != 201:
            log.warning("no MLflow token for %s (%s): its endpoint's run stays open", endpoint.owner, response.code)
            return None
        return json.loads(response.body)

    def _child_env(self, token):
        """The child's environment; the token itself goes on its stdin, never in argv (`ps`)."""
        env = {k: os.environ[k] for k in ("PATH", "SLURM_CONF", envvars.SERVE_DIR.name) if k in os.environ}
        if token:
            env.update(MLFLOW_TRACKING_URI=self.mlflow_url)
        return env

    async def _hub(self, method, path, body=None):
        return await AsyncHTTPClient().fetch(f"{self.hub_api_url}{path}", method=method, body=body,
                                             headers={"Authorization": f"token {self.hub_token}"},
                                             raise_error=False, request_timeout=30)


def _key(endpoint):
    return endpoint.owner, endpoint.name, endpoint.job_id


def _unix_account(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


async def healthy(address, timeout=3):
    try:
        response = await AsyncHTTPClient().fetch(f"http://{address[0]}:{address[1]}/health", raise_error=False,
                                                 request_timeout=timeout)
    except (OSError, HTTPClientError):
        return False
    return response.code == 200


async def _run_as(owner, argv, env, secret=""):
    """Run argv as `owner` (this service runs as root, like the hub), `secret` on its stdin; returns its
    last output line."""
    if pwd.getpwnam(owner).pw_uid != os.geteuid():
        if os.geteuid() != 0:
            raise ServeError(f"cannot stop {owner}'s endpoint: the serve service does not run as root")
        argv = ["runuser", "-u", owner, "--", "env", *(f"{k}={v}" for k, v in env.items()), *argv]
    process = await asyncio.create_subprocess_exec(*argv, env=env, cwd="/", stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(f"{secret}\n".encode()), STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        process.kill()
        raise ServeError(f"the idle stop did not finish within {STOP_TIMEOUT_S} s") from None
    text = out.decode(errors="replace").strip()
    if process.returncode != 0:
        raise ServeError(f"exit code {process.returncode}: {text[-2000:]}")
    return text.splitlines()[-1] if text else "done"


def main(argv=None):
    """The child: `aif serve stop NAME` as the owner, with the idle reason recorded."""
    from . import manager

    name, seconds = (argv or sys.argv[1:])[:2]
    token = sys.stdin.readline().strip()  # the serve service's MLflow-only token for this stop, if any
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    endpoint = manager.stop(name, reason=idle_reason(float(seconds)))
    print(f"endpoint {name} stopped (Slurm job {endpoint.job_id} cancelled) {endpoint.stop_reason}")


if __name__ == "__main__":
    main()
