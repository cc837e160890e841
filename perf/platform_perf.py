"""Platform figures: cold start, login-to-JupyterLab, MLflow logging points/s vs stock MLflow.

Prints one JSON object. Run: .venv/bin/python perf/platform_perf.py [--steps 5000] [--rounds 3]
Everything runs on real components, on this machine; stock MLflow (a plain `mlflow server`
on SQLite, per-call and log_batch) is measured in the same run as the reference.
"""

import argparse
import json
import os
import platform as pyplatform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from aifactory.common.net import free_port
from aifactory.hub.platform import Platform
from aifactory.hub.testing.kernel import run_in_kernel
from aifactory.hub.testing.platform import login, open_lab

NAIVE_LOOP = """
import json, os, time, mlflow
from mlflow import MlflowClient
steps = {steps}
t0 = time.perf_counter()
with mlflow.start_run() as run:
    t_started = time.perf_counter()
    for step in range(steps):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    t_loop = time.perf_counter()
    mlflow.flush_async_logging()
    t_flushed = time.perf_counter()
t_ended = time.perf_counter()
# end-to-end: until every point is readable back through the hub service
client = MlflowClient()
while len(client.get_metric_history(run.info.run_id, "loss")) < steps:
    time.sleep(0.05)
total = time.perf_counter() - t0
print(json.dumps({{"steps": steps, "loop_s": t_loop - t_started, "end_to_end_s": total,
                   "phases_s": {{"start_run": t_started - t0, "loop": t_loop - t_started,
                                "flush": t_flushed - t_loop, "end_run": t_ended - t_flushed,
                                "read_back": time.perf_counter() - t_ended}},
                   "store": type(client._tracking_client.store).__name__,
                   "async": os.environ.get("MLFLOW_ENABLE_ASYNC_LOGGING")}}))
"""


def measure_platform(state, steps, rounds):
    result = {}
    t0 = time.perf_counter()
    platform = Platform(state, port=free_port()).start(timeout=300)
    result["cold_start_s"] = time.perf_counter() - t0
    try:
        admin = platform.settings.admin_user
        t0 = time.perf_counter()
        session = login(platform.url, admin, platform.admin_password)
        result["login_to_lab_s"] = (time.perf_counter() - t0) + open_lab(session, platform.url, admin)
        loops = []
        for _ in range(rounds):  # each in a fresh kernel, as a user's new notebook
            out = run_in_kernel(f"{platform.url}/user/{admin}", platform.user_token(admin),
                                NAIVE_LOOP.format(steps=steps), timeout=900)
            loop = json.loads(out.strip().splitlines()[-1])
            loops.append({**loop, "points_per_s": steps / loop["end_to_end_s"]})
        median = statistics.median(loop["points_per_s"] for loop in loops)
        result["naive_loop"] = {"points_per_s": median, "median_of": rounds, "rounds": loops}
        t0 = time.perf_counter()
        platform.restart_hub()
        result["hub_restart_s"] = time.perf_counter() - t0
    finally:
        platform.stop()
    t0 = time.perf_counter()
    platform = Platform(state, port=free_port()).start(timeout=300)
    result["warm_start_s"] = time.perf_counter() - t0
    platform.stop()
    return result


def measure_stock(tmp, per_call_steps, batch_steps):
    """A plain `mlflow server` on SQLite: the reference a user would otherwise get."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp}/stock.sqlite", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        code = STOCK_CLIENT.format(url=url, per_call=per_call_steps, batch=batch_steps)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**env, "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.killpg(server.pid, 15)
        server.wait()


STOCK_CLIENT = """
import json, time, mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
mlflow.set_tracking_uri("{url}")
client = MlflowClient()
with mlflow.start_run() as run:
    t0 = time.perf_counter()
    for step in range({per_call}):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    per_call = {per_call} / (time.perf_counter() - t0)
    ts = int(time.time() * 1000)
    metrics = [Metric("batched", 1.0 / (s + 1), ts, s) for s in range({batch})]
    t0 = time.perf_counter()
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
    batch = {batch} / (time.perf_counter() - t0)
print(json.dumps({{"per_call_points_per_s": per_call, "log_batch_points_per_s": batch}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="naive loops, each in a new kernel; the median counts")
    parser.add_argument("--stock-per-call-steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure_platform(Path(tmp) / "state", args.steps, args.rounds)
        stock = measure_stock(tmp, args.stock_per_call_steps, args.steps)
    points = ours["naive_loop"]["points_per_s"]
    report = {
        "benchmark": "platform",
        "machine": f"{pyplatform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        **ours,
        "stock": stock,
        "logging_ratio_vs_stock_per_call": points / stock["per_call_points_per_s"],
        "targets": {"points_per_s": 5000, "ratio_vs_stock_per_call": 250},
        "meets_targets": points >= 5000 and points / stock["per_call_points_per_s"] >= 250,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
