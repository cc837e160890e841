"""A class starts at once: 30 workshop seats log in and spawn together on the mini-cluster (issue 7).

`aif workshop`'s own code makes a 30-seat workshop (1 simulated H200, 1 CPU, 1 GB per seat) on a
node with 32 GPUs; every participant logs in through the hub's form with their seat password,
submits the resource form (their only profile: the workshop's, pinned to its reservation), waits
on the progress stream as the browser's pending page does, and opens JupyterLab. Reported: ready
and failed seats, p50/p95/max seconds from login to JupyterLab, the hub's CPU seconds meanwhile,
and how long creating and ending the workshop took. Needs root, Slurm and munge. Prints JSON.

    .venv/bin/python perf/workshop_start.py [--seats 30] [--timeout 300]
"""

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from login_scale import hub_cpu_s, percentile, wait_ready  # perf/, the script's own folder

from aifactory.common.net import free_port
from aifactory.hub.cluster import ClusterSpec, MiniCluster
from aifactory.hub.platform import Platform
from aifactory.hub.testing.platform import login, open_lab
from aifactory.hub.workshops.manager import WorkshopManager

NAME, TRAINER = "perfclass", "perf-trainer"


def seat_to_lab(url, seat, password, profile, timeout):
    """Seconds from posting the login form to JupyterLab served."""
    start = time.monotonic()
    session = login(url, seat, password)
    session.get(f"{url}/hub/spawn/{seat}", timeout=60)
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    session.post(f"{url}/hub/spawn/{seat}", data={"profile": profile, "_xsrf": xsrf}, timeout=60)
    wait_ready(session, url, seat, start + timeout)
    open_lab(session, url, seat, timeout=max(10, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def class_starts(platform, seats, profile, timeout):
    hub = psutil.Process(platform.procs["hub"].pid)
    cpu0 = hub_cpu_s(hub)

    def one(item):
        seat, password = item
        try:
            return seat_to_lab(platform.url, seat, password, profile, timeout), None
        except (requests.RequestException, AssertionError, RuntimeError, ValueError) as err:
            return None, f"{seat}: {type(err).__name__}: {err}"[:300]

    with ThreadPoolExecutor(len(seats)) as pool:
        outcomes = list(pool.map(one, seats.items()))
    times = [t for t, _ in outcomes if t is not None]
    return times, [e for _, e in outcomes if e], hub_cpu_s(hub) - cpu0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=300, help="seconds a seat may take before it counts as failed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aif-workshop-perf-"))
    workdir.chmod(0o755)  # the cluster's state must be traversable by the seats' jobs
    cluster = MiniCluster(workdir / "cluster", ClusterSpec(gpus=32))
    platform = manager = None
    result = {"benchmark": "workshop_class_start", "seats": args.seats, "date": time.strftime("%Y-%m-%d %H:%M"),
              "cpus": os.cpu_count(), "load_avg_1m": [round(os.getloadavg()[0], 2)]}
    try:
        cluster.up()
        platform = Platform(workdir / "state", port=free_port(), spawner="slurm", slurm_conf=cluster.slurm_conf,
                            env=cluster.env()).start(timeout=300)
        platform.add_user(TRAINER)
        manager = WorkshopManager(platform)
        t0 = time.monotonic()
        ws, seats_csv = manager.create(NAME, args.seats, TRAINER, gpus_per_seat=1, memory_gb_per_seat=1)
        result["create_s"] = round(time.monotonic() - t0, 1)
        seats = {row["login"]: row["password"] for row in csv.DictReader(io.StringIO(seats_csv))}
        times, errors, cpu = class_starts(platform, seats, ws.profile_name, args.timeout)
        result.update(ready=len(times), failed=len(errors), errors=errors[:5], hub_cpu_s=round(cpu, 1),
                      p50_s=round(statistics.median(times), 1) if times else None,
                      p95_s=round(percentile(times, 95), 1) if times else None,
                      max_s=round(max(times), 1) if times else None)
        t0 = time.monotonic()
        manager.end(NAME, archive_dir=workdir / "archives")
        result["end_s"] = round(time.monotonic() - t0, 1)
    finally:
        if manager and (ws_left := manager.book.load(NAME)) and ws_left.state != "ended":
            manager.end(NAME, archive_dir=workdir / "archives")
        if platform:
            platform.stop()
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    result["load_avg_1m"].append(round(os.getloadavg()[0], 2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
