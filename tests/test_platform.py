"""The platform on real components: hub + proxy + MLflow service, logged into over HTTP."""

import os
import subprocess
import sys
from pathlib import Path

import requests

from aifactory.common.net import free_port
from aifactory.hub.testing.kernel import run_in_kernel
from aifactory.hub.testing.platform import login, open_lab, unique_user

AIF = [sys.executable, "-m", "aifactory.hub.cli"]

LOG_FROM_SESSION = r"""
import os, tempfile, mlflow
print("uri", os.environ["MLFLOW_TRACKING_URI"])
with mlflow.start_run() as run:
    for step in range(50):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    open(path, "w").write("hello from the session")
    mlflow.log_artifact(path)
mlflow.flush_async_logging()
print("run", run.info.run_id)
"""


def api(platform, token, method, endpoint, version=2, headers=None, **kwargs):
    url = f"{platform.mlflow_url}/api/{version}.0/mlflow/{endpoint}"
    headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


def new_run(platform, token, experiment_name):
    created = api(platform, token, "POST", "experiments/create", json={"name": experiment_name})
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    run = api(platform, token, "POST", "runs/create", json={"experiment_id": experiment_id})
    assert run.status_code == 200, run.text
    return experiment_id, run.json()["run"]["info"]["run_id"]


def test_session_logs_to_mlflow_with_zero_configuration(platform):
    check_session_logging(platform)


def check_session_logging(platform):
    """Log in with the generated admin password, start the server, log from inside it, read back."""
    admin = platform.settings.admin_user
    session = login(platform.url, admin, platform.admin_password)
    open_lab(session, platform.url, admin)
    token = platform.user_token(admin)
    out = run_in_kernel(f"{platform.url}/user/{admin}", token, LOG_FROM_SESSION)
    assert f"uri {platform.mlflow_url}" in out
    run_id = out.split("run ")[-1].strip()

    run = api(platform, token, "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert run["info"]["user_id"] == admin
    assert {"key": "mlflow.user", "value": admin} in run["data"]["tags"]
    history = api(platform, token, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss"})
    assert len(history.json()["metrics"]) == 50
    artifact = requests.get(
        f"{platform.mlflow_url}/get-artifact", params={"run_id": run_id, "path": "notes.txt"},
        headers={"Authorization": f"Bearer {token}"}, timeout=60,
    )
    assert artifact.text == "hello from the session"
    # the experiment is the user's own default, created on first use
    experiment = api(platform, token, "GET", "experiments/get", params={"experiment_id": run["info"]["experiment_id"]})
    assert experiment.json()["experiment"]["name"] == f"{admin}/default"

    # the browser's way in: the hub's OAuth cookie opens the MLflow UI without a second password
    ui = session.get(f"{platform.mlflow_url}/", timeout=60)
    assert ui.status_code == 200 and "mlflow" in ui.text.lower()


def test_unauthenticated_requests_are_refused(platform):
    api_call = requests.get(f"{platform.mlflow_url}/api/2.0/mlflow/experiments/search", timeout=30)
    assert api_call.status_code == 403
    assert api_call.json()["error_code"] == "UNAUTHENTICATED"
    page = requests.get(f"{platform.mlflow_url}/", allow_redirects=False, timeout=30)
    assert page.status_code == 302 and "/hub/api/oauth2/authorize" in page.headers["Location"]
    bad_token = requests.get(f"{platform.mlflow_url}/api/2.0/mlflow/experiments/search",
                             headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert bad_token.status_code == 403


def test_direct_mlflow_port_is_useless_without_the_bridge(platform):
    """MLflow listens on loopback; without the bridge's secret a forged identity header gets nothing."""
    port = platform.runtime["mlflow"]["server_port"]
    response = requests.get(
        f"http://127.0.0.1:{port}/services/mlflow/api/2.0/mlflow/experiments/search",
        headers={"X-Aif-User": platform.settings.admin_user}, timeout=30,
    )
    assert response.status_code == 401


def test_runs_belong_to_who_made_them(platform):
    alice, bob = unique_user("alice"), unique_user("bob")
    platform.add_user(alice)
    platform.add_user(bob)
    ta, tb = platform.user_token(alice), platform.user_token(bob)
    experiment_id, run_id = new_run(platform, ta, f"{alice}/attribution")

    # a client cannot claim another name, by field, tag or header
    own_exp, own_run = new_run(platform, tb, f"{bob}/mine")
    forged = api(platform, tb, "POST", "runs/create", headers={"X-Aif-User": alice},
                 json={"experiment_id": own_exp, "user_id": alice, "tags": [{"key": "mlflow.user", "value": alice}]})
    assert forged.status_code == 200, forged.text
    run = forged.json()["run"]
    assert run["info"]["user_id"] == bob
    assert [t["value"] for t in run["data"]["tags"] if t["key"] == "mlflow.user"] == [bob]
    relabel = api(platform, tb, "POST", "runs/set-tag", json={"run_id": own_run, "key": "mlflow.user", "value": alice})
    assert relabel.status_code == 403 and "mlflow.user" in relabel.json()["message"]
    batch = api(platform, tb, "POST", "runs/log-batch",
                json={"run_id": own_run, "tags": [{"key": "mlflow.user", "value": alice}]})
    assert batch.status_code == 403

    # bob cannot write into alice's experiment or run, whatever headers he sends
    write = api(platform, tb, "POST", "runs/log-metric", headers={"X-Aif-User": alice},
                json={"run_id": run_id, "key": "x", "value": 1, "timestamp": 0})
    assert write.status_code == 403
    into = api(platform, tb, "POST", "runs/create", json={"experiment_id": experiment_id})
    assert into.status_code == 403
    # names under alice's prefix are hers
    squat = api(platform, tb, "POST", "experiments/create", json={"name": f"{alice}/squatted"})
    assert squat.status_code == 403


def test_experiments_are_private_until_shared_read_only(platform):
    owner, evaluator, outsider = unique_user("own"), unique_user("eva"), unique_user("out")
    platform.add_user(owner)
    platform.add_user(evaluator, groups=["evaluators"])
    platform.add_user(outsider)
    to, te, tx = (platform.user_token(u) for u in (owner, evaluator, outsider))
    experiment_id, run_id = new_run(platform, to, f"{owner}/confidential")

    def visible_to(token):
        listing = api(platform, token, "POST", "experiments/search", json={"max_results": 1000})
        return experiment_id in {e["experiment_id"] for e in listing.json().get("experiments", [])}

    def can_read(token):
        return api(platform, token, "GET", "runs/get", params={"run_id": run_id}).status_code == 200

    assert not visible_to(te) and not can_read(te)
    # only the owner may share
    refused = requests.post(f"{platform.mlflow_url}/aif/share", json={"experiment_id": experiment_id, "group": "evaluators"},
                            headers={"Authorization": f"Bearer {tx}"}, timeout=30)
    assert refused.status_code == 403
    shared = requests.post(f"{platform.mlflow_url}/aif/share", json={"experiment_id": experiment_id, "group": "evaluators"},
                           headers={"Authorization": f"Bearer {to}"}, timeout=30)
    assert shared.status_code == 200, shared.text
    assert visible_to(te) and can_read(te)
    write = api(platform, te, "POST", "runs/log-metric", json={"run_id": run_id, "key": "x", "value": 1, "timestamp": 0})
    assert write.status_code == 403
    assert not can_read(tx), "a user outside the group still sees nothing"

    unshared = requests.delete(f"{platform.mlflow_url}/aif/share", json={"experiment_id": experiment_id, "group": "evaluators"},
                               headers={"Authorization": f"Bearer {to}"}, timeout=30)
    assert unshared.status_code == 200
    assert not can_read(te)
    # admins see everything
    assert can_read(platform.user_token(platform.settings.admin_user))


def test_restart_keeps_users_and_runs_and_stop_leaves_nothing(platform_factory, tmp_path):
    state = tmp_path / "restart"
    first = platform_factory(state)
    user = unique_user("keep")
    password = first.add_user(user)
    token = first.user_token(user)
    _, run_id = new_run(first, token, f"{user}/kept")
    pids = list(first.read_platform_file()["pids"].values())
    first.stop()
    assert not any(_alive(pid) for pid in pids)
    assert not _processes_mentioning(state), "a process of the stopped platform is still running"

    second = platform_factory(state)
    session = login(second.url, user, password)
    assert session.get(f"{second.url}/hub/home", timeout=30).status_code == 200
    assert api(second, token, "GET", "runs/get", params={"run_id": run_id}).status_code == 200


def test_status_reports_health(platform, tmp_path):
    ok = subprocess.run(AIF + ["status", "--state-dir", str(platform.state)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for part in ("hub", "proxy", "mlflow"):
        assert f"{part}" in ok.stdout and "ok" in ok.stdout
    never = subprocess.run(AIF + ["status", "--state-dir", str(tmp_path / "none")], capture_output=True, text=True)
    assert never.returncode != 0 and "no platform has been started" in never.stderr


def test_status_names_the_failing_part(platform_factory):
    p = platform_factory()
    p._stop_proc("proxy")
    result = subprocess.run(AIF + ["status", "--state-dir", str(p.state)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "not healthy: proxy" in result.stderr


def test_config_show_prints_effective_values(tmp_path):
    config = tmp_path / "aif_config.py"
    config.write_text("c.AIFPlatform.port = 9321\nc.MLflowService.workers = 3\n")
    result = subprocess.run(AIF + ["config", "show", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "AIFPlatform.port = 9321" in result.stdout
    assert "MLflowService.workers = 3" in result.stdout
    assert f"config file: {config}" in result.stdout


# --- bad input: one line naming the problem and the fix, nothing left running ----------------------

def aif_up(tmp_path, *args, env=None, timeout=120):
    return subprocess.run(AIF + ["up", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=tmp_path)


def test_port_in_use_is_refused(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = aif_up(tmp_path, "--state-dir", str(tmp_path / "s"), "--port", str(port))
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert not _processes_mentioning(tmp_path / "s")


def test_unwritable_state_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = aif_up(tmp_path, "--state-dir", str(blocker / "state"), "--port", str(free_port()))
    assert result.returncode != 0
    assert "is not writable" in result.stderr and "--state-dir" in result.stderr


def test_malformed_config_is_refused(tmp_path):
    bad = tmp_path / "bad_config.py"
    bad.write_text("c.AIFPlatform.port = \n")
    result = aif_up(tmp_path, "--config", str(bad), "--state-dir", str(tmp_path / "s"))
    assert result.returncode != 0
    assert f"config file {bad}, line 1" in result.stderr
    wrong_type = tmp_path / "typed.py"
    wrong_type.write_text("c.AIFPlatform.spawner = 'kubernetes'\n")
    result = aif_up(tmp_path, "--config", str(wrong_type), "--state-dir", str(tmp_path / "s"))
    assert result.returncode != 0 and "'kubernetes' is not one of" in result.stderr


def test_missing_proxy_is_refused(tmp_path):
    result = aif_up(tmp_path, "--state-dir", str(tmp_path / "s"), "--port", str(free_port()),
                    env={"AIF_CHP": str(tmp_path / "no-such-proxy")})
    assert result.returncode != 0
    assert "configurable-http-proxy" in result.stderr and "make install" in result.stderr
    assert not _processes_mentioning(tmp_path / "s")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(path):
    """Live processes whose command line or environment mentions the state directory."""
    needle = str(path).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_killed_launcher_leaves_no_process(tmp_path):
    """`aif up` killed with SIGKILL (no chance to clean up): proxy, hub and MLflow go with it."""
    import signal
    import time

    state = tmp_path / "killed"
    launcher = subprocess.Popen(AIF + ["up", "--state-dir", str(state), "--port", str(free_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in launcher.stdout:
            if "is up" in line:
                break
        else:
            raise AssertionError("aif up did not come up")
        assert len(_processes_mentioning(state)) >= 3  # proxy, hub, MLflow service (+ server)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 60
        while _processes_mentioning(state) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(state), "processes outlived their killed launcher"
    finally:
        launcher.kill()
