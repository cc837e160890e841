"""One shared view of the Slurm queue per hub.

Stock batchspawner runs one `squeue -j <id>` subprocess per user per poll, so the load on the
login node and slurmctld grows with the number of sessions. Here every spawner of a hub reads a
shared snapshot, refreshed by at most one `squeue` call at a time for all jobs at once; a caller
that needs fresher data than the snapshot joins the call in flight instead of starting another.

A failing `squeue` (controller down, timeout) yields an *unknown* snapshot: spawners keep their
servers and ask again later. Only a job that Slurm reports finished, or that a successful query
no longer lists, is over.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from dataclasses import dataclass, field

# squeue --format fields; %S is the expected start time that `squeue --start` shows
FORMAT = "%i|%T|%N|%r|%P|%Q|%S|%u|%j"
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "RESV_DEL_HOLD", "REQUEUE_HOLD", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "RESIZING", "SIGNALING"}


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    node: str
    reason: str
    partition: str
    priority: int
    start_time: str
    user: str
    name: str

    @property
    def phase(self):
        if self.state in RUNNING_STATES:
            return "running"
        if self.state in PENDING_STATES:
            return "pending"
        return "finished"


@dataclass
class Snapshot:
    """The queue as one squeue call saw it; `ok` False means Slurm did not answer."""

    started: float = 0.0
    ok: bool = False
    error: str = "not queried yet"
    jobs: dict = field(default_factory=dict)

    def phase(self, job_id):
        """running | pending | finished | gone | unknown"""
        if not self.ok:
            return "unknown"
        job = self.jobs.get(job_id)
        return job.phase if job else "gone"

    def queue_position(self, job_id):
        """1-based place among pending jobs of the same partition, by Slurm priority."""
        me = self.jobs.get(job_id)
        if me is None or me.phase != "pending":
            return None
        ahead = [
            j for j in self.jobs.values()
            if j.phase == "pending" and j.partition == me.partition
            and (j.priority, -int(j.job_id)) > (me.priority, -int(me.job_id))
        ]
        return len(ahead) + 1


def parse_squeue(text):
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 9:
            continue
        job_id, state, node, reason, partition, priority, start, user, name = parts
        try:
            priority_value = int(priority)
        except ValueError:
            priority_value = 0
        jobs[job_id] = JobInfo(job_id, state.split()[0], node, reason, partition, priority_value, start, user, name)
    return jobs


class SlurmPoller:
    """Coalescing squeue reader shared by all spawners with the same command and SLURM_CONF."""

    _shared: dict = {}

    def __init__(self, squeue_command="squeue", timeout=20.0, env=None):
        self.command = shlex.split(squeue_command) + ["--noheader", "--states=all", f"--format={FORMAT}"]
        self.timeout = timeout
        self.env = env
        self.snapshot = Snapshot()
        self.calls = 0
        self._inflight: asyncio.Task | None = None

    @classmethod
    def shared(cls, squeue_command="squeue", timeout=20.0):
        key = (squeue_command, os.environ.get("SLURM_CONF", ""))
        poller = cls._shared.get(key)
        if poller is None:
            poller = cls._shared[key] = cls(squeue_command, timeout)
        return poller

    async def get(self, max_age=None, newer_than=None):
        """A snapshot at most `max_age` s old and taken after `newer_than` (time.monotonic()).

        A query started after this call is always good enough, even if it outlived `max_age`
        (a slow or failing squeue must not make callers query again and again).
        """
        called = time.monotonic()
        while True:
            snap = self.snapshot
            fresh = max_age is None or called - snap.started <= max_age
            recent = newer_than is None or snap.started >= newer_than
            if snap.started and (snap.started >= called or (fresh and recent)):
                return snap
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._query())
            await asyncio.shield(self._inflight)

    async def _query(self):
        started = time.monotonic()
        self.calls += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                self.snapshot = Snapshot(started, False, f"squeue did not answer within {self.timeout:.0f}s")
                return
        except OSError as exc:
            self.snapshot = Snapshot(started, False, f"cannot run squeue: {exc}")
            return
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            self.snapshot = Snapshot(started, False, message)
        else:
            self.snapshot = Snapshot(started, True, "", parse_squeue(out.decode(errors="replace")))
