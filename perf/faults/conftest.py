"""Fixtures of `make faults`: the platform as `aif up --spawner slurm` runs it, on the Slurm
mini-cluster, with real Unix users; and the recorder of each scenario's figures.

Not part of `make test` (testpaths = tests): these scenarios wait out real outages.
"""

import time

import faults_record
import pytest
import requests

from aifactory.common.net import free_port
from aifactory.hub.platform import Platform
from aifactory.hub.testing.cluster import mini_cluster
from aifactory.hub.testing.platform import login

POLL = 10  # Spawner.poll_interval of the platform under test, seconds (JupyterHub's default: 30)
SESSIONS = 10
USERS = [f"aiff{n:02d}" for n in range(1, SESSIONS + 1)]

# a site config, as an operator would write it in aif_config.py
SITE_CONFIG = f"""
c.Spawner.poll_interval = {POLL}
c.AIFSlurmSpawner.startup_poll_interval = 0.2
"""


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.faults)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call":
        item.fault_outcome = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")


@pytest.fixture
def fault_record(request):
    """fault_record(scenario, fault, expected, order) -> Record; saved with the test's outcome."""
    made = []

    def make(scenario, fault, expected, order=99):
        record = faults_record.Record(scenario, fault, expected)
        record.order = order
        made.append(record)
        return record

    yield make
    outcome = getattr(request.node, "fault_outcome", "FAILED")
    if outcome != "skipped":
        faults_record.save([{**r.entry(outcome), "order": r.order} for r in made])


# --- the mini-cluster and the platform on it -------------------------------------------------

@pytest.fixture(scope="session")
def cluster():
    with mini_cluster("aif-faults-cluster-", USERS) as mini:
        yield mini


@pytest.fixture(scope="session")
def slurm_platform(cluster, tmp_path_factory):
    """Proxy + hub + MLflow service with the Slurm spawner; `passwords` and `tokens` per user."""
    state = tmp_path_factory.mktemp("faults-platform")
    (state / "aif_config.py").write_text(SITE_CONFIG)
    platform = Platform(state, port=free_port(), spawner="slurm", slurm_conf=cluster.slurm_conf)
    try:
        platform.start(timeout=240)
        platform.passwords = {user: platform.add_user(user) for user in USERS}
        platform.tokens = {user: platform.user_token(user) for user in USERS}
        yield platform
    finally:
        platform.stop()  # stops users' servers too (keep_servers_on_stop is False)


# --- sessions -----------------------------------------------------------------------------------

def server_model(platform, user):
    return platform.api("GET", f"/users/{user}").json()


def spawn(platform, user, **options):
    response = platform.api("POST", f"/users/{user}/server", json=options or {"profile": "cpu"})
    assert response.status_code in (201, 202), f"spawn of {user}: HTTP {response.status_code} {response.text}"


def wait_ready(platform, users, timeout=300):
    """Wait until every user's server is up; returns seconds taken."""
    start = time.monotonic()
    waiting = set(users)
    while waiting and time.monotonic() - start < timeout:
        for user in sorted(waiting):
            model = server_model(platform, user)
            if model["server"] and not model["pending"]:
                waiting.discard(user)
            elif not model["pending"] and not model["server"]:
                raise AssertionError(f"{user}'s spawn ended without a server; hub log: {platform.log_tail('hub', 20)}")
        time.sleep(0.5)
    assert not waiting, f"not ready within {timeout}s: {sorted(waiting)}"
    return time.monotonic() - start


def reach(platform, user, timeout=10):
    """The user's Jupyter server API through the proxy, as the user; HTTP status or the error's name."""
    headers = {"Authorization": f"token {platform.tokens[user]}"}
    try:
        return requests.get(f"{platform.url}/user/{user}/api/status", headers=headers, timeout=timeout).status_code
    except requests.RequestException as err:
        return type(err).__name__


def slurm_jobs(cluster, states="all"):
    """{job_id: (user, state)} of this cluster's jobs."""
    out = cluster.run(["squeue", "-h", f"--states={states}", "-o", "%i %u %T"]).stdout
    return {job: (user, state) for job, user, state in (line.split() for line in out.splitlines() if line.strip())}


def running_jobs(cluster):
    return {job: user for job, (user, state) in slurm_jobs(cluster).items() if state in ("RUNNING", "PENDING", "CONFIGURING")}


@pytest.fixture(scope="session")
def sessions(slurm_platform, cluster):
    """The SESSIONS users' servers, started through the hub API; seconds until all were up."""
    started = time.monotonic()
    for user in USERS:
        spawn(slurm_platform, user)  # the hub answers when the server is up or after 10 s
    wait_ready(slurm_platform, USERS)
    return {"users": list(USERS), "start_s": round(time.monotonic() - started, 1)}


def hub_log(platform):
    return (platform.state / "logs" / "hub.log").read_text(errors="replace")


def spawn_form(platform, user):
    session = login(platform.url, user, platform.passwords[user])
    return session.get(f"{platform.url}/hub/spawn", timeout=30).text
