"""Our Slurm spawner vs stock batchspawner.SlurmSpawner, same machine, same run, same cluster.

Prints JSON:
* login-to-JupyterLab seconds (p50/p95) for 1 user (repeated) and for 20 users at once: a real
  browser-like client logs in through the hub's form, starts a CPU session, and follows the
  redirects until /user/<name>/lab serves JupyterLab. Both hubs run side by side and take turns
  in ABBA order, so load from the rest of the machine hits both alike;
* squeue calls per minute with 1, 10 and 50 running sessions (a counting shim sits in front of
  squeue on the hub's PATH; sessions here are featherweight servers, see spawner_tiny_session.py).

Needs root (mini-cluster, Unix users). Usage: python perf/spawner_compare.py [--out FILE] [--quick]
[--repeats N] [--settle S] [--ours-config TEXT] (see --help).
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

import requests

from aifactory.hub.cluster import MiniCluster
from aifactory.hub.testing.spawner_lab import VENV, SpawnerLab

HERE = Path(__file__).resolve().parent
USERS = [f"aifperf{i:02d}" for i in range(50)]
POLL_INTERVAL = 10  # Spawner.poll_interval for both hubs (JupyterHub's default is 30)
# Between rounds the cluster is left with no job and then this long, for both sides alike: a job
# submitted while the previous round's job is still ending is started as soon as that one ends,
# one submitted later waits for slurmctld's next pass (0.1-2 s on the mini-cluster). Stock's
# stop() returns before its job has ended, ours waits for it, so without the pause the order of
# the rounds, not the spawner, decided a second of each login.
SETTLE_S = 2.0

STOCK_CONFIG = f"""
c.SlurmSpawner.exec_prefix = "runuser -u {{username}} --"
c.SlurmSpawner.batchspawner_singleuser_cmd = "{VENV}/bin/batchspawner-singleuser"
c.SlurmSpawner.req_partition = "cpu"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "01:00:00"
c.SlurmSpawner.env_keep = ["PATH", "LANG", "LC_ALL", "SLURM_CONF", "JUPYTERHUB_SINGLEUSER_APP"]
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
"""
OURS_CONFIG = """
c.AIFSlurmSpawner.idle_timeout = 0
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
"""
CMD = {"stock": "c.SlurmSpawner.cmd", "ours": "c.AIFSlurmSpawner.cmd"}


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


class Side:
    """One hub with one spawner kind, on the shared cluster."""

    def __init__(self, kind, cluster, shim_dir, workdir, tiny=False, settle=SETTLE_S, extra_config=""):
        config = (STOCK_CONFIG if kind == "stock" else OURS_CONFIG) + f"\nc.Spawner.poll_interval = {POLL_INTERVAL}\n"
        config += extra_config + "\n"
        if tiny:
            config += f'{CMD[kind]} = ["{HERE / "spawner_tiny_session.py"}"]\n'
        spawner = "batchspawner.SlurmSpawner" if kind == "stock" else "aif-slurm"
        env = {**cluster.env(), "PATH": f"{shim_dir}:{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.kind = kind
        self.cluster = cluster
        self.settle = settle
        self.lab = SpawnerLab(workdir / f"hub-{kind}-{'tiny' if tiny else 'lab'}", spawner_class=spawner,
                              extra_config=config, env=env)

    def login_to_lab(self, user, timeout=300):
        """Seconds from posting the login form to JupyterLab's page being served."""
        url = self.lab.url
        session = requests.Session()
        session.get(f"{url}/hub/login")
        start = time.perf_counter()
        session.post(f"{url}/hub/login?next=/hub/spawn",
                     data={"username": user, "password": self.lab.password, "_xsrf": session.cookies.get("_xsrf")})
        if self.kind == "ours":  # our hub shows the resource form; submit the CPU profile
            session.post(f"{url}/hub/spawn", data={"profile": "cpu", "_xsrf": session.cookies.get("_xsrf")})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = session.get(f"{url}/user/{user}/lab", timeout=30)
            if response.status_code == 200 and "jupyter-config-data" in response.text:
                return time.perf_counter() - start
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind}: {user} got no JupyterLab within {timeout}s")

    def stop_all(self, timeout):
        """Stop every session, then let the cluster settle: no job left, then `settle` seconds."""
        self.lab.stop_all_servers(timeout=timeout)
        if not self.settle:
            return  # as before the settle existed: the next round starts while jobs may still end
        deadline = time.monotonic() + timeout
        while self.cluster.run(["squeue", "-h", "-o", "%i"], check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: jobs still in the queue {timeout}s after the stop")
            time.sleep(0.2)
        time.sleep(self.settle)

    def spawn_api(self, user):
        options = {"profile": "cpu"} if self.kind == "ours" else {}
        self.lab.api("POST", f"/users/{user}/server", json=options, timeout=120)

    def wait_running(self, users, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            models = {u["name"]: u for u in self.lab.api("GET", "/users").json()}
            if all(models[u]["server"] and not models[u]["pending"] for u in users):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind}: sessions not running within {timeout}s")


def measure_login(sides, users, rounds):
    """Interleave the two hubs in ABBA order so machine drift hits both sides alike."""
    single = {side.kind: [] for side in sides}
    crowd = {side.kind: [] for side in sides}
    order = [sides[0], sides[1], sides[1], sides[0]] * ((rounds * 2 + 3) // 4)
    for side in order[:rounds * 2]:
        single[side.kind].append(side.login_to_lab(users[0]))
        side.stop_all(timeout=120)
    for side in order[:4]:
        with ThreadPoolExecutor(len(users)) as pool:
            crowd[side.kind] += list(pool.map(side.login_to_lab, users))
        side.stop_all(timeout=180)
    return {
        side.kind: {
            "one_user": _summary(single[side.kind]),
            f"{len(users)}_users_at_once": _summary(crowd[side.kind]),
        }
        for side in sides
    }


def _summary(values):
    return {"n": len(values), "p50_s": round(statistics.median(values), 3), "p95_s": round(percentile(values, 95), 3),
            "mean_s": round(statistics.mean(values), 3), "values_s": [round(v, 3) for v in values]}


def measure_queries(side, counter, levels, window):
    rates, running = {}, []
    for level in levels:
        new = USERS[len(running):level]
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(side.spawn_api, new))
        running += new
        side.wait_running(running)
        time.sleep(2)  # let start-up polling settle
        before = _count(counter)
        time.sleep(window)
        rates[str(level)] = round((_count(counter) - before) * 60 / window, 1)
    side.lab.stop_all_servers(timeout=300)
    return rates


def measure_overhead(sides, user, rounds):
    """Spawn-to-ready with a featherweight server: the spawner + Slurm + hub part of the wait,
    without JupyterLab's own start-up (which dominates login-to-lab on a small VM). ABBA order."""
    times = {side.kind: [] for side in sides}
    order = [sides[0], sides[1], sides[1], sides[0]] * ((rounds * 2 + 3) // 4)
    for side in order[:rounds * 2]:
        start = time.perf_counter()
        side.spawn_api(user)
        side.wait_running([user], timeout=120)
        times[side.kind].append(time.perf_counter() - start)
        side.stop_all(timeout=60)
    return {kind: _summary(values) for kind, values in times.items()}


def _count(counter):
    return len(counter.read_text().splitlines())


def make_shim(workdir):
    shim = workdir / "shim"
    shim.mkdir()
    counter = shim / "squeue-calls"
    counter.touch(mode=0o666)
    counter.chmod(0o666)  # stock batchspawner runs squeue as each user
    script = shim / "squeue"
    script.write_text(f'#!/bin/sh\necho x >> {counter}\nexec {shutil.which("squeue")} "$@"\n')
    script.chmod(0o755)
    return shim, counter


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="fewer users and shorter windows (smoke run)")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only spawn-to-ready with featherweight servers (spawner overhead, ~2 min)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="single-user logins per side (default 2 with --quick, else 4), in ABBA order")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds between rounds once no job is left (default {SETTLE_S}); 0: no wait at all")
    parser.add_argument("--ours-config", default="",
                        help="extra config lines for our hub, e.g. to switch one feature off for a comparison")
    args = parser.parse_args()
    # repeats: single-user logins per side; the crowd runs twice per side (ABBA)
    crowd, repeats, levels, window = (5, 2, (1, 5), 20) if args.quick else (20, 4, (1, 10, 50), 30)
    repeats = args.repeats or repeats
    workdir = Path(tempfile.mkdtemp(prefix="aif-spawner-perf-"))
    workdir.chmod(0o755)
    cluster = MiniCluster(workdir / "cluster")
    result = {"machine": _machine(), "poll_interval_s": POLL_INTERVAL, "window_s": window,
              "settle_s": args.settle, "ours_config": args.ours_config}

    def make_side(kind, tiny=False):
        return Side(kind, cluster, shim, workdir, tiny=tiny, settle=args.settle,
                    extra_config=args.ours_config if kind == "ours" else "")

    try:
        cluster.up()
        for user in USERS[:max(crowd, max(levels))]:
            cluster.add_user(user)
        shim, counter = make_shim(workdir)
        users = USERS[:max(crowd, max(levels))]
        if args.overhead_only:
            sides = [make_side(kind, tiny=True) for kind in ("stock", "ours")]
            try:
                for side in sides:
                    side.lab.start()
                    side.lab.add_user(users[0])
                result["spawn_to_ready_featherweight"] = measure_overhead(sides, users[0], 10)
            finally:
                for side in sides:
                    side.lab.stop()
            _emit(result, args.out)
            return
        sides = [make_side(kind) for kind in ("stock", "ours")]
        try:
            for side in sides:
                side.lab.start()
                for user in users:
                    side.lab.add_user(user)
            result["login_to_lab"] = measure_login(sides, users[:crowd], repeats)
        finally:
            for side in sides:
                side.lab.stop()
        print("login-to-lab done", file=sys.stderr)
        for kind in ("stock", "ours"):
            tiny = make_side(kind, tiny=True)
            with tiny.lab:
                for user in users:
                    tiny.lab.add_user(user)
                result.setdefault("squeue_calls_per_min", {})[kind] = measure_queries(tiny, counter, levels, window)
            print(f"{kind} squeue counts done", file=sys.stderr)
        result["ratios_ours_vs_stock"] = _ratios(result)
    finally:
        cluster.down()
        for user in USERS:
            MiniCluster.remove_user(user)
        shutil.rmtree(workdir, ignore_errors=True)
    _emit(result, args.out)


def _emit(result, out):
    result["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def _ratios(result):
    login, queries = result["login_to_lab"], result["squeue_calls_per_min"]
    ratios = {}
    for case in login["ours"]:
        for stat in ("p50_s", "p95_s"):
            ratios[f"login_{case}_{stat}"] = round(login["ours"][case][stat] / login["stock"][case][stat], 3)
    for level in queries["ours"]:
        ratios[f"squeue_per_min_{level}_sessions"] = round(queries["ours"][level] / max(queries["stock"][level], 1e-9), 3)
    return ratios


def _machine():
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "host": platform.node(),
            "load_before": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    main()
