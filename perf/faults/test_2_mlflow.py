"""Faults of the MLflow service: its server killed in the middle of a benchmark, and 40 users
logging at once to the default SQLite store. Same platform as test_1_sessions.py."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import yaml
from aifactory.benchmarks.result import BenchmarkResult
from aifactory.benchmarks.results import read_marker
from aifactory.benchmarks.testing import tiny_config
from conftest import USERS
from mlflow.entities import Metric, Param, RunStatus
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.rest_utils import MlflowHostCreds

AIF = os.path.join(os.path.dirname(sys.executable), "aif")


def store_as(platform, token):
    """The MLflow client's REST store with one user's hub token (threads cannot share the env var)."""
    creds = MlflowHostCreds(platform.mlflow_url, token=token)
    return RestStore(lambda: creds)


def mlflow_server_pids(platform):
    port = str(platform.runtime["mlflow"]["server_port"])
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "server" in cmdline and "--port" in cmdline and port in cmdline and any("mlflow" in c for c in cmdline[:2]):
            found.append(proc.pid)
    return found


def wait_mlflow_healthy(platform, timeout=240):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if platform.check_health().get("mlflow") == "ok":
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"the MLflow service did not come back within {timeout}s: {platform.check_health()}")


def runs_of(store, experiment_name):
    experiment = store.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return store.search_runs([experiment.experiment_id], filter_string="", run_view_type=1, max_results=1000)


def metric_count(result):
    count = sum(v is not None for v in result.metrics.values())
    return count + sum(v is not None for child in result.children for v in child.metrics.values())


def logged_metric_count(runs, parent_id):
    family = [r for r in runs if r.info.run_id == parent_id or r.data.tags.get("mlflow.parentRunId") == parent_id]
    return sum(len(r.data.metrics) for r in family), len(family)


@pytest.mark.parametrize("retries", ["default", "none"])
def test_mlflow_killed_mid_benchmark(slurm_platform, tmp_path, fault_record, retries):
    """With MLflow's default client retries the benchmark rides out the restart; without any it keeps
    the result locally and `aif bench upload` sends it later."""
    client = "MLflow client's default retries" if retries == "default" else "a client without retries"
    record = fault_record(f"mlflow_killed_mid_benchmark_{retries}_retries",
                          f"MLflow server killed in the middle of a benchmark ({client})",
                          "no result lost (kept locally and uploaded later); no run left RUNNING",
                          order=4 if retries == "default" else 4.5)
    user = USERS[-1]
    token = slurm_platform.tokens[user]
    experiment = f"{user}/faults-bench-{retries}-retries"
    config = tiny_config(tmp_path / "results", mlflow={"enabled": True, "experiment": experiment},
                         scenario={"scenarios": ["SingleStream", "Offline"], "min_duration_s": 4})
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "MLFLOW_TRACKING_URI": slurm_platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": token}
    if retries == "none":
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    store = store_as(slurm_platform, token)

    bench = subprocess.Popen([AIF, "bench", "run", str(tmp_path / "bench.yaml"), "--no-progress"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not runs_of(store, experiment):  # the parent run exists: the benchmark is logging live
            assert bench.poll() is None, f"the benchmark ended before MLflow was killed: {bench.stdout.read()}"
            assert time.monotonic() < deadline, "the benchmark never created its MLflow run"
            time.sleep(0.3)
        pids = mlflow_server_pids(slurm_platform)
        assert pids, "no MLflow server process found"
        for pid in pids:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        killed = time.monotonic()
        down_s = wait_mlflow_healthy(slurm_platform)
        output, _ = bench.communicate(timeout=600)
    finally:
        if bench.poll() is None:
            bench.kill()
    bench_s = time.monotonic() - killed
    (results_dir,) = [p for p in (tmp_path / "results").iterdir() if (p / "results.json").exists()]
    result = BenchmarkResult.from_json(results_dir / "results.json")
    marker = read_marker(results_dir)
    uploaded_live = bool(marker.get("uploaded"))
    kept_reason, partial = marker.get("reason"), marker.get("partial_run_id")
    upload = None
    if not uploaded_live:
        upload = subprocess.run([AIF, "bench", "upload", str(results_dir)], check=False, env=env, capture_output=True, text=True,
                                timeout=300)
    marker = read_marker(results_dir)
    runs = runs_of(store, experiment)
    logged, family = logged_metric_count(runs, marker.get("run_id"))
    stuck = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    kept = metric_count(result)
    partial_status = store.get_run(partial).info.status if partial else None
    record.figures = {
        "bench_exit_code": bench.returncode, "mlflow_back_after_s": round(down_s, 1),
        "bench_finished_after_kill_s": round(bench_s, 1), "uploaded_live": uploaded_live,
        "kept_locally_because": kept_reason, "upload_exit_code": upload and upload.returncode,
        "metrics_kept_locally": kept, "metrics_in_mlflow": logged, "runs_in_mlflow_for_result": family,
        "children_kept": len(result.children), "runs_left_running": len(stuck),
        "half_logged_run_status": partial_status,
    }
    how = "logged live after the client's retries" if uploaded_live else "kept locally, then `aif bench upload`"
    record.observed = (f"MLflow back after {down_s:.0f} s (the hub restarts its service); result {how}: "
                       f"{logged}/{kept} metrics in MLflow over {family} runs; {len(stuck)} runs left RUNNING"
                       + (f" (the half-logged run is {partial_status})" if partial else ""))
    assert bench.returncode == 0, output[-3000:]
    assert upload is None or upload.returncode == 0, (upload.stdout, upload.stderr)
    assert marker.get("uploaded") and logged == kept and family == len(result.children) + 1
    assert not stuck, f"runs stuck RUNNING: {stuck}"
    assert partial_status in (None, "FAILED"), partial_status


LOAD_USERS = 40
BATCHES, METRICS_PER_BATCH = 10, 5


def _log_as(platform, user, token, barrier):
    """One user's MLflow work: an experiment, a run, BATCHES log_batch calls, the run ended."""
    store = store_as(platform, token)
    barrier.wait()
    errors, started = [], time.monotonic()
    run_id = None
    try:
        experiment_id = store.create_experiment(f"{user}/faults-load")
        run = store.create_run(experiment_id, user, int(time.time() * 1000), [], "load")
        run_id = run.info.run_id
        for step in range(BATCHES):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{k}", step * 0.5 + k, now, step) for k in range(METRICS_PER_BATCH)]
            store.log_batch(run_id, metrics, [Param("step0", "x")] if step == 0 else [], [])
        store.update_run_info(run_id, RunStatus.FINISHED, int(time.time() * 1000), "load")
    except Exception as err:  # noqa: BLE001 - counted: every failed user is a figure
        errors.append(f"{type(err).__name__}: {err}")
    return {"user": user, "run_id": run_id, "errors": errors, "seconds": time.monotonic() - started}


def test_forty_users_log_at_once_on_sqlite(slurm_platform, fault_record):
    record = fault_record("mlflow_40_users_sqlite", f"{LOAD_USERS} users logging to MLflow at once (default SQLite store)",
                          'no "database is locked"', order=5)
    users = [f"aifm{n:02d}" for n in range(1, LOAD_USERS + 1)]
    tokens = {}
    for user in users:
        slurm_platform.add_user(user)
        tokens[user] = slurm_platform.user_token(user)
    server_log = slurm_platform.state / "mlflow" / "mlflow-server.log"
    locked_before = server_log.read_text(errors="replace").count("database is locked")
    barrier = threading.Barrier(LOAD_USERS)
    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_USERS) as pool:
        outcomes = list(pool.map(lambda u: _log_as(slurm_platform, u, tokens[u], barrier), users))
    wall = time.monotonic() - started
    locked_after = server_log.read_text(errors="replace").count("database is locked")

    readable = 0
    for outcome in outcomes:
        if outcome["run_id"]:
            store = store_as(slurm_platform, tokens[outcome["user"]])
            readable += sum(len(store.get_metric_history(outcome["run_id"], f"m{k}")) for k in range(METRICS_PER_BATCH))
    errors = [e for o in outcomes for e in o["errors"]]
    locked = sum("database is locked" in e for e in errors) + (locked_after - locked_before)
    expected_points = LOAD_USERS * BATCHES * METRICS_PER_BATCH
    record.figures = {
        "users": LOAD_USERS, "requests_per_user": BATCHES + 3, "points_logged": expected_points,
        "points_readable": readable, "users_failed": sum(bool(o["errors"]) for o in outcomes),
        "database_is_locked": locked, "wall_s": round(wall, 1),
        "slowest_user_s": round(max(o["seconds"] for o in outcomes), 1), "first_errors": errors[:3],
    }
    record.observed = (f"{readable}/{expected_points} points readable, {record.figures['users_failed']} users "
                       f"failed, {locked} 'database is locked' (client or server log); all {LOAD_USERS} done "
                       f"in {wall:.0f} s")
    assert locked == 0, errors[:5]
    assert not errors and readable == expected_points, errors[:5]
