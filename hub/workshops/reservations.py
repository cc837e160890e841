"""Workshop reservations in Slurm: whole nodes of a partition over the workshop's window."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import subprocess
from dataclasses import dataclass

from .record import WorkshopError


def _slurm(args, check=True, timeout=30, env=None):
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise WorkshopError(f"{args[0]} not found: workshops need the Slurm client commands") from None
    except subprocess.TimeoutExpired:
        raise WorkshopError(f"{' '.join(args[:3])} did not answer in {timeout}s: is slurmctld up?") from None
    if check and proc.returncode != 0:
        raise WorkshopError(f"{' '.join(args[:3])} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _records(text):
    """`scontrol show ... -o` lines as dicts of their Key=Value fields."""
    out = []
    for line in text.splitlines():
        pairs = re.findall(r"(\w+)=(\S*)", line)
        if pairs:
            out.append(dict(pairs))
    return out


def _slurm_time(text):
    return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)


@dataclass
class NodeShape:
    name: str
    cpus: int
    memory_gb: int
    gpus: dict  # gpu type -> count

    def seats(self, ws):
        """How many seats of this workshop fit on this node."""
        fits = [self.cpus // ws.cpus_per_seat, self.memory_gb // ws.memory_gb_per_seat]
        if ws.gpus_per_seat:
            fits.append(self.gpus.get(ws.gpu_type, 0) // ws.gpus_per_seat)
        return min(fits)


class SlurmReservations:
    """Workshop reservations: whole nodes of a partition over the workshop window.

    Whole nodes, not TRES counts: reserving GPUs as trackable resources needs slurmdbd, which a
    small site or the mini-cluster may lack; whole nodes are also what keeps a class off a queue.
    """

    def __init__(self, slurm_conf=""):
        self.env = {**os.environ, "SLURM_CONF": slurm_conf} if slurm_conf else None

    def _run(self, args, check=True):
        return _slurm(args, check=check, env=self.env)

    def _hostnames(self, nodelist):
        if not nodelist or nodelist == "(null)":
            return []
        return self._run(["scontrol", "show", "hostnames", nodelist]).stdout.split()

    def partition_nodes(self, partition):
        records = _records(self._run(["scontrol", "show", "partition", partition, "-o"], check=False).stdout)
        if not records:
            raise WorkshopError(f"--partition: Slurm has no partition {partition!r}")
        nodes = set(self._hostnames(records[0].get("Nodes", "")))
        shapes = []
        for rec in _records(self._run(["scontrol", "show", "node", "-o"]).stdout):
            if rec.get("NodeName") not in nodes or re.search(r"DOWN|DRAIN|FAIL", rec.get("State", "")):
                continue
            gpus = {m.group(1): int(m.group(2)) for m in re.finditer(r"gpu:([\w.-]+):(\d+)", rec.get("Gres", ""))}
            shapes.append(NodeShape(rec["NodeName"], int(rec.get("CPUTot", 0)),
                                    int(rec.get("RealMemory", 0)) // 1024, gpus))
        return shapes

    def overlapping(self, start, end):
        """(name, start, end, nodes) of reservations that share part of the window."""
        text = self._run(["scontrol", "show", "reservation", "-o"], check=False).stdout
        found = []
        for rec in _records(text):
            if "ReservationName" not in rec:
                continue
            r_start, r_end = _slurm_time(rec["StartTime"]), _slurm_time(rec["EndTime"])
            if r_start < end and start < r_end:
                found.append((rec["ReservationName"], r_start, r_end, set(self._hostnames(rec.get("Nodes")))))
        return found

    def plan(self, ws):
        """Number of whole nodes the workshop needs; refuse what cannot be held in its window."""
        shapes = [n for n in self.partition_nodes(ws.partition) if n.seats(ws) > 0]
        what = (f"{ws.gpus_per_seat} x {ws.gpu_type} GPU, " if ws.gpus_per_seat else "") + \
               f"{ws.cpus_per_seat} CPU, {ws.memory_gb_per_seat} GB per seat"
        if not shapes:
            raise WorkshopError(f"no node of partition {ws.partition} can hold one seat of {what}")
        per_node = min(n.seats(ws) for n in shapes)
        needed = math.ceil(ws.seats / per_node)
        if needed > len(shapes):
            raise WorkshopError(
                f"--seats: {ws.seats} seats of {what} need {needed} nodes of partition {ws.partition}; "
                f"it has {len(shapes)} usable (at most {per_node * len(shapes)} seats)")
        taken = set()
        overlaps = self.overlapping(ws.start_time, ws.end_time)
        for _, _, _, nodes in overlaps:
            taken |= nodes
        free = [n for n in shapes if n.name not in taken]
        if needed > len(free):
            names = ", ".join(f"{name} ({s:%Y-%m-%d %H:%M}-{e:%H:%M} UTC, nodes {','.join(sorted(n))})"
                              for name, s, e, n in overlaps if n & {x.name for x in shapes})
            raise WorkshopError(
                f"the window overlaps reservation(s) {names}: {len(free)} of the {needed} nodes needed "
                "are free then; choose another time or fewer seats")
        return needed

    def create(self, ws):
        start = ws.start_time.astimezone().strftime("%Y-%m-%dT%H:%M:%S")  # slurmctld's local time
        self._run(["scontrol", "create", "reservation", f"ReservationName={ws.reservation}",
                   f"StartTime={start}", f"Duration={ws.duration_minutes}", f"PartitionName={ws.partition}",
                   f"NodeCnt={ws.nodes}", f"Users={','.join(ws.seat_names)}"])

    def delete(self, ws):
        if self.exists(ws):
            self._run(["scontrol", "delete", f"ReservationName={ws.reservation}"])

    def exists(self, ws):
        proc = self._run(["scontrol", "show", "reservation", ws.reservation, "-o"], check=False)
        return proc.returncode == 0 and f"ReservationName={ws.reservation}" in proc.stdout

    def jobs(self, ws):
        """(job id, user, state, reason) of the reservation's jobs, recent ended ones included."""
        proc = self._run(["squeue", "--reservation", ws.reservation, "--states", "all", "-h",
                          "-o", "%i|%u|%T|%r"], check=False)
        if proc.returncode != 0:
            return []
        return [tuple(line.split("|", 3)) for line in proc.stdout.splitlines() if line.count("|") == 3]

    def cancel_jobs(self, ws):
        live = [job for job, _, state, _ in self.jobs(ws) if state in ("PENDING", "RUNNING", "CONFIGURING",
                                                                        "COMPLETING", "SUSPENDED")]
        if live:
            self._run(["scancel", *live], check=False)
        return live
