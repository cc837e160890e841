"""`python -m aifactory.extensions.worker CONFIG.json`: one benchmark, out of the kernel's process.

The panel runs benchmarks here so that the kernel stays responsive, a crashing model cannot take
the kernel down, and Cancel is a signal. Protocol on stdout, one line each:
`AIF_RUN <mlflow run id>` as soon as the run exists, then `AIF_RESULT <json>` or `AIF_ERROR <json>`.
Progress comes from the runner's tqdm bar, formatted by TQDM_* environment variables (see jobs.py).

The benchmark runs in a thread so that SIGTERM is handled at once even while LoadGen holds the
thread in C++ for minutes: the handler ends the MLflow run as KILLED, removes the partial results
directory and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import ClassVar

from aifactory.benchmarks import runner
from aifactory.common.envvars import WORKER_PARENT
from aifactory.common.procutil import die_with_parent
from aifactory.benchmarks.reporters import LocalWriter, MLflowReporter, read_marker

CANCELLED_EXIT = 130


class AnnouncingReporter(MLflowReporter):
    """Tells the panel the run id as soon as it exists (for its link and for clean-up)."""

    started: ClassVar[list] = []

    def start(self, result, params):
        ok = super().start(result, params)
        if ok:
            AnnouncingReporter.started.append(self)
            _emit("AIF_RUN", self.parent_id)
        return ok


class TrackedWriter(LocalWriter):
    """Remembers its partial directory so that a cancel can remove it."""

    made: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        TrackedWriter.made.append(self)


def _emit(kind, payload):
    print(kind, payload if isinstance(payload, str) else json.dumps(payload), flush=True)


def _cancel(signum, frame):
    for reporter in AnnouncingReporter.started:
        reporter._terminate(reporter.parent_id, "KILLED", "cancelled from the notebook")
    for writer in TrackedWriter.made:
        writer.discard()
    _emit("AIF_ERROR", {"error": "cancelled", "cancelled": True})
    os._exit(CANCELLED_EXIT)  # the benchmark thread may be inside LoadGen: do not wait for it


def _run(config, outcome):
    from aifactory.benchmarks.cli import _user_errors

    try:
        outcome["result"] = runner.run_benchmark(config, progress=True)
    except _user_errors() as err:
        outcome["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - shown in the panel instead of a traceback
        outcome["error"] = f"{type(err).__name__}: {err}"


def _die_with_the_kernel():
    """A restarted or killed kernel must not leave a benchmark (and a RUNNING MLflow run) behind."""
    die_with_parent(WORKER_PARENT.get(os.getppid()))


def main(path):
    from aifactory.benchmarks.config import BenchmarkConfig, ConfigError

    logging.basicConfig(level=logging.WARNING, format="WARNING: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _cancel)
    _die_with_the_kernel()
    runner.MLflowReporter, runner.LocalWriter = AnnouncingReporter, TrackedWriter
    try:
        with open(path) as f:
            config = BenchmarkConfig.from_dict(json.load(f), source=path)
    except (OSError, ValueError, ConfigError) as err:
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
