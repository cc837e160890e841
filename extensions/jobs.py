"""A benchmark running in a worker process, watched from a thread: progress, result, cancel.

Used by the BenchmarkPanel and by `%%aif_bench`. The kernel only reads pipes, so it stays
responsive; Cancel sends SIGTERM (the worker ends the MLflow run as KILLED and removes its partial
results), then SIGKILL after `kill_after_s`, in which case the run is ended here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

from aifactory.benchmarks import BenchmarkConfig
from aifactory.common.envvars import WORKER_PARENT


@dataclass
class JobState:
    done: int = 0
    total: int = 0
    step: str = "starting"
    status: str = "RUNNING"  # RUNNING | FINISHED | FAILED | CANCELLED
    error: str | None = None
    warnings: list = field(default_factory=list)
    mlflow_run_id: str | None = None
    outcome: dict | None = None


class BenchmarkJob:
    """One benchmark in a worker process. `on_update(state)` is called from the watcher thread."""

    def __init__(self, config: BenchmarkConfig | dict, on_update=None, kill_after_s=15.0):
        self.config = config if isinstance(config, BenchmarkConfig) else BenchmarkConfig.from_dict(config)
        self.on_update = on_update or (lambda state: None)
        self.kill_after_s = kill_after_s
        self.state = JobState()
        self.proc = None
        self._cancelled = False
        self._threads = []
        self._finished = threading.Event()

    def start(self):
        fd, self.config_path = tempfile.mkstemp(prefix="aif-bench-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config.to_dict(), f)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", WORKER_PARENT.name: str(os.getpid())}
        self.proc = subprocess.Popen([sys.executable, "-m", "aifactory.extensions.worker", self.config_path],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()
        threading.Thread(target=self._reap, daemon=True).start()
        return self

    @property
    def running(self):
        return self.proc is not None and self.state.status == "RUNNING"

    def wait(self, timeout=None):
        self._finished.wait(timeout)
        return self.state

    def cancel(self):
        """Stop the worker; returns at once, the watcher records the end."""
        if not self.running:
            return
        self._cancelled = True
        self.proc.send_signal(signal.SIGTERM)
        timer = threading.Timer(self.kill_after_s, self._kill)
        timer.daemon = True  # never keeps the kernel (or a script) alive
        timer.start()

    def _kill(self):
        if self.proc.poll() is None:
            self.proc.kill()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            kind, _, payload = raw.decode(errors="replace").strip().partition(" ")
            if kind == "AIF_RUN":
                self.state.mlflow_run_id = payload
            elif kind == "AIF_PROGRESS":
                progress = json.loads(payload)
                self.state.done, self.state.total, self.state.step = progress["done"], progress["total"], progress["step"]
            elif kind == "AIF_RESULT":
                self.state.outcome = json.loads(payload)
            elif kind == "AIF_ERROR":
                self.state.error = json.loads(payload)["error"]
            else:
                continue
            self._notify()

    def _read_stderr(self):
        buffer = ""
        while True:
            chunk = os.read(self.proc.stderr.fileno(), 4096)  # whatever is there: warnings must not wait
            if not chunk:
                break
            buffer += chunk.decode(errors="replace")
            *lines, buffer = re.split(r"[\r\n]", buffer)
            for line in lines:
                self._stderr_line(line)

    def _stderr_line(self, line):
        if line.startswith("WARNING: "):
            self.state.warnings.append(line[len("WARNING: "):])
            self._notify()

    def _reap(self):
        code = self.proc.wait()
        for thread in self._threads:
            thread.join()
        os.unlink(self.config_path)
        if code == 0 and self.state.outcome is not None:
            self.state.status = "FINISHED"
        elif self._cancelled:
            self.state.status, self.state.error = "CANCELLED", "cancelled"
            self._end_run_if_left_running()
        else:
            self.state.status = "FAILED"
            self.state.error = self.state.error or f"the benchmark worker exited with code {code}"
        self._notify()  # the panel renders before wait() returns
        self._finished.set()

    def _end_run_if_left_running(self):
        """After SIGKILL the worker could not end its MLflow run: do it here."""
        if not self.state.mlflow_run_id:
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.config.mlflow.tracking_uri)
            if client.get_run(self.state.mlflow_run_id).info.status == "RUNNING":
                client.set_terminated(self.state.mlflow_run_id, "KILLED")
        except Exception:  # noqa: BLE001, S110 - MLflow gone: nothing more can be recorded there
            pass

    def _notify(self):
        try:
            self.on_update(self.state)
        except Exception:  # noqa: BLE001, S110 - a display problem must not kill the watcher
            pass

    def result(self):
        """The BenchmarkResult of a finished job."""
        from aifactory.benchmarks import BenchmarkResult

        if self.state.status != "FINISHED":
            raise RuntimeError(self.state.error or f"benchmark {self.state.status.lower()}")
        return BenchmarkResult.from_json(self.state.outcome["results_dir"])
