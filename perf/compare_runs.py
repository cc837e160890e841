"""How long `aif compare` takes over 200 benchmark runs in a real MLflow server.

Creates N benchmarks laid out as docs/mlflow-layout.md says (a parent plus Accuracy,
SingleStream and Offline children: 4 MLflow runs each) in a fresh `mlflow server`, then times

- `aif compare -e perf -f csv` as a user runs it (a new process: imports included),
- the same comparison in-process (select + leaderboard + Pareto front),
- the reference: one bare paged `MlflowClient.search_runs` over the same experiment, i.e. the
  least any tool must spend to read these runs from this server; and for the CLI, a new process
  that only imports MLflow's client (most of a cold CLI call is that import).

Prints JSON; ratio = in-process comparison / bare search_runs.
    .venv/bin/python perf/compare_runs.py [--benchmarks 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aifactory.benchmarks import testing as cf
from aifactory.benchmarks.layout import OFFLINE, SINGLE_STREAM, Metrics

EXPERIMENT = "perf"


def synthetic_result(i, rng):
    """Contract-shaped data: 20 models x backends, accuracies and latencies that differ."""
    n = 300
    y_true = rng.integers(0, 10, n)
    acc = 0.85 + 0.14 * rng.random()
    y_pred = np.where(rng.random(n) < acc, y_true, (y_true + 1) % 10)
    scores = rng.random((n, 10)).astype(np.float32)
    base = 1e-3 * (0.5 + 4 * rng.random())
    latencies = {SINGLE_STREAM: rng.lognormal(np.log(base), 0.3, 200), OFFLINE: np.array([base * n / 8])}
    return cf.ModelResult(model=f"model-{i % 20:02d}", y_true=y_true, y_pred=y_pred, scores=scores,
                          latencies_s=latencies, backend=["onnxruntime:CPUExecutionProvider", "torch:eager"][i % 2],
                          extra_metrics={s: {Metrics.PEAK_HOST_MEM: 200 + 50 * rng.random()} for s in latencies})


def populate(uri, count, workers=4):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    rngs = [np.random.default_rng(i) for i in range(count)]
    # Artifacts are not needed for a leaderboard; leaving them out keeps setup short.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: cf.log_benchmark(client, experiment_id, synthetic_result(i, rngs[i]),
                                                 with_artifacts=False), range(count)))
    return client, experiment_id


def time_reference(client, experiment_id):
    t0 = time.perf_counter()
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=10000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return time.perf_counter() - t0, len(runs)


def time_in_process(uri):
    from aifactory.benchmarks.compare import compare

    t0 = time.perf_counter()
    with compare([EXPERIMENT], tracking_uri=uri) as cmp:
        frame = cmp.to_frame()
        front = cmp.pareto()
    return time.perf_counter() - t0, len(frame), int(front["pareto"].sum())


def time_cli(uri, out):
    aif = os.path.join(os.path.dirname(sys.executable), "aif")
    t0 = time.perf_counter()
    subprocess.run([aif, "compare", "--tracking-uri", uri, "-e", EXPERIMENT, "-f", "csv", "-o", out],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def time_import_floor():
    """A new process that only imports the MLflow client: the part of the CLI time no tool can avoid."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient"], check=True)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", type=int, default=200, help="benchmark (parent) runs to create")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="aif-perf-compare-") as workdir, cf.mlflow_server(workdir) as uri:
        t0 = time.perf_counter()
        client, experiment_id = populate(uri, args.benchmarks)
        setup_s = time.perf_counter() - t0
        time_in_process(uri)  # warm the server's caches and this process's imports once
        reference, mlflow_runs = zip(*(time_reference(client, experiment_id) for _ in range(args.repeat)))
        in_process = [time_in_process(uri) for _ in range(args.repeat)]
        cli = [time_cli(uri, os.path.join(workdir, "board.csv")) for _ in range(args.repeat)]
        floor = [time_import_floor() for _ in range(args.repeat)]
    median_ref = statistics.median(reference)
    median_cmp = statistics.median(t for t, _, _ in in_process)
    print(json.dumps({
        "benchmark": "aif compare over benchmark runs",
        "benchmarks": args.benchmarks, "mlflow_runs": mlflow_runs[0], "leaderboard_rows": in_process[0][1],
        "pareto_front_size": in_process[0][2], "repeat": args.repeat,
        "setup_s": round(setup_s, 2),
        "reference_search_runs_s": round(median_ref, 3),
        "compare_in_process_s": round(median_cmp, 3),
        "compare_cli_s": round(statistics.median(cli), 3),
        "reference_mlflow_import_s": round(statistics.median(floor), 3),
        "ratio_compare_vs_search_runs": round(median_cmp / median_ref, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
