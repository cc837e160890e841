"""Workshops end to end: `aif up --spawner slurm` + the mini-cluster + `aif workshop ...`.

One platform and one cluster (a node with 8 simulated H200s) for the module; tests run in file
order: refusals first, then a 5-seat workshop is created, used by its participants and trainer,
survives a hub restart, and is ended.
"""

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from aifactory.hub.cluster import ClusterSpec, MiniCluster
from aifactory.hub.platform import Platform
from aifactory.hub.workshops.manager import WorkshopManager
from aifactory.hub.workshops.record import WorkshopError
from aifactory.hub.workshops.reservations import SlurmReservations
from aifactory.common.net import free_port
from aifactory.hub.testing.ci import require_binary
from aifactory.hub.testing.cluster import mini_cluster
from aifactory.hub.testing.platform import login

pytestmark = pytest.mark.slurm

AIF = [sys.executable, "-m", "aifactory.hub.cli"]
WS = "ws1"
SEATS = [f"{WS}-{i:02d}" for i in range(1, 6)]
TRAINER, OUTSIDER = "aif-trainer", "aif-outsider"
SITE_CONFIG = """
c.Spawner.poll_interval = 2
c.AIFSlurmSpawner.startup_poll_interval = 0.2
c.AIFSlurmSpawner.start_timeout = 180
"""


# --- fixtures: cluster, course repository, platform ---------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    require_binary("git", "git")
    with mini_cluster("aif-ws-cluster-", spec=ClusterSpec(gpus=8)) as mini:
        try:
            yield mini
        finally:
            for user in (*SEATS, "ws9-01"):  # seats a failed test may have left
                MiniCluster.remove_user(user)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course repository served by `git daemon` (a real git:// remote)."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    _git(root, "init", "-q", "-b", "main", str(work))
    (work / "README.md").write_text("# Course\nstep 1\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "course")
    _git(root, "clone", "-q", "--bare", str(work), str(root / "course.git"))
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                               f"--port={port}", "--listen=127.0.0.1", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"git://127.0.0.1:{port}/course.git"
    try:
        _wait(lambda: subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0, 20)
        yield {"url": url, "work": work, "bare": root / "course.git"}
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture(scope="module")
def hub(cluster, tmp_path_factory):
    state = tmp_path_factory.mktemp("ws-platform")
    config = state / "site_config.py"
    config.write_text(SITE_CONFIG)
    log = open(state / "launcher.log", "w")
    launcher = subprocess.Popen(
        AIF + ["up", "--state-dir", str(state), "--config", str(config), "--port", str(free_port()),
               "--spawner", "slurm", "--slurm-conf", str(cluster.slurm_conf)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait(lambda: "is up" in (state / "launcher.log").read_text() or launcher.poll() is not None, 300)
        assert launcher.poll() is None, (state / "launcher.log").read_text()[-3000:]
        platform = Platform.attach(state)
        passwords = {}
        for user in (TRAINER, OUTSIDER):
            passwords[user] = _aif(state, "user", "add", user).stdout.strip()
        yield {"state": state, "platform": platform, "passwords": passwords, "url": platform.url,
               "launcher": launcher, "env": {**os.environ, **cluster.env()}}
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(120)
        except subprocess.TimeoutExpired:
            launcher.kill()
        log.close()


# --- refusals: nothing is created --------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--trainer", "nobody"], "--trainer: no hub user 'nobody'"),
    (["--start", "2020-01-01T09:00"], "--start: 2020-01-01T09:00 is in the past"),
    (["--seats", "9"], "--seats: 9 seats of 1 x h200 GPU"),
    (["--materials", "git://127.0.0.1:9/none.git"], "--materials: git://127.0.0.1:9/none.git is not reachable"),
    (["--duration", "forever"], "--duration: 'forever' is not a duration"),
    (["--partition", "nope"], "--partition: Slurm has no partition 'nope'"),
])
def test_bad_requests_are_refused_before_anything_is_made(hub, cluster, args, expected):
    base = {"--seats": "2", "--trainer": TRAINER}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = _aif(hub["state"], "workshop", "create", "ws9", *[x for kv in base.items() for x in kv], check=False)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    _assert_nothing_of(hub, cluster, "ws9")


def test_failure_half_way_rolls_back_what_was_made(hub, cluster):
    """Slurm refuses the reservation after seats and hub group exist: all of it is removed."""

    class RacedSlurm(SlurmReservations):
        def plan(self, ws):
            nodes = super().plan(ws)
            # someone books the node between our check and our booking
            cluster.run(["scontrol", "create", "reservation", "ReservationName=raced", "StartTime=now",
                         "Duration=60", "Users=root", "PartitionName=gpu", "NodeCnt=1"])
            return nodes

    manager = WorkshopManager(Platform.attach(hub["state"]), slurm=RacedSlurm(str(cluster.slurm_conf)))
    try:
        with pytest.raises(WorkshopError, match="Requested nodes are busy"):
            manager.create("ws9", 1, TRAINER)
    finally:
        cluster.run(["scontrol", "delete", "ReservationName=raced"], check=False)
    _assert_nothing_of(hub, cluster, "ws9")


# --- a 5-seat workshop ---------------------------------------------------------------------------

def test_create_books_seats_reservation_and_materials(hub, cluster, course):
    result = _aif(hub["state"], "workshop", "create", WS, "--seats", "5", "--trainer", TRAINER,
                  "--duration", "2h", "--gpus-per-seat", "1", "--materials", course["url"],
                  "--announcement", "Welcome to <ws1>: ask for help in the chat")
    rows = list(_csv_rows(result.stdout))
    assert [r["login"] for r in rows] == SEATS and all(len(r["password"]) >= 16 for r in rows)
    hub["seats"] = {r["login"]: r["password"] for r in rows}
    reservation = cluster.run(["scontrol", "show", "reservation", f"aif-{WS}", "-o"]).stdout
    assert "Users=" + ",".join(SEATS) in reservation and "PartitionName=gpu" in reservation
    listed = json.loads(_aif(hub["state"], "workshop", "list", "--json").stdout)
    assert [(w["name"], w["state"], w["seats"]) for w in listed] == [(WS, "active", 5)]
    # the node is now booked in this window: an overlapping workshop is refused, naming the booking
    overlap = _aif(hub["state"], "workshop", "create", "ws9", "--seats", "1", "--trainer", TRAINER, check=False)
    assert overlap.returncode == 1 and f"overlaps reservation(s) aif-{WS}" in overlap.stderr, overlap.stderr
    _assert_nothing_of(hub, cluster, "ws9")


def test_all_five_participants_spawn_into_the_reservation(hub, cluster):
    url = hub["url"]

    def start(login_name):
        session = login(url, login_name, hub["seats"][login_name])
        form = session.get(f"{url}/hub/spawn/{login_name}", timeout=60).text
        offered = set(re.findall(r'name="profile"[^>]*value="([^"]+)"', form))
        xsrf = session.cookies.get("_xsrf", path="/hub/")
        session.post(f"{url}/hub/spawn/{login_name}", data={"profile": f"workshop-{WS}", "_xsrf": xsrf},
                     allow_redirects=False, timeout=60)
        _wait(lambda: _lab_served(session.get(f"{url}/user/{login_name}/lab", timeout=30), login_name), 240)
        home = session.get(f"{url}/hub/home", timeout=30).text
        return offered, home

    with ThreadPoolExecutor(len(SEATS)) as pool:
        results = list(pool.map(start, SEATS))
    for offered, home in results:
        assert offered == {f"workshop-{WS}"}  # participants see only their workshop's profile
        assert "Welcome to &lt;ws1&gt;: ask for help in the chat" in home  # banner, escaped
    jobs = cluster.run(["squeue", "-h", "-o", "%u %v %T %b %l"]).stdout.split("\n")
    assert sorted(j.split()[0] for j in jobs if j) == SEATS
    assert all(f" aif-{WS} RUNNING gres:gpu:h200:1 " in j for j in jobs if j), jobs
    # the 2 h window began when it was created: each walltime is what it had left, not 2 h
    limits = [_minutes(j.split()[-1]) for j in jobs if j]
    assert all(100 <= minutes < 120 for minutes in limits), jobs
    for seat in SEATS:  # the course was pulled into each home as the job started
        assert (Path(pwd.getpwnam(seat).pw_dir) / "course" / "README.md").read_text().startswith("# Course")
    outsider = login(url, OUTSIDER, hub["passwords"][OUTSIDER])
    assert "Welcome to" not in outsider.get(f"{url}/hub/home", timeout=30).text
    assert f"workshop-{WS}" not in outsider.get(f"{url}/hub/spawn/{OUTSIDER}", timeout=30).text


def _minutes(limit):
    """Minutes of a Slurm time limit printed as [D-]H:MM:SS."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + minutes


def test_trainer_sees_and_opens_participants_servers_and_nobody_else_can(hub):
    url, platform = hub["url"], hub["platform"]
    trainer = login(url, TRAINER, hub["passwords"][TRAINER])
    status = trainer.get(f"{url}/services/workshops/api/{WS}", timeout=60)
    assert status.status_code == 200, status.text
    assert {(p["login"], p["state"]) for p in status.json()["participants"]} == {(s, "running") for s in SEATS}
    page = trainer.get(f"{url}/services/workshops/{WS}", timeout=60).text
    assert f'href="/user/{SEATS[0]}/lab"' in page
    opened = _open_server_as(trainer, url, SEATS[0])
    assert opened.status_code == 200 and "JupyterLab" in opened.text
    outsider = login(url, OUTSIDER, hub["passwords"][OUTSIDER])
    assert _open_server_as(outsider, url, SEATS[0]).status_code == 403
    assert outsider.get(f"{url}/services/workshops/api/{WS}", timeout=60).status_code in (403, 404)
    # the trainer's token: participants' servers only, nothing else
    token = platform.user_token(TRAINER)
    api = lambda method, path: requests.request(method, f"{url}/hub/api{path}", timeout=60,  # noqa: E731
                                                headers={"Authorization": f"token {token}"})
    assert api("GET", f"/users/{SEATS[1]}").status_code == 200
    assert api("GET", f"/users/{OUTSIDER}").status_code in (403, 404)
    assert api("POST", f"/users/{OUTSIDER}/tokens").status_code in (403, 404)
    # the page's buttons: a post without the page's xsrf token, an unknown action, a seat of no
    # workshop of theirs, and somebody else's workshop are refused; the trainer's stop works
    action_url = f"{url}/services/workshops/{WS}/servers/{SEATS[4]}"
    assert trainer.post(action_url, data={"action": "stop"}, timeout=60).status_code == 403
    assert _page_action(trainer, url, SEATS[4], "reboot").status_code == 400
    assert _page_action(trainer, url, OUTSIDER, "stop").status_code == 404
    assert outsider.post(action_url, data={"action": "stop"}, timeout=60).status_code in (403, 404)
    stopped = _page_action(trainer, url, SEATS[4], "stop")
    assert stopped.status_code == 200 and f"session of {SEATS[4]} " in stopped.text, stopped.text[-600:]
    _wait(lambda: not api("GET", f"/users/{SEATS[4]}").json()["servers"], 120)
    cli = json.loads(_aif(hub["state"], "workshop", "status", WS, "--json").stdout)
    states = {p["login"]: p["state"] for p in cli["participants"]}
    assert states[SEATS[4]] == "stopped" and all(states[s] == "running" for s in SEATS[:4])


def test_materials_merge_on_restart_without_overwriting_edits(hub, course):
    """The trainer restarts a participant's server: new course files arrive, their edits stay."""
    home = Path(pwd.getpwnam(SEATS[4]).pw_dir)
    readme = home / "course" / "README.md"
    readme.write_text("# Course\nstep 1\nmy own notes\n")  # the participant's edit
    (course["work"] / "step2.md").write_text("step 2\n")
    _git(course["work"], "add", ".")
    _git(course["work"], "commit", "-q", "-m", "step 2")
    _git(course["work"], "push", "-q", str(course["bare"]), "main")
    token = hub["platform"].user_token(TRAINER)
    headers = {"Authorization": f"token {token}"}
    trainer = login(hub["url"], TRAINER, hub["passwords"][TRAINER])
    started = _page_action(trainer, hub["url"], SEATS[4], "start")  # the trainer page's start button
    assert started.status_code == 200 and f"session of {SEATS[4]} " in started.text, started.text[-600:]
    _wait(lambda: requests.get(f"{hub['url']}/hub/api/users/{SEATS[4]}", headers=headers, timeout=30)
          .json()["servers"].get("", {}).get("ready"), 240)
    assert (home / "course" / "step2.md").read_text() == "step 2\n"
    assert "my own notes" in readme.read_text()


def test_workshop_survives_a_hub_restart(hub):
    before = hub["platform"].read_platform_file()["pids"]["hub"]
    Platform.attach(hub["state"]).reload_hub()  # what `aif workshop` does: SIGUSR1 to `aif up`
    assert hub["platform"].read_platform_file()["pids"]["hub"] != before
    cli = json.loads(_aif(hub["state"], "workshop", "status", WS, "--json").stdout)
    assert {p["state"] for p in cli["participants"]} == {"running"}
    trainer = login(hub["url"], TRAINER, hub["passwords"][TRAINER])
    assert _open_server_as(trainer, hub["url"], SEATS[1]).status_code == 200


def test_end_archives_work_and_removes_everything_then_reports_nothing_left(hub, cluster, tmp_path):
    platform = hub["platform"]
    seat_token = platform.user_token(SEATS[0])
    put = requests.put(f"{hub['url']}/user/{SEATS[0]}/api/contents/my-work.txt", timeout=60,
                       headers={"Authorization": f"token {seat_token}"},
                       json={"type": "file", "format": "text", "content": "results of the exercise\n"})
    assert put.status_code == 201, put.text
    trainer_token = platform.user_token(TRAINER)
    result = _aif(hub["state"], "workshop", "end", WS, "--archive-dir", str(tmp_path / "archives"))
    assert "stopped 5 server(s)" in result.stdout and f"deleted reservation aif-{WS}" in result.stdout
    with tarfile.open(tmp_path / "archives" / f"{SEATS[0]}.tar.gz") as tar:
        names = set(tar.getnames())
        assert f"{SEATS[0]}/my-work.txt" in names and f"{SEATS[0]}/course/README.md" in names
        assert tar.extractfile(f"{SEATS[0]}/my-work.txt").read() == b"results of the exercise\n"
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == [f"{s}.tar.gz" for s in SEATS]
    _assert_nothing_of(hub, cluster, WS, record_kept=True)
    assert not cluster.run(["squeue", "-h", "-o", "%i"]).stdout.strip()
    whoami = requests.get(f"{hub['url']}/hub/api/user", headers={"Authorization": f"token {trainer_token}"},
                          timeout=60).json()
    assert not [s for s in whoami["scopes"] if f"group=workshop-{WS}" in s]  # trainer role gone
    again = _aif(hub["state"], "workshop", "end", WS)
    assert "nothing is left" in again.stdout
    listed = json.loads(_aif(hub["state"], "workshop", "list", "--json").stdout)
    assert [(w["name"], w["state"]) for w in listed] == [(WS, "ended")]


# --- helpers -------------------------------------------------------------------------------------

def _page_action(session, url, seat, action):
    """Press the trainer page's start/stop button of `seat` (the form's xsrf token included)."""
    page = session.get(f"{url}/services/workshops/{WS}", timeout=60).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)[1]
    return session.post(f"{url}/services/workshops/{WS}/servers/{seat}", data={"action": action, "_xsrf": xsrf},
                        timeout=120)


def _lab_served(response, owner):
    return response.status_code == 200 and f"/user/{owner}/lab" in response.url and "JupyterLab" in response.text


def _assert_nothing_of(hub, cluster, name, record_kept=False):
    state, platform = hub["state"], hub["platform"]
    seats = [f"{name}-{i:02d}" for i in range(1, 10)]
    folder = state / "workshops" / name
    if record_kept:
        assert json.loads((folder / "workshop.json").read_text())["state"] == "ended"
        assert not (folder / "seats.csv").exists()
    else:
        assert not folder.exists()
    users = json.loads((state / "users.json").read_text())
    assert not [s for s in seats if s in users]
    assert all(platform.api("GET", f"/users/{s}").status_code == 404 for s in seats[:2])
    assert platform.api("GET", f"/groups/workshop-{name}").status_code == 404
    assert f"aif-{name}" not in cluster.run(["scontrol", "show", "reservation"], check=False).stdout
    for seat in seats:
        with pytest.raises(KeyError):
            pwd.getpwnam(seat)


class _Form(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        if tag == "input" and attrs.get("name"):
            self.fields.setdefault(attrs["name"], attrs.get("value", ""))


def _open_server_as(session, url, owner):
    """Open OWNER's JupyterLab as a browser would, confirming the hub's authorization page."""
    response = session.get(f"{url}/user/{owner}/lab", timeout=60)
    if "/hub/api/oauth2/authorize" in response.url and response.status_code == 200:
        form = _Form()
        form.feed(response.text)
        target = requests.compat.urljoin(response.url, form.action or response.url)
        response = session.post(target, data=form.fields, timeout=60)
    return response


def _aif(state, *args, check=True):
    result = subprocess.run(AIF + [args[0], *args[1:], "--state-dir", str(state)], capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"aif {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _csv_rows(text):
    import csv
    import io

    return csv.DictReader(io.StringIO(text))


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _wait(condition, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (requests.RequestException, OSError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
