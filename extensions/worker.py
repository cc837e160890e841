"""`python -m aifactory.extensions.worker CONFIG.json`: one benchmark, out of the kernel's process.

The panel runs benchmarks here so that the kernel stays responsive, a crashing model cannot take
the kernel down, and Cancel is a signal. Protocol on stdout, one line each:
`AIF_RUN <mlflow run id>` as soon as the run exists, `AIF_PROGRESS <json>` as steps start and end,
then `AIF_RESULT <json>` or `AIF_ERROR <json>`.

The benchmark runs in a thread so that SIGTERM is handled at once even while LoadGen holds the
thread in C++ for minutes: the handler aborts the run (its MLflow run ends KILLED, the partial
results directory is removed) and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from aifactory.benchmarks import run_benchmark
from aifactory.benchmarks.config import BenchmarkConfig
from aifactory.benchmarks.errors import BenchmarkError
from aifactory.benchmarks.results import read_marker
from aifactory.common.envvars import WORKER_PARENT
from aifactory.common.procutil import die_with_parent

CANCELLED_EXIT = 130
CANCEL_REASON = "cancelled from the notebook"

_started = []  # the BenchmarkRun, once it exists: what a cancel aborts


def _emit(kind, payload):
    print(kind, payload if isinstance(payload, str) else json.dumps(payload), flush=True)


def _on_started(run):
    _started.append(run)
    if run.reporter is not None and run.reporter.parent_id:
        _emit("AIF_RUN", run.reporter.parent_id)


def _on_progress(done, total, step):
    _emit("AIF_PROGRESS", {"done": done, "total": total, "step": step})


def _cancel(signum, frame):
    for run in _started:
        run.abort(CANCEL_REASON)
    _emit("AIF_ERROR", {"error": "cancelled", "cancelled": True})
    os._exit(CANCELLED_EXIT)  # the benchmark thread may be inside LoadGen: do not wait for it


def _run(config, outcome):
    try:
        outcome["result"] = run_benchmark(config, progress=False, on_started=_on_started, on_progress=_on_progress)
    except BenchmarkError as err:
        outcome["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - shown in the panel instead of a traceback
        outcome["error"] = f"{type(err).__name__}: {err}"


def main(path):
    logging.basicConfig(level=logging.WARNING, format="WARNING: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _cancel)
    # a restarted or killed kernel must not leave a benchmark (and a RUNNING MLflow run) behind
    die_with_parent(WORKER_PARENT.get(os.getppid()))
    try:
        with open(path) as f:
            config = BenchmarkConfig.from_dict(json.load(f), source=path)
    except (OSError, ValueError) as err:  # ConfigError is a ValueError
        _emit("AIF_ERROR", {"error": str(err)})
        return 1
    outcome = {}
    thread = threading.Thread(target=_run, args=(config, outcome), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short joins: the main thread must stay free for SIGTERM
    if "error" in outcome:
        _emit("AIF_ERROR", {"error": outcome["error"]})
        return 1
    result = outcome["result"]
    _emit("AIF_RESULT", {"results_dir": result.results_dir, "mlflow_run_id": result.mlflow_run_id,
                         "mlflow": read_marker(result.results_dir)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
