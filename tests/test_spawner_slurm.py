"""AIFSlurmSpawner end to end: real JupyterHub + CHP + the Slurm mini-cluster + real Unix users.

One cluster and one hub for the module; tests run in file order and build on each other's
sessions (alice and carol stay up from the first test to the restart and outage tests).
"""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from aifactory.hub.testing.spawner_lab import SpawnerLab
from aifactory.hub.testing.cluster import mini_cluster

pytestmark = pytest.mark.slurm

ALICE, BOB, CAROL, DAVE, ERIN = (f"aif-{n}" for n in ("alice", "bob", "carol", "dave", "erin"))
USERS = (ALICE, BOB, CAROL, DAVE, ERIN)
POLL = 2  # Spawner.poll_interval of the test hub, seconds

HUB_CONFIG = f"""
from aifactory.hub.culler import add_idle_culler
add_idle_culler(c, timeout=3600, cull_every=600)
c.Spawner.poll_interval = {POLL}
c.AIFSlurmSpawner.startup_poll_interval = 0.2
c.AIFSlurmSpawner.start_timeout = 120
c.AIFSlurmSpawner.group_limits = {{"sme": {{"max_gpus": 2, "max_hours": 8}}}}
c.AIFSlurmSpawner.profiles = [
    {{"name": "gpu-1", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 1, "max_gpus": 4,
      "cpus": 1, "memory_gb": 1, "max_memory_gb": 8, "hours": 1, "max_hours": 24}},
    {{"name": "big", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 4, "max_gpus": 4,
      "cpus": 1, "memory_gb": 1}},
    {{"name": "broken", "partition": "cpu", "cpus": 1, "memory_gb": 1,
      "image": "/nonexistent/session.sif"}},
]
"""


@pytest.fixture(scope="module")
def cluster():
    with mini_cluster("aif-spawner-cluster-", USERS) as mini:
        yield mini


@pytest.fixture(scope="module")
def hub(cluster, tmp_path_factory):
    lab = SpawnerLab(tmp_path_factory.mktemp("hub"), extra_config=HUB_CONFIG, env=cluster.env())
    try:
        lab.start()
        for user in USERS:
            lab.add_user(user, groups=["sme"] if user == BOB else [])
        lab.tokens = {user: lab.user_token(user) for user in USERS}
        yield lab
    finally:
        lab.stop()


def spawn(hub, user, **options):
    return hub.api("POST", f"/users/{user}/server", json=options, timeout=60)


def reach(hub, user):
    """GET the user's JupyterLab server API through the proxy, as the user."""
    headers = {"Authorization": f"token {hub.tokens[user]}"}
    return requests.get(f"{hub.url}/user/{user}/api/status", headers=headers, timeout=10)


def server_env(user):
    for proc in psutil.process_iter(["username", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["username"] == user and "jupyterhub-singleuser" in cmdline:
            return proc.environ()
    raise AssertionError(f"no jupyterhub-singleuser process of {user}")


def login(hub, user):
    """A browser-like session logged in through the hub's login form."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login")
    response = session.post(f"{hub.url}/hub/login", data={
        "username": user, "password": hub.password, "_xsrf": session.cookies.get("_xsrf")})
    assert response.status_code == 200 and "/hub/login" not in response.url, response.url
    return session


def jobs_of(cluster, user):
    return cluster.run(["squeue", "-h", "-u", user, "-o", "%i"]).stdout.split()


def progress_events(hub, user, until, timeout=90):
    """Read the spawn-pending page's event stream until `until(event)` or the stream ends."""
    events = []
    url = f"{hub.url}/hub/api/users/{user}/server/progress"
    with requests.get(url, headers={"Authorization": f"token {hub.token}"}, stream=True, timeout=timeout) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if until(events[-1]):
                    break
    return events


def test_two_users_at_once_get_reachable_sessions_with_disjoint_gpus(hub, cluster):
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda u: spawn(hub, u, profile="gpu-1", gpus=1), (ALICE, CAROL)))
    assert all(r.status_code in (201, 202) for r in responses), [r.text for r in responses]
    for user in (ALICE, CAROL):
        hub.wait_ready(user)
        assert reach(hub, user).status_code == 200
    envs = {user: server_env(user) for user in (ALICE, CAROL)}
    gpus = {user: env["CUDA_VISIBLE_DEVICES"] for user, env in envs.items()}
    assert all(re.fullmatch(r"[0-3]", g) for g in gpus.values()) and gpus[ALICE] != gpus[CAROL]
    for user, env in envs.items():
        assert env["AIF_SLURM_JOB_ID"] == env["SLURM_JOB_ID"] and jobs_of(cluster, user) == [env["SLURM_JOB_ID"]]
        assert env["AIF_GPUS"] == gpus[user] and env["AIF_SLURM_NODE"] == cluster.node_name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["AIF_WALLTIME_END"])


@pytest.mark.parametrize("options, field", [
    ({"gpus": 3}, "gpus"),  # bob's group sme: at most 2 GPUs
    ({"hours": 9}, "hours"),  # ... and 8 hours
    ({"partition": "cpu"}, "partition"),
    ({"profile": "big"}, "profile"),
    ({"profile": "gpu-1\n#SBATCH --uid=0"}, "profile"),
    ({"gpus": "1\n#SBATCH --exclusive"}, "gpus"),
    ({"gpus": "$(id)"}, "gpus"),
    ({"gpu_type": "`id`"}, "gpu_type"),
    ({"cmd": "/bin/sh"}, "cmd"),
    ({"homedir": "/root"}, "homedir"),
    ({"keepvars": "LD_PRELOAD"}, "keepvars"),
])
def test_over_limit_and_injection_requests_are_refused_before_submission(hub, cluster, options, field):
    response = spawn(hub, BOB, **options)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(f"Invalid resource request: {field}:")
    assert jobs_of(cluster, BOB) == []
    assert hub.api("GET", f"/users/{BOB}").json()["server"] is None


def test_spawn_form_offers_only_what_the_group_allows_and_validates_the_same_way(hub, cluster):
    session = login(hub, BOB)
    form = session.get(f"{hub.url}/hub/spawn").text
    assert 'name="gpus@gpu-1" min="1" max="2"' in form and 'value="big"' not in form
    refused = session.post(f"{hub.url}/hub/spawn", data={
        "profile": "gpu-1", "gpus@gpu-1": "3", "hours@gpu-1": "1", "_xsrf": session.cookies.get("_xsrf")})
    assert "gpus: 3 is outside the allowed range 1..2" in refused.text
    assert jobs_of(cluster, BOB) == []


def test_a_refused_request_is_not_remembered_and_sessions_keep_files_private(hub, cluster):
    # JupyterHub saves a request's user_options before the spawner validates them; a refused
    # one must not become the default of the next (empty) start
    assert spawn(hub, BOB, gpus=3).status_code == 400
    started = hub.api("POST", f"/users/{BOB}/server", timeout=60)
    assert started.status_code in (201, 202), started.text
    try:
        hub.wait_ready(BOB)
        env = server_env(BOB)
        assert env["AIF_GPUS"] != "" and len(env["AIF_GPUS"].split(",")) == 1  # gpu-1's default: 1 GPU
        assert process_umask(BOB) == 0o077  # the batch script's umask, for the session and its jobs
    finally:
        hub.api("DELETE", f"/users/{BOB}/server", timeout=60)
        deadline = time.monotonic() + 60
        while jobs_of(cluster, BOB) and time.monotonic() < deadline:
            time.sleep(0.5)


def process_umask(user):
    for proc in psutil.process_iter(["username", "cmdline"]):
        if proc.info["username"] == user and "jupyterhub-singleuser" in " ".join(proc.info["cmdline"] or []):
            status = open(f"/proc/{proc.pid}/status").read()
            return int(re.search(r"^Umask:\s+(\d+)", status, re.M).group(1), 8)
    raise AssertionError(f"no jupyterhub-singleuser process of {user}")


def test_server_token_may_only_report_its_port(hub):
    headers = {"Authorization": f"token {hub.tokens[ALICE]}"}
    response = requests.post(f"{hub.url}/hub/api/batchspawner", json={"exec_prefix": "true;"}, headers=headers)
    assert response.status_code == 400


def test_queued_session_shows_position_reason_then_node(hub, cluster):
    # alice and carol hold 2 of the 4 GPUs; a blocker takes the other 2 so erin's job must queue
    blocker = cluster.run(["sbatch", "--parsable", "-p", "gpu", "--gres=gpu:h200:2", "--mem=100M", "-o", "/dev/null",
                           "--wrap", "sleep 600"]).stdout.strip()
    try:
        assert spawn(hub, ERIN, profile="gpu-1", gpus=1).status_code in (201, 202)
        events = progress_events(hub, ERIN, until=lambda e: "Queued" in e.get("message", ""))
        queued = events[-1]["message"]
        assert "position 1 in the queue" in queued and "waiting for: Resources" in queued, events
    finally:
        cluster.run(["scancel", blocker])
    events = progress_events(hub, ERIN, until=lambda e: e.get("ready") or e.get("failed"))
    assert any(f"started on node {cluster.node_name}" in e["message"] for e in events), events
    assert events[-1].get("ready"), events
    assert hub.api("DELETE", f"/users/{ERIN}/server", timeout=60).status_code in (202, 204)


def test_job_dying_during_start_shows_slurm_state_and_output(hub):
    assert spawn(hub, DAVE, profile="broken").status_code in (201, 202, 500)
    events = progress_events(hub, DAVE, until=lambda e: e.get("failed"))
    message = events[-1]["message"]
    assert events[-1].get("failed") and "Slurm job" in message and "FAILED" in message, events
    # without Apptainer: "apptainer: command not found"; with it: it cannot open the image
    assert "Last lines of" in message and ("apptainer" in message or "session.sif" in message)


def test_controller_outage_of_30s_keeps_running_sessions(hub, cluster):
    cluster.stop_controller()
    try:
        time.sleep(30)  # several hub poll rounds see squeue fail
        assert hub.api("GET", f"/users/{ALICE}").json()["server"], "the hub dropped a session during the outage"
    finally:
        cluster.start_controller()
    assert "Slurm state unknown" in hub.log_text()
    assert reach(hub, ALICE).status_code == 200
    time.sleep(POLL * 2)  # polls with the controller back
    assert hub.api("GET", f"/users/{ALICE}").json()["server"]


def test_hub_restart_keeps_running_sessions_reachable(hub):
    hub.restart_hub()
    for user in (ALICE, CAROL):
        assert hub.api("GET", f"/users/{user}").json()["server"], f"{user} lost after hub restart"
        assert reach(hub, user).status_code == 200


def test_scancel_is_noticed_within_the_poll_interval_and_explained(hub, cluster):
    (job,) = jobs_of(cluster, CAROL)
    cluster.run(["scancel", job])
    cancelled = time.monotonic()
    while hub.api("GET", f"/users/{CAROL}").json()["server"]:
        assert time.monotonic() - cancelled < 3 * POLL + 10, "the hub did not notice the cancelled job"
        time.sleep(0.2)
    form = login(hub, CAROL).get(f"{hub.url}/hub/spawn").text
    assert f"Your last session ended: Slurm job {job} is CANCELLED" in form


def test_idle_culler_runs_as_a_service_with_least_privilege(hub):
    service = hub.api("GET", "/services/idle-culler").json()
    assert service["roles"] == ["idle-culler-role"]
    assert _cullers_of(hub)


def test_idle_culler_ends_with_a_hub_killed_without_cleanup(cluster, tmp_path):
    """The hub starts services in their own session: a SIGKILLed hub must not leave one behind."""
    lab = SpawnerLab(tmp_path / "killed-hub", extra_config=HUB_CONFIG, env=cluster.env())
    try:
        lab.start()
        culler = _wait_for(lambda: _cullers_of(lab), 30)
        lab._hub.kill()
        lab._hub.wait()
        assert _wait_for(lambda: not _alive(culler), 30)
    finally:
        lab.stop()


def _cullers_of(lab):
    """The idle-culler processes talking to this lab's hub (found by its API URL)."""
    api_url = f"JUPYTERHUB_API_URL=http://127.0.0.1:{lab.hub_port}/hub/api"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "aifactory.hub.culler" in (proc.info["cmdline"] or []) and api_url in _environ_lines(proc):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _alive(procs):
    alive = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def _environ_lines(proc):
    return [f"{k}={v}" for k, v in proc.environ().items()]


def _wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout}s")
