"""Tenants stay apart on the machine: the embedded platform run as root, two real users' sessions.

No session runs as root: each user's server runs as their own Unix account (0700 home, umask
077). The platform's state (databases, logs, secrets, runtime) is its own account's alone. The
attack cases run inside B's real session (a kernel of B's jupyterhub-singleuser) and each must
be refused by the operating system.
"""

import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from aifactory.hub.testing.ci import require_root
from aifactory.hub.testing.kernel import run_in_kernel
from aifactory.hub.testing.platform import login, open_lab, start_server, unique_user
from aifactory.hub.unix_accounts import ensure_unix_user, remove_unix_user
from tenancy_cases import assert_all_refused, home_cases, state_paths

SECRET = "company A's notebook"


def server_pid(platform, user):
    """The pid of USER's server process, from the spawner state the hub keeps."""
    model = platform.api("GET", f"/users/{user}", params={"include_stopped_servers": "0"}).json()
    return model["servers"][""]["state"]["pid"]


def proc_uid_and_umask(pid):
    status = open(f"/proc/{pid}/status").read()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    umask = int(re.search(r"^Umask:\s+(\d+)", status, re.M).group(1), 8)
    return uid, umask


class Tenants:
    """Two companies' users, A and B, each with a running local session."""

    def __init__(self, platform):
        self.platform = platform
        # the state directory's own mode must be what refuses B, not pytest's 0700 folders above
        # it: let everyone traverse those (as / and /srv are at a site) while the module runs
        self.opened = [(p, stat.S_IMODE(p.stat().st_mode)) for p in platform.state.parents
                       if not p.stat().st_mode & 0o001]
        for folder, mode in self.opened:
            folder.chmod(mode | 0o001)
        self.a, self.b = unique_user("tena"), unique_user("tenb")
        for name in (self.a, self.b):
            platform.add_user(name)
        self.token = {n: platform.user_token(n) for n in (self.a, self.b)}
        self.server = {n: start_server(platform, n) for n in (self.a, self.b)}
        self.pid = {n: server_pid(platform, n) for n in (self.a, self.b)}
        headers = {"Authorization": f"token {self.token[self.a]}"}
        requests.put(f"{self.server[self.a]}/api/contents/secret.txt", headers=headers, timeout=60,
                     json={"type": "file", "format": "text", "content": SECRET}).raise_for_status()

    def in_session(self, user, code):
        return run_in_kernel(self.server[user], self.token[user], textwrap.dedent(code))

    def close(self):
        for folder, mode in self.opened:
            folder.chmod(mode)
        for name in (self.a, self.b):
            self.platform.api("DELETE", f"/users/{name}/server")
            self.platform.api("DELETE", f"/users/{name}")
            remove_unix_user(name)


@pytest.fixture(scope="module")
def tenants(platform):
    require_root()
    world = Tenants(platform)
    try:
        yield world
    finally:
        world.close()


def test_two_users_sessions_run_as_two_different_non_root_accounts(tenants):
    uids = {}
    for name, pid in tenants.pid.items():
        uid, umask = proc_uid_and_umask(pid)
        account = pwd.getpwnam(name)
        assert uid == account.pw_uid != 0, (name, uid)
        assert umask == 0o077
        assert stat.S_IMODE(os.stat(account.pw_dir).st_mode) == 0o700
        uids[name] = uid
    assert len(set(uids.values())) == 2
    # and from inside: the kernel is the user's own process, with the user's home
    out = json.loads(tenants.in_session(tenants.b, "import os, json; print(json.dumps([os.getuid(), os.getcwd()]))"))
    assert out == [uids[tenants.b], pwd.getpwnam(tenants.b).pw_dir]


def test_a_session_cannot_reach_another_users_files_or_the_platform_state(tenants):
    home_a = pwd.getpwnam(tenants.a).pw_dir
    cases = {**home_cases(home_a, "secret.txt", tenants.pid[tenants.a]), **state_paths(tenants.platform)}
    assert_all_refused(lambda code: tenants.in_session(tenants.b, code), cases)
    print(f"\n{len(cases)} filesystem attack cases from B's kernel, all refused by the OS")


def test_platform_state_is_created_private(platform):
    """Directories 0700, files 0600 all through the state directory (hub, MLflow, logs, secrets)."""
    loose = []
    for root, dirs, files in os.walk(platform.state):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode & 0o077:
                loose.append((os.path.join(root, name), oct(mode)))
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                loose.append((path, oct(stat.S_IMODE(st.st_mode))))
    assert stat.S_IMODE(os.stat(platform.state).st_mode) == 0o700
    assert not loose, loose


def test_accounts_made_for_jobs_have_private_homes(tmp_path):
    """ensure_unix_user (mini-cluster `aif cluster adduser`, workshop seats): 0700 from useradd."""
    require_root()
    a, b = unique_user("homea"), unique_user("homeb")
    try:
        home_a = ensure_unix_user(a).pw_dir
        ensure_unix_user(b)
        assert stat.S_IMODE(os.stat(home_a).st_mode) == 0o700
        subprocess.run(["runuser", "-u", a, "--", "sh", "-c", f"echo secret > {home_a}/notes.txt"], check=True)
        peek = subprocess.run(["runuser", "-u", b, "--", "cat", f"{home_a}/notes.txt"], capture_output=True, text=True)
        assert peek.returncode != 0 and "Permission denied" in peek.stderr
    finally:
        remove_unix_user(a)
        remove_unix_user(b)


# --- company project spaces ----------------------------------------------------------------------

def aif(platform, *args):
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "aif"), *args,
                           "--state-dir", str(platform.state)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def project_people(platform, tmp_path):
    require_root()
    people = [unique_user(p) for p in ("pma", "pmb", "pout")]
    for name in people:
        platform.add_user(name)
    # members must reach it: outside pytest's own folders, which are root's alone (0700)
    root = Path(tempfile.mkdtemp(prefix="aif-projects-"))
    root.chmod(0o755)
    yield people, root
    shutil.rmtree(root, ignore_errors=True)
    for name in people:
        platform.api("DELETE", f"/users/{name}")
        remove_unix_user(name)


def as_user(user, script):
    return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", f"umask 077; {script}"],
                          capture_output=True, text=True, timeout=60)


def test_project_members_share_a_space_nobody_else_can_list(platform, project_people):
    (a, b, outsider), root = project_people
    ensure_unix_user(outsider)  # a user of the platform, as after their first session
    name = unique_user("acme")
    made = aif(platform, "project", "create", name, "--members", f"{a},{b}", "--projects-root", str(root))
    try:
        assert made.returncode == 0, made.stderr
        space = root / name
        st = os.stat(space)
        assert stat.S_IMODE(st.st_mode) == 0o2770 and grp.getgrgid(st.st_gid).gr_name == name
        assert set(grp.getgrnam(name).gr_mem) == {a, b}
        group = platform.api("GET", f"/groups/{name}").json()
        assert sorted(group["users"]) == [a, b] and group["properties"]["aif_project"] == str(space)
        link = Path(pwd.getpwnam(a).pw_dir) / "projects" / name
        assert link.is_symlink() and link.resolve() == space.resolve()
        # a writes with a session's umask 077; the default ACL makes it the group's
        assert as_user(a, f"echo plan > {link}/plan.txt").returncode == 0
        assert stat.S_IMODE(os.stat(space / "plan.txt").st_mode) == 0o660
        assert as_user(b, f"cat {space}/plan.txt && echo more >> {space}/plan.txt").stdout == "plan\n"
        for attempt in (f"ls {space}", f"cat {space}/plan.txt", f"touch {space}/x"):
            refused = as_user(outsider, attempt)
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, attempt
    finally:
        platform.api("DELETE", f"/groups/{name}")
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.mark.parametrize("bad, expected", [
    ("name", "is not a valid Unix group name"),
    ("member", "no hub user"),
    ("root", "no such directory"),
    ("existing-group", "a Unix group of that name already exists"),
    ("filesystem", "its filesystem cannot hold default ACLs"),  # ramfs: no ACLs, no xattrs
])
def test_bad_project_requests_make_nothing(platform, project_people, bad, expected, tmp_path):
    (a, b, _), root = project_people
    name, members, where = unique_user("bad"), f"{a},{b}", root
    if bad == "filesystem":
        where = tmp_path / "ramfs"
        where.mkdir()
        subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)], check=True)
    try:
        check_bad_project(platform, a, root, where, name, members, bad, expected)
    finally:
        if bad == "filesystem":
            assert list(where.iterdir()) == []  # the probe was removed
            subprocess.run(["umount", str(where)], check=True)


def check_bad_project(platform, a, root, where, name, members, bad, expected):
    if bad == "name":
        name = "Acme Corp"
    elif bad == "member":
        members = f"{a},nosuchperson"
    elif bad == "root":
        where = root / "missing"
    elif bad == "existing-group":
        name = "root"
    made = aif(platform, "project", "create", name, "--members", members, "--projects-root", str(where))
    assert made.returncode == 1 and made.stderr.startswith("Error: ") and expected in made.stderr, made.stderr
    assert made.stderr.count("\n") == 1
    assert list(root.iterdir()) == []
    if bad != "existing-group":
        with pytest.raises(KeyError):
            grp.getgrnam(name)
    assert platform.api("GET", f"/groups/{name}").status_code == 404 or bad == "existing-group"
    with pytest.raises(KeyError):  # not even the members' Unix accounts were made
        pwd.getpwnam(a)


def test_members_are_added_and_removed_and_a_removed_member_is_refused(platform, project_people):
    (a, b, outsider), root = project_people
    name = unique_user("acmf")
    ensure_unix_user(b)  # a user of the platform, as after their first session
    made = aif(platform, "project", "create", name, "--members", a, "--projects-root", str(root))
    try:
        assert made.returncode == 0, made.stderr
        space = root / name
        assert as_user(a, f"echo plan > {space}/plan.txt").returncode == 0
        refused = as_user(b, f"cat {space}/plan.txt")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr

        added = aif(platform, "project", "add", name, b)
        assert added.returncode == 0, added.stderr
        link = Path(pwd.getpwnam(b).pw_dir) / "projects" / name
        assert as_user(b, f"cat {space}/plan.txt && echo more >> {link}/plan.txt").stdout == "plan\n"
        assert sorted(platform.api("GET", f"/groups/{name}").json()["users"]) == sorted([a, b])
        listed = aif(platform, "project", "list").stdout.splitlines()
        assert f"{name}\t{space}\t{','.join(sorted([a, b]))}" in listed

        for args, expected in (([name, b], f"{b}: already a member of {name}"),
                               ([name, "nosuchuser9"], "no hub user 'nosuchuser9'"),
                               (["nosuchproject", b], "no project 'nosuchproject'")):
            again = aif(platform, "project", "add", *args)
            assert again.returncode == 1 and expected in again.stderr, again.stderr
        stranger = aif(platform, "project", "remove", name, outsider)
        assert stranger.returncode == 1 and f"{outsider}: not a member of {name}" in stranger.stderr

        removed = aif(platform, "project", "remove", name, b)
        assert removed.returncode == 0, removed.stderr
        refused = as_user(b, f"cat {space}/plan.txt")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        assert not link.is_symlink()
        assert platform.api("GET", f"/groups/{name}").json()["users"] == [a]
        assert b not in grp.getgrnam(name).gr_mem and (space / "plan.txt").read_text() == "plan\nmore\n"
    finally:
        platform.api("DELETE", f"/groups/{name}")
        subprocess.run(["groupdel", name], capture_output=True)


# --- nothing phones home -------------------------------------------------------------------------

class ConnectionWatch:
    """Samples the sockets of every platform process (proxy, hub, services, MLflow, users'
    servers and kernels) and keeps each remote address that is not loopback."""

    def __init__(self, platform):
        self.roots = [psutil.Process(platform.procs[n].pid) for n in ("hub", "proxy")]
        self.outside, self.samples = set(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self):
        for root in self.roots:
            yield root
            yield from root.children(recursive=True)

    def _run(self):
        while not self._stop.is_set():
            for proc in self._processes():
                try:
                    conns = proc.net_connections(kind="inet")
                except psutil.Error:
                    continue
                for conn in conns:
                    if conn.raddr and not ipaddress.ip_address(conn.raddr.ip.split("%")[0]).is_loopback:
                        self.outside.add((proc.name(), conn.raddr.ip, conn.raddr.port))
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_no_connection_leaves_for_a_non_loopback_host_during_a_session(platform):
    require_root()
    name = unique_user("quiet")
    try:
        with ConnectionWatch(platform) as watch:
            password = platform.add_user(name)
            browser = login(platform.url, name, password)
            open_lab(browser, platform.url, name)
            lab = browser.get(f"{platform.url}/user/{name}/lab", timeout=60).text
            assert re.search(r'"news":\s*\{"disabled":\s*true\}', lab)  # JupyterLab fetches no news feed
            token = platform.user_token(name)
            server = f"{platform.url}/user/{name}"
            out = run_in_kernel(server, token, "import mlflow\nwith mlflow.start_run():\n    mlflow.log_metric('x', 1)\nprint('logged')")
            assert "logged" in out
            page = browser.get(f"{platform.mlflow_url}/", timeout=60)
            assert page.status_code == 200 and "mlflow.telemetry.info.alert.dismissed_v1" in page.text
            telemetry = browser.get(f"{platform.mlflow_url}/ajax-api/3.0/mlflow/ui-telemetry", timeout=60)
            assert telemetry.json()["disable_ui_telemetry"] is True
            assistant = browser.get(f"{platform.mlflow_url}/ajax-api/3.0/mlflow/assistant/config", timeout=60)
            assert assistant.status_code == 404 and "Assistant is off" in assistant.text
            features = browser.get(f"{platform.mlflow_url}/ajax-api/3.0/mlflow/server-info", timeout=60).json()
            assert features.get("features_enabled", {}).get("gateway") in (False, None), features
            time.sleep(2)  # anything sent in the background after the last page
        assert watch.samples > 10
        assert watch.outside == set(), watch.outside
    finally:
        platform.api("DELETE", f"/users/{name}/server")
        platform.api("DELETE", f"/users/{name}")
        remove_unix_user(name)


# --- a root session is refused, naming why ---------------------------------------------------------

def refused_start(platform, user):
    response = platform.api("POST", f"/users/{user}/server")
    deadline = time.monotonic() + 60
    while response.status_code < 400 and time.monotonic() < deadline:  # a slow start reports later
        model = platform.api("GET", f"/users/{user}").json()
        if not model["pending"]:
            break
        time.sleep(0.5)
    return response.text + platform.log_tail("hub", lines=40)


def test_a_session_as_root_is_refused_naming_the_setting(platform, platform_factory):
    require_root()
    # the Unix superuser's own name: its account exists with uid 0
    platform.add_user("root")
    try:
        said = refused_start(platform, "root")
        assert "is the Unix superuser (uid 0): no session may run as root" in said
        assert platform.api("GET", "/users/root").json()["server"] is None
    finally:
        platform.api("DELETE", "/users/root")
        platform.users.remove("root")
    # an operator who asks for sessions as the hub's own account, with the hub running as root
    shared = platform_factory(extra_config="c.AIFLocalSpawner.run_as_hub_user = True")
    name = unique_user("asroot")
    shared.add_user(name)
    said = refused_start(shared, name)
    assert "AIFLocalSpawner.run_as_hub_user is True while the hub runs as root" in said
    assert shared.api("GET", f"/users/{name}").json()["server"] is None
    assert not [p for p in psutil.process_iter(["cmdline"]) if f"/user/{name}/" in " ".join(p.info["cmdline"] or [])]
