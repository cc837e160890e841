"""What `aif serve` does, as functions the CLI, the Python API and the hub's service share."""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass

import requests

from ...common.files import write_private

from . import tracking
from .endpoints import Endpoint, EndpointStore, ServeError, check_name, check_text_generation_model
from .engines import check_engine, default_engine_python, engine_command, engine_env
from .jobs import cancel, job_script, job_state, resolve_resources, submit

LOG_TAIL_LINES = 20


def current_user():
    # the account itself, not $USER (which a caller's environment may carry over)
    return pwd.getpwuid(os.getuid()).pw_name


def start(model, name=None, engine="vllm", profile=None, gpus=None, hours=None, cpus=None, memory_gb=None,
          max_model_len=None, user=None, engine_python=None):
    """Validate everything, then submit the endpoint's job; nothing is left behind on a refusal."""
    user = user or current_user()
    model_path = check_text_generation_model(model)
    name = check_name(name or _name_from(model_path.name))
    python = check_engine(engine, engine_python or default_engine_python())
    request = resolve_resources(user, {"profile": profile, "gpus": gpus, "hours": hours, "cpus": cpus,
                                       "memory_gb": memory_gb})
    store = EndpointStore(user)
    endpoint = store.create(Endpoint(name=name, owner=user, model=str(model_path), served_model_name=name,
                                     engine=engine, request=request.to_state()))
    try:
        script = endpoint.folder / "job.sh"
        write_private(script, job_script(endpoint, request, engine_command(python, model_path, name, request.gpus,
                                                                       max_model_len), engine_env(request.gpus), python))
        endpoint.job_id = submit(script)
    except BaseException:
        store.remove(name)  # a refused job leaves no record to confuse `list`
        raise
    endpoint.save()
    endpoint.mlflow_run_id = tracking.start_run(endpoint, request, python)
    endpoint.save()
    return endpoint


def _name_from(text):
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return (cleaned or "model")[:32].strip("-")


@dataclass
class Status:
    endpoint: Endpoint
    phase: str  # queued, loading, ready, ended, stopped
    detail: str

    def line(self):
        return f"{self.endpoint.name}: {self.phase} ({self.detail})"


def status(name, user=None):
    endpoint = EndpointStore(user or current_user()).get(name)
    return describe(endpoint)


def describe(endpoint):
    if endpoint.stopped:
        reason = f" {endpoint.stop_reason}" if endpoint.stop_reason else ""
        return Status(endpoint, "stopped", f"stopped at {_when(endpoint.stopped)}{reason}")
    job = job_state(endpoint.job_id)
    if job.state == "PENDING":
        where = f"position {job.position} in partition {job.partition}" if job.position else f"partition {job.partition}"
        return Status(endpoint, "queued", f"Slurm job {endpoint.job_id}, {where}, waiting for: {job.reason}")
    if job.state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        address = endpoint.address()
        if address and engine_healthy(*address):
            return Status(endpoint, "ready", f"job {endpoint.job_id} on {job.node}, engine at {address[0]}:{address[1]}")
        return Status(endpoint, "loading", f"job {endpoint.job_id} on {job.node}, the engine is loading the model")
    tail = log_tail(endpoint)
    what = f"Slurm job {endpoint.job_id} ended" + (f" ({job.state})" if job.state else "")
    return Status(endpoint, "ended", what + (f"; last lines of {endpoint.log_path()}:\n{tail}" if tail else ""))


def engine_healthy(host, port, timeout=2):
    try:
        return requests.get(f"http://{host}:{port}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_ready(name, timeout, user=None, on_change=None):
    """Wait until the endpoint is ready; on timeout or a dead engine, stop it and raise with the log tail."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        current = status(name, user)
        if on_change and current.line() != last:
            on_change(current)
            last = current.line()
        if current.phase == "ready":
            return current
        if current.phase in ("ended", "stopped"):
            raise ServeError(f"endpoint {name} did not start: {current.detail}")
        if time.monotonic() > deadline:
            tail = log_tail(current.endpoint)
            stop(name, user)
            raise ServeError(f"endpoint {name} was not healthy after {timeout:.0f} s ({current.phase}); it was "
                             f"stopped. Last lines of {current.endpoint.log_path()}:\n{tail}")
        time.sleep(1)


def stop(name, user=None, remove=False, reason=""):
    """Cancel the job (an ended job is fine) and mark the endpoint stopped; `remove` deletes its record.

    `reason`: why, when not its owner's `aif serve stop` (the hub's idle stop); status shows it.
    """
    store = EndpointStore(user or current_user())
    endpoint = store.get(name)
    job = job_state(endpoint.job_id) if endpoint.job_id else None
    if not endpoint.stopped:  # first the run (the engine's /metrics while it still answers), then the job
        tracking.end_run(endpoint, (job and job.node) or endpoint.node(), ended_by_itself=not (job and job.state))
    if job and job.state:
        cancel(endpoint.job_id)
        _wait_job_gone(endpoint.job_id)
    if not endpoint.stopped:
        endpoint.stopped, endpoint.stop_reason = time.time(), reason
    endpoint.save()
    (endpoint.folder / "address.json").unlink(missing_ok=True)  # nothing points at a dead engine
    if remove:
        store.remove(name)
    return endpoint


def _wait_job_gone(job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job_state(job_id).state:
        time.sleep(0.5)


def share(name, group, user=None, remove=False):
    endpoint = EndpointStore(user or current_user()).get(name)
    groups = set(endpoint.groups)
    groups = groups - {group} if remove else groups | {group}
    endpoint.groups = sorted(groups)
    endpoint.save()
    return endpoint


def log_tail(endpoint, lines=LOG_TAIL_LINES):
    try:
        return "\n".join(endpoint.log_path().read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _when(stamp):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
