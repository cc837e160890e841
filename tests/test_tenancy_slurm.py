"""Tenants stay apart inside Slurm sessions too: the platform with the Slurm spawner on the mini-cluster.

Users A and B each run a real JupyterLab session as a Slurm job, as their own Unix accounts. From a
kernel of B's session, every attempt on A's home, A's project space, A's processes and the
platform's state must be refused by the operating system, as on the embedded default
(test_tenancy.py).
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

from aifactory.hub.testing.cluster import mini_cluster
from aifactory.hub.testing.kernel import run_in_kernel
from aifactory.hub.testing.platform import start_platform, start_server, unique_user
from tenancy_cases import assert_all_refused, home_cases, state_paths

pytestmark = pytest.mark.slurm

SECRET = "company A's model card"


class SlurmTenants:
    """A (with a project space of A's company) and B, each with a running Slurm session."""

    def __init__(self, cluster, users, state, projects_root):
        self.a, self.b = users
        self.platform = start_platform(state, spawner="slurm", slurm_conf=cluster.slurm_conf, env=cluster.env())
        # the state's own mode must refuse B, not pytest's 0700 folders above it (open, as / is at a site)
        self.opened = [(p, stat.S_IMODE(p.stat().st_mode)) for p in state.parents if not p.stat().st_mode & 0o001]
        for folder, mode in self.opened:
            folder.chmod(mode | 0o001)
        for name in (self.a, self.b):
            self.platform.add_user(name)
        self.project = unique_user("acmes")
        made = subprocess.run([os.path.join(os.path.dirname(sys.executable), "aif"), "project", "create", self.project,
                               "--members", self.a, "--projects-root", str(projects_root),
                               "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        self.space = projects_root / self.project
        self.token = {n: self.platform.user_token(n) for n in (self.a, self.b)}
        self.server = {n: start_server(self.platform, n, timeout=240) for n in (self.a, self.b)}
        self.in_session(self.a, f"""
            open(os.path.expanduser("~/model-card.txt"), "w").write({SECRET!r})
            open("{self.space}/plan.txt", "w").write({SECRET!r})
        """)

    def in_session(self, user, code):
        return run_in_kernel(self.server[user], self.token[user], "import os\n" + textwrap.dedent(code))

    def server_pid(self, user):
        for proc in psutil.process_iter(["username", "cmdline"]):
            if proc.info["username"] == user and any("jupyterhub-singleuser" in c for c in proc.info["cmdline"] or []):
                return proc.pid
        raise AssertionError(f"no jupyterhub-singleuser process of {user}")

    def close(self):
        for folder, mode in self.opened:
            folder.chmod(mode)
        try:
            for name in (self.a, self.b):
                self.platform.api("DELETE", f"/users/{name}/server")
            self.platform.api("DELETE", f"/groups/{self.project}")
        finally:
            self.platform.stop()
            subprocess.run(["groupdel", self.project], capture_output=True)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    users = [unique_user("sta"), unique_user("stb")]
    projects_root = Path(tempfile.mkdtemp(prefix="aif-projects-"))
    projects_root.chmod(0o755)  # members must reach it; pytest's own folders are root's alone
    try:
        with mini_cluster("aif-tenancy-cluster-", users) as cluster:
            world = SlurmTenants(cluster, users, tmp_path_factory.mktemp("slurm-platform"), projects_root)
            try:
                yield world
            finally:
                world.close()
    finally:
        shutil.rmtree(projects_root, ignore_errors=True)


def test_slurm_sessions_run_as_their_users_with_umask_077(tenants):
    for user in (tenants.a, tenants.b):
        out = json.loads(tenants.in_session(user, """
            import json
            mask = os.umask(0); os.umask(mask)
            print(json.dumps([os.getuid(), os.environ.get("SLURM_JOB_ID"), mask]))
        """))
        assert out[0] == pwd.getpwnam(user).pw_uid != 0 and out[1] and out[2] == 0o077, (user, out)


def test_a_slurm_session_cannot_reach_another_company_or_the_platform_state(tenants):
    home_a = pwd.getpwnam(tenants.a).pw_dir
    cases = {
        **home_cases(home_a, "model-card.txt", tenants.server_pid(tenants.a)),
        "list A's project space": ("list", str(tenants.space)),
        "read A's project file": ("read", str(tenants.space / "plan.txt")),
        "write into A's project space": ("write", str(tenants.space / "planted.txt")),
        **state_paths(tenants.platform),
    }
    assert_all_refused(lambda code: tenants.in_session(tenants.b, code), cases)
    # and A, a member, did write both: the refusals are B's, not a broken session
    assert open(f"{home_a}/model-card.txt").read() == open(tenants.space / "plan.txt").read() == SECRET
    print(f"\n{len(cases)} filesystem attack cases from B's Slurm session kernel, all refused by the OS")
