"""Nothing the platform starts outlives it: the death-of-parent guard is armed before a service's
start-up, the process record lets `aif up` refuse leftovers and `aif down` stop them.

Fast: real processes (the real MLflow service module, `aif up`/`aif down` as subprocesses), no
platform start-up."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from aifactory.common import envvars
from aifactory.common.net import free_port
from aifactory.common.procutil import ProcessRecord, start_time

AIF = [sys.executable, "-m", "aifactory.hub.cli"]

# a parent that starts the MLflow service as the hub does (own session, guarded, its pid in
# AIF_PARENT_PID) and dies during the service's start-up: at once, or once the guard is armed
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    state, record, when = sys.argv[1:4]
    cmd = [sys.executable, "-m", "aifactory.common.guarded", "aifactory.hub.tracking.service",
           "--state-dir", state, "--backend-store-uri", f"sqlite:///{state}/m.sqlite",
           "--auth-db-uri", f"sqlite:///{state}/a.sqlite", "--artifacts-destination", state,
           "--mlflow-port", "1"]
    env = {**os.environ, "AIF_PARENT_PID": str(os.getpid()), "AIF_PROCESS_RECORD": record,
           "JUPYTERHUB_SERVICE_NAME": "mlflow"}
    child = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(state, "service.err"), "w"))
    print(child.pid, flush=True)
    while when == "armed" and not os.path.exists(record):
        time.sleep(0.005)
    os._exit(0)
""")


def _gone_within(pid, seconds):
    deadline = time.monotonic() + seconds
    while start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _service_whose_parent_dies(tmp_path, when):
    state, record = tmp_path / "mlflow", tmp_path / "processes.jsonl"
    state.mkdir()
    out = subprocess.run([sys.executable, "-c", PARENT, str(state), str(record), when],
                         capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[0])
    try:
        assert _gone_within(pid, 30), f"the service (pid {pid}) outlived its parent ({when})"
    finally:
        if start_time(pid) is not None:
            os.killpg(pid, signal.SIGKILL)
    return state, record


def test_service_whose_parent_died_before_it_armed_the_guard_ends(tmp_path):
    state, _ = _service_whose_parent_dies(tmp_path, "at-once")
    # ended before its start-up did anything: no auth config, no MLflow server
    assert not (state / "auth.ini").exists() and not (state / "mlflow-server.log").exists()


def test_service_whose_parent_dies_during_its_imports_ends(tmp_path):
    state, record = _service_whose_parent_dies(tmp_path, "armed")
    # the guard was armed (and recorded) before the service's imports, so the death was noticed
    assert [e["name"] for e in ProcessRecord(record).entries()] == ["mlflow"]
    assert not (state / "mlflow-server.log").exists()


# --- the process record: refusing leftovers, stopping them ----------------------------------------

def _leftover(tmp_path, record, name="mlflow"):
    """A service left by a previous run: its own session, with a child in its group."""
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"],
        start_new_session=True,
    )
    record.add(name, leader.pid, leader.pid)
    deadline = time.monotonic() + 10
    while len(record.live()[0][1]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return leader


def aif(tmp_path, *args, env=None):
    return subprocess.run(AIF + list(args), capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


def test_up_refuses_live_leftovers_naming_them_and_down_stops_them(tmp_path):
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    record = ProcessRecord(state / "run" / "processes.jsonl")
    leader = _leftover(tmp_path, record)
    try:
        group = record.live()[0][1]
        refused = aif(tmp_path, "up", "--state-dir", str(state), "--port", str(free_port()))
        assert refused.returncode != 0
        assert f"processes of a previous run on {state} are still running" in refused.stderr
        assert all(f"{pid} (mlflow)" in refused.stderr for pid in group), refused.stderr
        assert f"aif down --state-dir {state}" in refused.stderr
        assert leader.poll() is None  # refusing touches nothing
        assert not (state / "logs" / "proxy.log").exists() and not (state / "logs" / "hub.log").exists()
        assert oct(os.stat(record.path).st_mode & 0o777) == "0o600"

        down = aif(tmp_path, "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert all(str(pid) in down.stdout for pid in group)
        assert leader.wait(10) is not None
        assert all(_gone_within(pid, 10) for pid in group)  # the leader's child too
        assert not record.path.exists()
        again = aif(tmp_path, "down", "--state-dir", str(state))
        assert again.returncode == 0 and "nothing of the platform" in again.stdout
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)


def test_a_record_of_processes_that_are_gone_does_not_block(tmp_path):
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    record = ProcessRecord(state / "run" / "processes.jsonl")
    dead = subprocess.Popen(["true"], start_new_session=True)
    record.add("mlflow", dead.pid, dead.pid)
    dead.wait()
    # a reused pid: alive, but not the recorded process (another start time)
    record.path.write_text(record.path.read_text() + f'{{"name": "hub", "pid": {os.getpid()}, '
                           f'"pgid": {os.getpgid(0)}, "start": 1}}\n')
    # with no proxy installed, `aif up` stops at that check, after the one for leftovers
    result = aif(tmp_path, "up", "--state-dir", str(state), "--port", str(free_port()),
                 env={envvars.CHP.name: str(tmp_path / "no-proxy")})
    assert result.returncode != 0
    assert "configurable-http-proxy" in result.stderr and "still running" not in result.stderr
    assert not record.path.exists()


def test_record_stop_kills_a_group_that_ignores_sigterm(tmp_path):
    record = ProcessRecord(tmp_path / "processes.jsonl")
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "subprocess.Popen(['sleep', '300']); print('ready', flush=True); time.sleep(300)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        record.add("stubborn", stubborn.pid, stubborn.pid)
        started = time.monotonic()
        stopped = record.stop(grace=1)
        assert stubborn.pid in stopped and len(stopped) == 2
        assert stubborn.wait(5) == -signal.SIGKILL
        assert time.monotonic() - started < 10
        assert record.live() == [] and not record.path.exists()
    finally:
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)


def test_the_hub_starts_every_managed_service_guarded(tmp_path, monkeypatch):
    """mlflow, the trainer page and the culler: run through common/guarded.py, told the hub's pid."""
    from traitlets.config import Config

    from aifactory.hub.platform import hubconfig

    ml = {"service_port": 1, "server_port": 2, "backend_store_uri": "sqlite:///x", "auth_db_uri": "sqlite:///y",
          "artifacts_destination": str(tmp_path), "workers": 1}
    runtime = {"state_dir": str(tmp_path), "public_url": "http://127.0.0.1:1", "hub_port": 3, "proxy_api_port": 4,
               "hub_db_url": "sqlite://", "admin_user": "admin", "admin_service_token": "t", "spawner": "slurm",
               "workshop_service_port": 5, "serve_service_port": 6, "mlflow": ml}
    (tmp_path / "runtime.json").write_text(json.dumps(runtime))
    monkeypatch.setenv(envvars.RUNTIME.name, str(tmp_path / "runtime.json"))
    c = Config()
    umask = os.umask(0o022)
    try:
        hubconfig.configure_hub(c)  # sets the hub process's private umask: not this test process's
    finally:
        os.umask(umask)
    managed = {s["name"]: s for s in c.JupyterHub.services if s.get("command")}
    assert set(managed) == {"mlflow", "serve", "workshops", "idle-culler"}
    for service in managed.values():
        assert service["command"][:3] == [sys.executable, "-m", "aifactory.common.guarded"]
        assert service["environment"][envvars.PARENT_PID.name] == str(os.getpid())
        assert service["environment"][envvars.PROCESS_RECORD.name] == str(tmp_path / "run" / "processes.jsonl")
    assert managed["mlflow"]["command"][3] == "aifactory.hub.tracking.service"
