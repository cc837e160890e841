"""MLflow logging from sessions: the buffering client store and the bulk-ingesting server store.

The session side (extensions/mlflow_logging.py) is exercised from a real kernel on the real
platform and against a real MLflow server; the server side (hub/mlflow_bulk_store.py) against
MLflow's own SqlAlchemyStore on the same SQLite database.
"""

import json
import math
import os
import subprocess
import sys

import requests
from aifactory.hub.testing.kernel import run_in_kernel
from aifactory.hub.testing.platform import login, open_lab


def api(platform, token, method, endpoint, **kwargs):
    url = f"{platform.mlflow_url}/api/2.0/mlflow/{endpoint}"
    return requests.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs)


NAIVE_LOOP = r"""
import mlflow
from mlflow import MlflowClient
with mlflow.start_run() as run:
    for step in range(5000):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    # no flush: a read through the client sees what was logged before it
    for step in range(7):
        mlflow.log_metric("lr", 0.1 * step, step=step)
    seen_inside = len(MlflowClient().get_metric_history(run.info.run_id, "lr"))
history = MlflowClient().get_metric_history(run.info.run_id, "loss")
print("store", type(MlflowClient()._tracking_client.store).__name__)
print("seen_inside", seen_inside)
print("steps", sorted(m.step for m in history) == list(range(5000)))
print("values", all(m.value == 1.0 / (m.step + 1) for m in history))
print("run", run.info.run_id)
"""

REFUSED_TAG = r"""
import mlflow
with mlflow.start_run() as run:
    for step in range(20):
        mlflow.log_metric("kept", float(step), step=step)
    mlflow.set_tag("mlflow.user", "somebody-else")  # the platform refuses it (attribution)
print("run", run.info.run_id)
mlflow.flush_async_logging()  # still refused: said again, still kept
"""


def _session(platform):
    admin = platform.settings.admin_user
    open_lab(login(platform.url, admin, platform.admin_password), platform.url, admin)
    return f"{platform.url}/user/{admin}", platform.user_token(admin)


def test_naive_loop_in_a_session_reads_back_every_point(platform):
    server, token = _session(platform)
    out = run_in_kernel(server, token, NAIVE_LOOP, timeout=600)
    assert "store BufferedRestStore" in out
    assert "seen_inside 7" in out
    assert "steps True" in out and "values True" in out
    run_id = out.split("run ")[-1].strip()
    # read back past the session's client: exactly 5,000 points, each step once
    history = api(platform, token, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss"})
    steps = [m["step"] for m in history.json()["metrics"]]
    assert len(steps) == 5000 and sorted(steps) == list(range(5000))
    run = api(platform, token, "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert run["info"]["status"] == "FINISHED"


def test_refused_data_is_reported_and_the_run_ends_failed(platform):
    server, token = _session(platform)
    out = run_in_kernel(server, token, REFUSED_TAG)
    run_id = out.split("run ")[-1].split()[0]
    assert f"MLflow run {run_id} ends FAILED" in out
    assert "tag mlflow.user is set by the platform" in out
    assert out.count("1 tags could not be stored") >= 2, out  # at end_run, and again at the flush
    run = api(platform, token, "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert run["info"]["status"] == "FAILED"
    assert {"key": "mlflow.user", "value": platform.settings.admin_user} in run["data"]["tags"]
    # what the server accepted is all there: the refused tag did not take the points with it
    history = api(platform, token, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "kept"})
    assert sorted(m["step"] for m in history.json()["metrics"]) == list(range(20))


PARAMS_AND_TAGS = r"""
import json, mlflow, requests
from mlflow import MlflowClient
with mlflow.start_run() as run:
    for i in range(150):
        mlflow.log_param(f"p{i}", i)
    mlflow.log_param("p0", 0)  # the same value again: accepted, as MLflow does
    mlflow.set_tag("phase", "warmup")
    mlflow.set_tag("phase", "train")  # a tag set twice keeps its last value
    for step in range(2500):
        mlflow.log_metrics({"a": float(step), "b": -float(step)}, step=step)
    mlflow.flush_async_logging()
    # read past the client: a flush returns only once a send in flight is done too
    flushed = requests.get(f"{mlflow.get_tracking_uri()}/api/2.0/mlflow/metrics/get-history",
                           params={"run_id": run.info.run_id, "metric_key": "a"}, timeout=60).json()
    mlflow.log_metric("odd", float("nan"), step=0)
    mlflow.log_metric("odd", float("inf"), step=1)
    operations = mlflow.log_metric("odd", 1.5, step=2)
    operations.wait()
client = MlflowClient()
data = client.get_run(run.info.run_id).data
print(json.dumps({
    "store": type(client._tracking_client.store).__name__,
    "params": len(data.params), "phase": data.tags["phase"], "status": client.get_run(run.info.run_id).info.status,
    "flushed": len(flushed["metrics"]),
    "a": len(client.get_metric_history(run.info.run_id, "a")),
    "b": len(client.get_metric_history(run.info.run_id, "b")),
    "odd": [repr(m.value) for m in sorted(client.get_metric_history(run.info.run_id, "odd"), key=lambda m: m.step)],
}))
"""


def test_params_tags_and_metrics_arrive_whole(mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
           "AIF_MLFLOW_BUFFERED_LOGGING": "1", "MLFLOW_EXPERIMENT_NAME": "buffered-logging"}
    result = subprocess.run([sys.executable, "-c", PARAMS_AND_TAGS], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["store"] == "BufferedRestStore"
    assert got["params"] == 150 and got["phase"] == "train" and got["status"] == "FINISHED"
    assert got["flushed"] == got["a"] == got["b"] == 2500
    # SQL cannot store infinity: MLflow keeps the largest double, as it does without buffering
    assert got["odd"] == ["nan", repr(1.7976931348623157e308), "1.5"]


FLUSH_RACE = r"""
import mlflow, requests, time
url = f"{mlflow.get_tracking_uri()}/api/2.0/mlflow/metrics/get-history"
missed = 0
with mlflow.start_run() as run:
    for i in range(100):
        mlflow.log_metric("r", float(i), step=i)
        time.sleep(0.045)  # the 50 ms timer takes the point: the flush lands while it is being sent
        mlflow.flush_async_logging()
        got = requests.get(url, params={"run_id": run.info.run_id, "metric_key": "r"}, timeout=60).json()
        missed += len(got.get("metrics", [])) != i + 1
print("missed", missed)
"""


def test_flush_waits_for_a_send_in_flight(mlflow_server, tmp_path):
    """After flush_async_logging() every point is on the server, even one the background thread
    had already taken (read past the client, so the client's own flush-before-read cannot help)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
           "AIF_MLFLOW_BUFFERED_LOGGING": "1", "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "0.05",
           "MLFLOW_EXPERIMENT_NAME": "flush-race"}
    result = subprocess.run([sys.executable, "-c", FLUSH_RACE], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "missed 0" in result.stdout


def test_unreachable_server_is_reported_and_nothing_is_dropped(tmp_path):
    from aifactory.common.net import free_port

    code = r"""
import mlflow, time
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
client = MlflowClient()
operations = client.log_metric("0123456789abcdef0123456789abcdef", "x", 1.0, step=0, synchronous=False)
try:
    operations.wait()
except MlflowException as err:
    print("raised", err)
mlflow.flush_async_logging()
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "AIF_MLFLOW_BUFFERED_LOGGING": "1",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "raised MLflow run 0123456789abcdef0123456789abcdef: 1 metric points could not be stored" in result.stdout
    # said at the explicit flush, and once more at exit, where the point is still kept
    assert result.stderr.count("1 metric points could not be stored") >= 2, result.stderr


def test_bulk_store_stores_what_mlflows_store_stores(tmp_path):
    """Same batches into MLflow's store and the bulk store: same history, same latest values."""
    from aifactory.hub.tracking.bulk_store import BulkIngestStore
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    stock = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))
    bulk = BulkIngestStore(uri, str(tmp_path / "artifacts"))
    experiment = stock.create_experiment("bulk")

    def m(key, value, step, ts=1000):
        return Metric(key, value, ts, step)

    batches = [
        [m("loss", 1.0 / (s + 1), s) for s in range(1500)] + [m("loss", 0.5, 3)],  # a point twice
        [m("acc", 0.1, 5), m("acc", 0.9, 2), m("acc", math.nan, 7), m("acc", math.inf, 1), m("acc", -math.inf, 0)],
        [m("loss", 1.0 / (s + 1), s) for s in range(1000, 1200)],  # a batch sent again: no duplicates
        [m("late", 1.0, 10, ts=5), m("late", 2.0, 10, ts=9), m("late", 3.0, 10, ts=7)],
        [m("late", 4.0, 9)],  # one point: MLflow's own path
    ]
    results = []
    for store in (stock, bulk):
        run_id = store.create_run(experiment, "u", 0, [], "r").info.run_id
        for batch in batches:
            for i in range(0, len(batch), 1000):
                store.log_batch(run_id, metrics=batch[i:i + 1000], params=[], tags=[])
        histories = {
            key: sorted((h.step, h.timestamp, repr(h.value)) for h in store.get_metric_history(run_id, key))
            for key in ("loss", "acc", "late")
        }
        latest = {k: repr(v) for k, v in store.get_run(run_id).data.metrics.items()}
        pages, token = [], None
        while True:  # paginated, as the REST API pages
            page = store.get_metric_history(run_id, "loss", max_results=400, page_token=token)
            pages.append([(h.step, h.timestamp, h.value) for h in page])
            if not (token := page.token):
                break
        results.append((histories, latest, pages))
    assert results[0] == results[1]
    assert len(results[1][0]["loss"]) == 1501
    assert [len(page) for page in results[1][2]] == [400, 400, 400, 301]


def test_service_still_refuses_forged_attribution_in_large_batches(platform):
    """The service forwards a checked log-batch as it came: a forged tag among 1,000 points is
    still refused, and nothing of that request is stored."""
    token = platform.user_token(platform.settings.admin_user)
    created = api(platform, token, "POST", "experiments/create", json={"name": f"{platform.settings.admin_user}/forged"})
    run_id = api(platform, token, "POST", "runs/create",
                 json={"experiment_id": created.json()["experiment_id"]}).json()["run"]["info"]["run_id"]
    body = {"run_id": run_id, "metrics": [{"key": "x", "value": 1.0, "timestamp": 1, "step": s} for s in range(1000)],
            "tags": [{"key": "mlflow\u002euser", "value": "somebody-else"}]}
    refused = requests.post(f"{platform.mlflow_url}/api/2.0/mlflow/runs/log-batch",
                            data=json.dumps(body, ensure_ascii=True).replace(".user", "\\u002euser"),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                            timeout=60)
    assert refused.status_code == 403
    history = api(platform, token, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "x"})
    assert history.json().get("metrics", []) == []
