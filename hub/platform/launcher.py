"""Start, watch and stop the whole platform: proxy, JupyterHub and (through the hub) MLflow.

Used by `aif up` / `aif status` and by the tests. The proxy runs outside the hub so that a hub
restart keeps every route, and ports are kept in <state_dir>/runtime.json so that users'
servers, which know the hub's API URL, stay reachable across restarts.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from ...common import envvars
from ...common.errors import AIFError
from ...common.files import open_private_log, private_dir, private_process, replace_private, secret_file, write_private
from ...common.net import free_port, port_is_free
from ...common.procutil import ProcessRecord, child_guard, stop_process_group
from ..auth import UsersFile
from . import hubconfig
from .config import build_platform_config, load_config_file, make_platform_settings

HUB_CONFIG = Path(__file__).with_name("jupyterhub_config.py")


class PlatformError(AIFError):
    """Something stops the platform from starting or running; the message says what and how to fix it."""


def find_chp():
    """configurable-http-proxy: $AIF_CHP if set, else the project-local install, else PATH."""
    explicit = envvars.CHP.get()
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise PlatformError(f"configurable-http-proxy not found at {envvars.CHP}={explicit}: fix {envvars.CHP} or "
                            "unset it to use the one `make install` puts under .venv/node")
    local = os.path.join(sys.prefix, "node", "node_modules", ".bin", "configurable-http-proxy")
    for candidate in (local, shutil.which("configurable-http-proxy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PlatformError(
        "configurable-http-proxy not found: run `make install` (it installs it under .venv/node), "
        f"or set {envvars.CHP} to its path"
    )


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _platform_child():
    """preexec_fn of the proxy and the hub: private files (the hub's database, MLflow's stores and
    artifacts, services' logs are made 0600 by them and their children), and no orphan."""
    guard = child_guard()  # checked against this launcher's pid, taken here, before the fork

    def preexec():
        private_process()
        guard()

    return preexec


class Platform:
    """The platform on one state directory."""

    def __init__(self, state_dir=None, port=None, spawner=None, config_file=None, extra_config="",
                 slurm_conf=None, env=None, auth=None, oidc=None):
        config, self.config_file = build_platform_config(
            state_dir, config_file, overrides={"port": port, "spawner": spawner, "auth": auth}
        )
        # command-line OIDC settings (aif up --oidc-*): AIFOIDCAuthenticator keys, winning over the file
        self.oidc_overrides = {k: v for k, v in (oidc or {}).items() if v is not None}
        for key, value in self.oidc_overrides.items():
            setattr(config.AIFOIDCAuthenticator, key, value)
        self.config = config
        self.settings, self.mlflow_settings = make_platform_settings(config)
        self.state = self.settings.state_path
        self.extra_config = extra_config
        self.slurm_conf = slurm_conf
        self.extra_env = dict(env or {})
        self.procs = {}
        self.reload_on_signal = False  # set by `aif up`, whose main loop restarts the hub on SIGUSR1

    # --- paths and secrets --------------------------------------------------------------------

    @property
    def url(self):
        return self.settings.public_url.rstrip("/")

    @property
    def mlflow_url(self):
        return f"{self.url}/services/{hubconfig.MLFLOW_SERVICE}"

    @property
    def admin_password_file(self):
        return self.state / "admin-password"

    @property
    def admin_password(self):
        return self.admin_password_file.read_text().strip()

    @property
    def users(self):
        return UsersFile(self.state / "users.json")

    def _prepare_state(self):
        """The state directory, the platform's account's alone: users reach runs and artifacts
        only through the MLflow service, never the databases or the artifact folders."""
        try:
            existed = self.state.is_dir()
            private_dir(self.state)
            if existed and self.state.stat().st_mode & 0o077:
                # a state directory from a release before private state: closing its top closes
                # everything under it (the files below were 0644 then)
                self.state.chmod(0o700)
            for sub in ("hub", "mlflow", "users", "logs", "run", "secrets"):
                private_dir(self.state / sub)
            write_private(self.state / "run" / ".write-test", "ok")
            (self.state / "run" / ".write-test").unlink()
        except OSError as err:
            raise PlatformError(
                f"state directory {self.state} is not writable ({err.strerror}): "
                "choose another with --state-dir"
            ) from None
        self._load_secrets()

    def _load_secrets(self):
        self.proxy_token = secret_file(self.state / "secrets" / "proxy_token")
        self.admin_service_token = secret_file(self.state / "secrets" / "admin_service_token")

    def _ensure_admin_account(self):
        name = self.settings.admin_user
        if name in self.users.read() and self.admin_password_file.exists():
            return
        password = self.users.add(name, admin=True, replace=True)
        self.admin_password_file.unlink(missing_ok=True)
        write_private(self.admin_password_file, password + "\n", exclusive=True)

    @property
    def crypt_key_file(self):
        return self.state / "secrets" / "crypt_key"

    def _check_auth(self):
        """With --auth oidc: the provider and every login setting checked before anything starts."""
        if self.settings.auth != "oidc":
            return
        from ..oidc import AIFOIDCAuthenticator

        try:
            authenticator = AIFOIDCAuthenticator(config=self._oidc_config())
            authenticator.check_settings()
        except AIFError as err:
            raise PlatformError(f"federated login (--auth oidc): {err}") from None
        # auth_state (the provider's tokens) is kept encrypted with this key (JUPYTERHUB_CRYPT_KEY)
        secret_file(self.crypt_key_file)

    def _oidc_config(self):
        """The platform's OIDC defaults under the site's settings, as the hub will see them."""
        from traitlets.config import Config

        config = Config()
        config.AIFOIDCAuthenticator.update(hubconfig.oidc_defaults(self.url, self.state))
        effective = self._effective_config_file()  # the very lines the hub will load
        config.merge(load_config_file(effective) if effective else self.config)
        return config

    def _effective_config_file(self):
        """The site file plus any extra lines (tests), as the one file the hub loads."""
        parts = []
        if self.config_file:
            parts.append(Path(self.config_file).read_text())
        if self.extra_config:
            parts.append(self.extra_config)
        if self.oidc_overrides:  # last: the command line wins over the file, as for `aif up` itself
            parts.append("\n".join(f"c.AIFOIDCAuthenticator.{key} = {value!r}"
                                    for key, value in self.oidc_overrides.items()))
        if not parts:
            return None
        path = self.state / "run" / "effective_config.py"
        replace_private(path, "\n\n".join(parts) + "\n")
        return path

    # --- ports ---------------------------------------------------------------------------------

    def _runtime_path(self):
        return self.state / "runtime.json"

    def _pick_ports(self):
        """Reuse last start's internal ports where free: running servers know the hub's URL."""
        previous = {}
        if self._runtime_path().exists():
            previous = json.loads(self._runtime_path().read_text())
        taken = {self.settings.port}

        def pick(key, old):
            port = old if old and old not in taken and port_is_free(old) else free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        ml_prev = previous.get("mlflow", {})
        return {
            "hub_port": pick("hub", previous.get("hub_port")),
            "proxy_api_port": pick("proxy_api", previous.get("proxy_api_port")),
            "mlflow_service_port": pick("mlflow_service", ml_prev.get("service_port")),
            "mlflow_server_port": pick("mlflow_server", ml_prev.get("server_port")),
            "workshop_service_port": pick("workshop_service", previous.get("workshop_service_port")),
            "serve_service_port": pick("serve_service", previous.get("serve_service_port")),
        }

    def _write_runtime(self, ports):
        ml = self.mlflow_settings
        mlflow_dir = self.state / "mlflow"
        backend = ml.backend_store_uri or f"sqlite:///{mlflow_dir / 'mlflow.sqlite'}"
        self.runtime = {
            "state_dir": str(self.state),
            "public_url": self.url,
            "hub_port": ports["hub_port"],
            "proxy_api_port": ports["proxy_api_port"],
            "hub_db_url": self.settings.hub_db_url,
            "admin_user": self.settings.admin_user,
            "admin_service_token": self.admin_service_token,
            "spawner": self.settings.spawner,
            "auth": self.settings.auth,
            "workshop_service_port": ports["workshop_service_port"],
            "serve_service_port": ports["serve_service_port"],
            "slurm_conf": str(self.slurm_conf or ""),
            "mlflow": {
                "service_port": ports["mlflow_service_port"],
                "server_port": ports["mlflow_server_port"],
                "backend_store_uri": backend,
                "auth_db_uri": ml.auth_db_uri or f"sqlite:///{mlflow_dir / 'auth.sqlite'}",
                "artifacts_destination": ml.artifacts_destination or str(mlflow_dir / "artifacts"),
                "workers": ml.workers,
                "assistant": ml.assistant,
            },
        }
        replace_private(self._runtime_path(), json.dumps(self.runtime, indent=1))

    # --- processes -----------------------------------------------------------------------------

    @property
    def record(self):
        """Every process of this state directory, services included (common/procutil.py)."""
        return ProcessRecord(self.state / "run" / "processes.jsonl")

    def _check_not_running(self):
        """Refuse to start over a running platform or leftovers of a previous run (they hold the
        databases and ports); a record of processes that are all gone is just removed."""
        live = self.record.live()
        if not live:
            self.record.forget_gone()
            return
        named = ", ".join(f"{pid} ({entry['name']})" for entry, pids in live for pid in pids)
        launchers = [pids[0] for entry, pids in live if entry["name"] == "launcher"]
        how = f"`aif down --state-dir {self.state}`"
        if launchers:
            raise PlatformError(f"the platform on {self.state} is already running (launcher pid {launchers[0]}; "
                                f"processes {named}): stop it first (Ctrl-C in its terminal, or {how})")
        raise PlatformError(f"processes of a previous run on {self.state} are still running: {named}; "
                            f"stop them with {how} (or kill those pids), then start again")

    def _check_port(self):
        if not port_is_free(self.settings.port, self.settings.ip):
            raise PlatformError(
                f"port {self.settings.port} on {self.settings.ip} is already in use: "
                "stop what uses it or pass --port with a free port"
            )

    def _spawn(self, name, cmd, env, cwd):
        log = open_private_log(self.state / "logs" / f"{name}.log")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_platform_child())
        log.close()
        self.procs[name] = proc
        self.record.add(name, proc.pid, proc.pid)
        return proc

    def _start_proxy(self, chp):
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}
        hub = f"http://127.0.0.1:{self.runtime['hub_port']}"
        cmd = [
            chp, "--ip", self.settings.ip, "--port", str(self.settings.port),
            "--api-ip", "127.0.0.1", "--api-port", str(self.runtime["proxy_api_port"]),
            "--default-target", hub, "--error-target", f"{hub}/hub/error", "--log-level", "warn",
        ]
        self._spawn("proxy", cmd, env, self.state / "run")

    def _hub_env(self):
        env = {**os.environ, **self.extra_env}
        env.update({
            envvars.RUNTIME.name: str(self._runtime_path()),
            envvars.STATE_DIR.name: str(self.state),
            "CONFIGPROXY_AUTH_TOKEN": self.proxy_token,
            "PYTHONUNBUFFERED": "1",
        })
        effective = self._effective_config_file()
        if effective:
            env[envvars.CONFIG_FILE.name] = str(effective)
        else:
            env.pop(envvars.CONFIG_FILE.name, None)
        if self.slurm_conf:
            env["SLURM_CONF"] = str(self.slurm_conf)
        if self.settings.auth == "oidc":
            env["JUPYTERHUB_CRYPT_KEY"] = self.crypt_key_file.read_text().strip()
        return env

    def _start_hub(self):
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)]
        self._spawn("hub", cmd, self._hub_env(), self.state / "hub")

    def start(self, timeout=180):
        """Start everything and wait until it is healthy; on failure, stop what was started."""
        self._prepare_state()
        self._check_not_running()
        self._check_port()
        chp = find_chp()
        self._check_auth()  # a wrong issuer or secret: one error, nothing started
        self._ensure_admin_account()
        self._write_runtime(self._pick_ports())
        try:
            self.record.add("launcher", os.getpid(), None)  # a live launcher: "already running"
            self._start_proxy(chp)
            self._start_hub()
            self._write_platform_file()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop(stop_servers=False)
            raise
        return self

    def wait_healthy(self, timeout=180, only=None):
        deadline = time.monotonic() + timeout
        failing = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise PlatformError(f"{name} exited with code {proc.returncode}: {self.log_tail(name)}")
            failing = self.failing_component(only)
            if failing is None:
                return
            time.sleep(0.25)
        raise PlatformError(f"{failing[0]} not healthy after {timeout}s ({failing[1]}); logs in {self.state / 'logs'}")

    def log_tail(self, name, lines=5):
        path = self.state / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def restart_hub(self, timeout=120, only=None):
        """Stop only the hub (users' servers and the proxy keep running) and start it again;
        wait until `only` these components (default: all) are healthy."""
        self._stop_proc("hub")
        # services the old hub did not stop (it stops them only once fully started) hold ports
        self.record.stop(skip=("launcher", "proxy"))
        self._start_hub()
        self._write_platform_file()
        self.wait_healthy(timeout, only)

    def reload_hub(self, timeout=180):
        """Restart the hub so that it reads changed configuration (workshops' roles), from any process.

        The process that started the platform restarts its own hub; another process (an `aif`
        command) asks the `aif up` launcher with SIGUSR1 and waits for the new hub to be healthy.
        """
        if self.procs.get("hub"):
            return self.restart_hub(timeout, only=("hub", "proxy"))
        info = self.read_platform_file()
        launcher, old_hub = info.get("launcher"), (info.get("pids") or {}).get("hub")
        if not launcher or not pid_alive(launcher):
            raise PlatformError(f"no `aif up` is running on {self.state}: start the platform first")
        os.kill(launcher, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hub = (self.read_platform_file().get("pids") or {}).get("hub")
            # the hub's own answer is what matters here; MLflow (a hub service) follows on its own
            if hub and hub != old_hub and self.failing_component(only=("hub", "proxy")) is None:
                return None
            time.sleep(0.5)
        raise PlatformError(f"the hub did not come back within {timeout}s after a restart; "
                            f"see {self.state / 'logs' / 'hub.log'}")

    def stop(self, stop_servers=None):
        """Stop every process this platform started; users' servers too unless configured to keep them."""
        if stop_servers is None:
            stop_servers = not self.settings.keep_servers_on_stop
        if stop_servers and "hub" in self.procs and self.procs["hub"].poll() is None:
            self.stop_all_servers()
        for name in ("hub", "proxy"):
            self._stop_proc(name)
        # the hub's services run in their own sessions, and a hub stopped while starting them
        # dies without stopping them: stop every recorded group that is still there
        self.record.stop(skip=("launcher",))
        self.record.forget_gone(also=(os.getpid(),))
        self.procs.clear()
        self._platform_file().unlink(missing_ok=True)

    def _stop_proc(self, name, timeout=30):
        stop_process_group(self.procs.get(name), timeout)

    def down(self, timeout=120):
        """Stop the platform on this state directory from another process (`aif down`): ask a
        live launcher to stop (SIGTERM, it cleans up as on Ctrl-C), then stop what is left.
        Returns the pids that were still running."""
        launchers = self._live_launchers()
        for pid in launchers:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._live_launchers():
            if time.monotonic() > deadline:
                raise PlatformError(f"the launcher (pid {launchers[0]}) did not stop within {timeout}s: kill it")
            time.sleep(0.25)
        stopped = self.record.stop()
        self.record.forget_gone()
        return sorted(set(launchers) | set(stopped))

    def _live_launchers(self):
        return [pids[0] for entry, pids in self.record.live() if entry["name"] == "launcher"]

    # --- the hub API -----------------------------------------------------------------------------

    def api(self, method, path, token=None, **kwargs):
        url = f"http://127.0.0.1:{self.runtime['hub_port']}/hub/api{path}"
        headers = {"Authorization": f"token {token or self.admin_service_token}"}
        return requests.request(method, url, headers=headers, timeout=60, **kwargs)

    def admin_token(self):
        return self.admin_service_token

    def add_user(self, name, password=None, admin=False, groups=()):
        """An account in the users file, created in the hub with its groups right away."""
        password = self.users.add(name, password=password, admin=admin, groups=groups)
        self.sync_user(name, admin=admin, groups=groups)
        return password

    def sync_user(self, name, admin=False, groups=()):
        response = self.api("GET", f"/users/{name}")
        if response.status_code == 404:
            self.api("POST", f"/users/{name}").raise_for_status()
        self.api("PATCH", f"/users/{name}", json={"admin": admin}).raise_for_status()
        for group in groups:
            if self.api("GET", f"/groups/{group}").status_code == 404:
                self.api("POST", f"/groups/{group}").raise_for_status()
            self.api("POST", f"/groups/{group}/users", json={"users": [name]}).raise_for_status()

    def user_token(self, name, note="aif"):
        response = self.api("POST", f"/users/{name}/tokens", json={"note": note})
        response.raise_for_status()
        return response.json()["token"]

    def stop_all_servers(self, timeout=60):
        try:
            users = self.api("GET", "/users", params={"state": "active"}).json()
        except (requests.RequestException, ValueError):
            return
        for user in users:
            for server_name in user.get("servers", {}):
                path = f"/users/{user['name']}/servers/{server_name}" if server_name else f"/users/{user['name']}/server"
                self.api("DELETE", path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.api("GET", "/users", params={"state": "active"}).json():
                    return
            except (requests.RequestException, ValueError):
                return
            time.sleep(0.5)

    # --- health ----------------------------------------------------------------------------------

    def health_checks(self):
        """(component, url) pairs: each must answer 200."""
        return [
            ("hub", f"http://127.0.0.1:{self.runtime['hub_port']}/hub/health"),
            ("proxy", f"{self.url}/hub/health"),
            ("mlflow", f"{self.mlflow_url}/aif/health"),
        ]

    def check_health(self):
        results = {}
        for name, url in self.health_checks():
            try:
                response = requests.get(url, timeout=5, allow_redirects=False)
                results[name] = "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
            except requests.RequestException as err:
                results[name] = f"unreachable ({type(err).__name__})"
        return results

    def failing_component(self, only=None):
        for name, state in self.check_health().items():
            if state != "ok" and (only is None or name in only):
                return name, state
        return None

    # --- platform.json: what `aif status` reads ----------------------------------------------------

    def _platform_file(self):
        return self.state / "platform.json"

    def _write_platform_file(self):
        info = {"url": self.url, "pids": {n: p.pid for n, p in self.procs.items()}, "started": time.time()}
        if self.reload_on_signal:
            info["launcher"] = os.getpid()  # takes SIGUSR1: restart the hub (see reload_hub)
        replace_private(self._platform_file(), json.dumps(info, indent=1))

    def read_platform_file(self):
        try:
            return json.loads(self._platform_file().read_text())
        except (FileNotFoundError, ValueError):
            return {}

    @classmethod
    def attach(cls, state_dir=None, config_file=None):
        """The platform as recorded in a state directory (for `aif status`)."""
        platform = cls(state_dir=state_dir, config_file=config_file)
        try:
            platform.runtime = json.loads(platform._runtime_path().read_text())
        except FileNotFoundError:
            raise PlatformError(f"no platform has been started on {platform.state} (no runtime.json)") from None
        platform.settings.public_url = platform.runtime["public_url"]
        platform._load_secrets()
        return platform

