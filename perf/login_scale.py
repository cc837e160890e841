"""Login-to-JupyterLab for 1, 20 and 30 users at once, on the real platform (issue 9).

N people log in through the hub's login form at the same moment, submit the resource form (the
Slurm spawner's first profile, "CPU only" is picked; the local spawner has no form), wait on the
spawn-pending page's progress stream as a browser does, and open /user/<name>/lab. Reported per
crowd size: p50/p95/max seconds from posting the login form to JupyterLab served, failures, and
the CPU seconds the hub process used meanwhile.

Spawner: the product's, `slurm` (AIFSlurmSpawner on the Slurm mini-cluster, real Unix users),
when this machine can run the mini-cluster (root, Slurm and munge installed); else `local`.
The JSON says which. Prints one JSON object.

    .venv/bin/python perf/login_scale.py [--users 1,20,30] [--single-repeats 3] [--spawner auto]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from aifactory.common.net import free_port
from aifactory.hub.cluster import MiniCluster
from aifactory.hub.platform import Platform
from aifactory.hub.testing.platform import login, open_lab

USER_PREFIX = "aifscale"
PROFILE = "cpu"  # the resource form's choice: CPU sessions fit the mini-cluster 30 at a time


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def choose_spawner(asked):
    if asked != "auto":
        return asked
    can_slurm = os.geteuid() == 0 and all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch"))
    return "slurm" if can_slurm else "local"


def wait_ready(session, url, user, deadline):
    """Follow the progress event stream the spawn-pending page listens to, until it says ready."""
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    progress = f"{url}/hub/api/users/{user}/server/progress"
    timeout = max(1.0, deadline - time.monotonic())
    with session.get(progress, params={"_xsrf": xsrf}, stream=True, timeout=(30, timeout)) as response:
        response.raise_for_status()
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if event.get("ready"):
                return
            if event.get("failed"):
                raise RuntimeError(f"spawn failed: {event.get('message')}")
            if time.monotonic() > deadline:
                break
    raise RuntimeError(f"no 'ready' event for {user}")


def login_to_lab(url, user, password, timeout):
    """Seconds from posting the login form to JupyterLab served, as a browser goes through it."""
    start = time.monotonic()
    session = login(url, user, password)
    form = session.get(f"{url}/hub/spawn/{user}", timeout=60)
    if 'name="profile"' in form.text:  # the Slurm spawner's resource form: submit a choice
        xsrf = session.cookies.get("_xsrf", path="/hub/")
        session.post(f"{url}/hub/spawn/{user}", data={"profile": PROFILE, "_xsrf": xsrf}, timeout=60)
    wait_ready(session, url, user, start + timeout)
    open_lab(session, url, user, timeout=max(10, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def hub_cpu_s(process):
    times = process.cpu_times()
    return times.user + times.system


def crowd(platform, users, password, timeout):
    """All `users` log in at once; timings, failures and the hub's CPU seconds for the crowd."""
    hub = psutil.Process(platform.procs["hub"].pid)
    cpu0, load0, t0 = hub_cpu_s(hub), os.getloadavg()[0], time.monotonic()

    def one(user):
        try:
            return login_to_lab(platform.url, user, password, timeout), None
        except (requests.RequestException, AssertionError, RuntimeError, ValueError) as err:
            # a failed login is a figure here, not a crash
            return None, f"{user}: {type(err).__name__}: {err}"[:300]

    pool = ThreadPoolExecutor(len(users))
    try:
        outcomes = list(pool.map(one, users))
    finally:
        # Interrupted (make perf's time limit sends SIGINT), do not wait for logins in flight,
        # up to `timeout` each: the caller's cleanup stops the hub, which ends them, and the cluster.
        pool.shutdown(wait=False, cancel_futures=True)
    wall = time.monotonic() - t0
    cpu = hub_cpu_s(hub) - cpu0
    times = [t for t, _ in outcomes if t is not None]
    errors = [e for _, e in outcomes if e]
    platform.stop_all_servers(timeout=180)
    return {
        "users": len(users), "ok": len(times), "failed": len(errors),
        **summary(times), "wall_s": round(wall, 2), "hub_cpu_s": round(cpu, 2),
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "errors": errors[:5],
        **({"hub_log_tail": platform.log_tail("hub", 10)} if errors else {}),
    }


def summary(times):
    if not times:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {"p50_s": round(statistics.median(times), 2), "p95_s": round(percentile(times, 95), 2),
            "max_s": round(max(times), 2)}


def single_user(platform, user, password, timeout, repeats):
    """One person alone, `repeats` times (a crowd of one has a single sample)."""
    rounds = [crowd(platform, [user], password, timeout) for _ in range(repeats)]
    times = [r["p50_s"] for r in rounds if r["p50_s"] is not None]
    return {"users": 1, "rounds": repeats, "ok": len(times), "failed": repeats - len(times), **summary(times),
            "hub_cpu_s": round(statistics.median(r["hub_cpu_s"] for r in rounds), 2),
            "load_avg_1m": [rounds[0]["load_avg_1m"][0], rounds[-1]["load_avg_1m"][1]],
            "errors": [e for r in rounds for e in r["errors"]][:5]}


def start_platform(workdir, spawner, cluster):
    kwargs = {"spawner": spawner}
    if cluster:
        kwargs.update(slurm_conf=cluster.slurm_conf, env=cluster.env())
    return Platform(workdir / "state", port=free_port(), **kwargs).start(timeout=300)


def hub_defaults():
    """The settings that decide whether a crowd waits; the platform's hub config leaves them at
    JupyterHub's defaults."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import Spawner

    return {"concurrent_spawn_limit": JupyterHub.concurrent_spawn_limit.default_value,
            "active_server_limit": JupyterHub.active_server_limit.default_value,
            "poll_interval_s": Spawner.poll_interval.default_value}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1,20,30", help="crowd sizes, comma-separated (default 1,20,30)")
    parser.add_argument("--single-repeats", type=int, default=3, help="rounds for the crowd of 1")
    parser.add_argument("--spawner", choices=("auto", "slurm", "local"), default="auto")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one person may wait before it counts as failed")
    args = parser.parse_args()
    levels = [int(n) for n in args.users.split(",")]
    spawner = choose_spawner(args.spawner)
    users = [f"{USER_PREFIX}{i:02d}" for i in range(max(levels))]
    workdir = Path(tempfile.mkdtemp(prefix="aif-login-scale-"))
    workdir.chmod(0o755)  # the cluster's state must be traversable by the users' jobs
    cluster = MiniCluster(workdir / "cluster") if spawner == "slurm" else None
    platform = None
    result = {"benchmark": "login_to_lab_crowds", "spawner": spawner, "profile": PROFILE if cluster else None,
              "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "crowds": {}}
    try:
        if cluster:
            cluster.up()
            for user in users:
                cluster.add_user(user)
        t0 = time.monotonic()
        platform = start_platform(workdir, spawner, cluster)
        result["platform_start_s"] = round(time.monotonic() - t0, 1)
        result["hub_defaults"] = hub_defaults()
        password = "scale-" + os.urandom(6).hex()
        for user in users:
            platform.add_user(user, password=password)
        for n in levels:
            if n == 1:
                result["crowds"]["1"] = single_user(platform, users[0], password, args.timeout, args.single_repeats)
            else:
                result["crowds"][str(n)] = crowd(platform, users[:n], password, args.timeout)
            print(f"{n} users: {result['crowds'][str(n)]}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # make perf's time limit: say where the crowd stood before cleaning up
        if platform:
            print(f"interrupted; hub log: {platform.log_tail('hub', 15)}", file=sys.stderr, flush=True)
        raise
    finally:
        if platform:
            platform.stop()
        if cluster:
            cluster.down()
            for user in users:
                MiniCluster.remove_user(user)
        shutil.rmtree(workdir, ignore_errors=True)
    result["failed_total"] = sum(c["failed"] for c in result["crowds"].values())
    print(json.dumps(result, indent=1))  # failed logins are figures, not a crash: exit 0


if __name__ == "__main__":
    main()
