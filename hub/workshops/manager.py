"""Workshops: seat accounts, a Slurm reservation, a trainer role, materials, status and a clean end.

A workshop is one record under <state_dir>/workshops/<name>/workshop.json; everything the hub
derives from it (the workshop profile pinned to the reservation, the trainer's group-scoped role,
the banner, the materials link) is read from these records, so it all survives hub restarts.
`aif workshop` (workshop_cli.py) drives `WorkshopManager`; the trainer page is workshop_service.py.

Creation checks everything it can before making anything (trainer, window, capacity, overlapping
reservations, materials reachable), then makes each part with its undo on a stack: a failure
half-way removes what was made. Ending is idempotent: each step skips what is already gone.
"""

from __future__ import annotations

import csv
import html
import datetime as dt
import io
import json
import math
import os
import pwd
import re
import shlex
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .auth import UsersFile
from .unix_accounts import ensure_unix_user, remove_unix_user

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,19}$")
BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
FAILED_JOB_STATES = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
STOPPED_JOB_STATES = {"COMPLETED", "CANCELLED"}  # stopped by the participant, trainer or culler
# what a participant's archive leaves out: caches and the platform's own job logs
ARCHIVE_SKIP = re.compile(r"^(\.cache|\.local/share/jupyter/runtime|\.ipython/profile_default/history\.sqlite"
                          r"|\.aif-slurm-\d+\.log)(/|$)")


class WorkshopError(Exception):
    """A workshop request was refused or could not be carried out; the message says why."""


# --- the record ----------------------------------------------------------------------------------

@dataclass
class Workshop:
    name: str
    seats: int
    start: str  # ISO 8601, UTC
    end: str
    trainer: str
    gpus_per_seat: int = 1
    cpus_per_seat: int = 1
    memory_gb_per_seat: int = 4
    gpu_type: str = "h200"
    partition: str = "gpu"
    materials: str = ""
    branch: str = ""
    announcement: str = ""
    state: str = "creating"  # creating -> active -> ending -> ended
    nodes: int = 0
    seat_names: list = field(default_factory=list)
    archives: dict = field(default_factory=dict)
    ended_at: str = ""

    @property
    def group(self):
        return f"workshop-{self.name}"

    @property
    def reservation(self):
        return f"aif-{self.name}"

    @property
    def profile_name(self):
        return f"workshop-{self.name}"

    @property
    def role_name(self):
        return f"workshop-{self.name}-trainer"

    @property
    def start_time(self):
        return dt.datetime.fromisoformat(self.start)

    @property
    def end_time(self):
        return dt.datetime.fromisoformat(self.end)

    @property
    def duration_minutes(self):
        return int((self.end_time - self.start_time).total_seconds() // 60)

    def seat_login(self, index):
        return f"{self.name}-{index:02d}"

    def profile(self):
        """The AIFSlurmSpawner profile of the participants, pinned to the reservation."""
        # whole hours covering the window; each session's walltime is cut to what the window has
        # left when it is asked for (profiles.SessionRequest.minutes)
        hours = max(1, math.ceil(self.duration_minutes / 60))
        entry = {
            "name": self.profile_name,
            "display_name": f"Workshop {self.name}",
            "description": f"Reserved for this workshop until {self.end_time:%Y-%m-%d %H:%M} UTC; sessions end then",
            "partition": self.partition,
            "cpus": self.cpus_per_seat,
            "memory_gb": self.memory_gb_per_seat,
            "hours": hours,
            "max_hours": hours,
            "reservation": self.reservation,
            "groups": [self.group],
            "window_start": self.start_time.isoformat(),
            "window_end": self.end_time.isoformat(),
        }
        if self.gpus_per_seat:
            entry.update(gpu_types=[self.gpu_type], min_gpus=self.gpus_per_seat, max_gpus=self.gpus_per_seat)
        return entry

    def trainer_role(self):
        """The trainer's role: participants' servers of this group only, nothing else."""
        on_group = f"!group={self.group}"
        return {
            "name": self.role_name,
            "description": f"Trainer of workshop {self.name}",
            "users": [self.trainer],
            "scopes": [f"read:users{on_group}", f"servers{on_group}", f"access:servers{on_group}",
                       "access:services!service=workshops"],
        }

    @property
    def materials_dir(self):
        """Folder of the course repository in each participant's home."""
        return Path(self.materials.rstrip("/")).name.removesuffix(".git") or "materials"

    def materials_pull(self, gitpuller):
        """Shell line for the session's job: nbgitpuller merges the course into the home on each
        start (new files arrive, the participant's edits win), and a failed pull never stops it."""
        if not self.materials:
            return ""
        args = " ".join(shlex.quote(a) for a in (gitpuller, self.materials, self.branch, self.materials_dir))
        return f"{args} || echo 'aif: course materials could not be pulled; the session starts anyway' >&2"

    def is_current(self, now=None):
        now = now or dt.datetime.now(dt.timezone.utc)
        return self.state == "active" and self.start_time - dt.timedelta(hours=1) <= now < self.end_time


# what `aif workshop create` may set besides name, seats, trainer and the window
SEAT_OPTIONS = {"gpus_per_seat", "cpus_per_seat", "memory_gb_per_seat", "gpu_type", "partition", "materials",
                "branch", "announcement"}


class WorkshopBook:
    """The workshop records of one state directory."""

    def __init__(self, root):
        self.root = Path(root)

    def folder(self, name):
        return self.root / name

    def load(self, name):
        path = self.folder(name) / "workshop.json"
        try:
            return Workshop(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def save(self, workshop):
        folder = self.folder(workshop.name)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "workshop.json.tmp"
        tmp.write_text(json.dumps(asdict(workshop), indent=1))
        os.replace(tmp, folder / "workshop.json")

    def all(self):
        if not self.root.is_dir():
            return []
        found = (self.load(p.name) for p in sorted(self.root.iterdir()) if (p / "workshop.json").exists())
        return [w for w in found if w is not None]

    def active(self):
        return [w for w in self.all() if w.state == "active"]

    def for_user(self, username, groups):
        """Active workshops the user takes part in (by group)."""
        return [w for w in self.active() if w.group in groups]


def announcement_for(book, user):
    """The hub banner for a participant or trainer of a current workshop (HTML-escaped)."""
    if user is None:
        return ""
    groups = {g.name for g in getattr(user, "groups", [])}
    lines = [ws.announcement for ws in book.active()
             if ws.is_current() and (ws.group in groups or ws.trainer == user.name)]
    return "<br>".join(html.escape(line) for line in lines)


# --- parsing what the trainer types ---------------------------------------------------------------

def parse_start(text, now=None):
    now = now or dt.datetime.now(dt.timezone.utc)
    if text in ("", "now"):
        return now.replace(microsecond=0)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise WorkshopError(f"--start: {text!r} is not a time; use 'now' or ISO 8601 like 2026-12-01T09:00") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time of this machine, as Slurm reads it
    when = when.astimezone(dt.timezone.utc)
    if when < now - dt.timedelta(minutes=1):
        raise WorkshopError(f"--start: {text} is in the past (now is {now:%Y-%m-%d %H:%M} UTC)")
    return when


def parse_duration(text):
    match = DURATION_RE.match(text.strip()) if text else None
    if text and text.isdigit():
        minutes = int(text)
    elif match and any(match.groups()):
        days, hours, mins = (int(g or 0) for g in match.groups())
        minutes = days * 1440 + hours * 60 + mins
    else:
        raise WorkshopError(f"--duration: {text!r} is not a duration; use e.g. 3h, 90m, 1h30m, 2d or minutes")
    if not 15 <= minutes <= 14 * 1440:
        raise WorkshopError(f"--duration: {text} is outside 15 minutes .. 14 days")
    return dt.timedelta(minutes=minutes)


# --- Slurm ------------------------------------------------------------------------------------------

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


# --- the manager -------------------------------------------------------------------------------------

class WorkshopManager:
    """Create, inspect and end workshops on a running platform (a `Platform` with a hub API)."""

    def __init__(self, platform, slurm=None, unix_accounts=True):
        self.platform = platform
        self.slurm = slurm or SlurmReservations(getattr(platform, "runtime", {}).get("slurm_conf", ""))
        self.unix_accounts = unix_accounts
        self.book = WorkshopBook(platform.state / "workshops")
        self.users = UsersFile(platform.state / "users.json")

    # -- create --
    def create(self, name, seats, trainer, start="now", duration="3h", **options):
        """Make the workshop; returns (workshop, seat CSV text). Nothing is left if it fails."""
        ws = self._checked_request(name, seats, trainer, start, duration, options)
        undo = []
        try:
            self.book.save(ws)
            undo.append(lambda: self._forget(ws))
            seats_csv = self._make_seats(ws, undo)
            self._make_hub_group(ws, undo)
            if self.platform.api("GET", f"/users/{ws.trainer}").status_code == 404:
                # the role names the trainer: make sure the hub knows them before it loads roles
                _ok(self.platform.api("POST", f"/users/{ws.trainer}"), "add the trainer to the hub", (201, 409))
            self.slurm.create(ws)
            undo.append(lambda: self.slurm.delete(ws))
            ws.state = "active"
            self.book.save(ws)
            self.platform.reload_hub()  # the trainer's role is hub configuration
        except BaseException:
            for step in reversed(undo):
                _quietly(step)
            if ws.state == "active":
                _quietly(self.platform.reload_hub)
            raise
        return ws, seats_csv

    def _checked_request(self, name, seats, trainer, start, duration, options):
        """The Workshop to make, from the trainer's options (Workshop fields: gpus_per_seat, ...)."""
        unknown = sorted(set(options) - SEAT_OPTIONS)
        if unknown:
            raise WorkshopError(f"unknown option(s) {unknown}; expected some of {sorted(SEAT_OPTIONS)}")
        branch = options.get("branch", "")
        if branch and not BRANCH_RE.match(branch):
            raise WorkshopError(f"--branch: {branch!r} is not a branch name")
        if not NAME_RE.match(name or ""):
            raise WorkshopError(f"name {name!r}: use 2-20 lower-case letters, digits and '-', starting with a letter")
        existing = self.book.load(name)
        if existing and existing.state != "ended":
            raise WorkshopError(f"workshop {name!r} already exists ({existing.state}); end it first or pick another name")
        if existing:
            raise WorkshopError(f"workshop {name!r} ended on {existing.ended_at}; its archives are kept: "
                                "pick another name")
        begin, length = parse_start(start), parse_duration(duration)
        ws = Workshop(name=name, seats=seats, start=begin.isoformat(), end=(begin + length).isoformat(),
                      trainer=trainer, **options)
        for label, value, low, high in (("--seats", ws.seats, 1, 500), ("--gpus-per-seat", ws.gpus_per_seat, 0, 16),
                                        ("--cpus-per-seat", ws.cpus_per_seat, 1, 256),
                                        ("--memory-gb-per-seat", ws.memory_gb_per_seat, 1, 4096)):
            if not isinstance(value, int) or not low <= value <= high:
                raise WorkshopError(f"{label}: {value!r} is outside {low}..{high}")
        ws.announcement = ws.announcement or (f"Workshop {name}: your session runs on reserved resources "
                                              f"until {ws.end_time:%H:%M} UTC.")
        ws.seat_names = [ws.seat_login(i) for i in range(1, seats + 1)]
        self._check_trainer(trainer)
        taken = [s for s in ws.seat_names if s in self.users.read()]
        if taken:
            raise WorkshopError(f"seat account name(s) {', '.join(taken[:3])} already exist; pick another name")
        ws.nodes = self.slurm.plan(ws)
        if ws.materials:
            ws.branch = check_materials(ws.materials, ws.branch)
        return ws

    def _check_trainer(self, trainer):
        if not trainer:
            raise WorkshopError("--trainer: required (a hub user who will run the workshop)")
        known = trainer in self.users.read() or self.platform.api("GET", f"/users/{trainer}").status_code == 200
        if not known:
            raise WorkshopError(f"--trainer: no hub user {trainer!r}; create it first (aif user add {trainer})")

    def _make_seats(self, ws, undo):
        rows = []
        for login in ws.seat_names:
            if self.unix_accounts:
                ensure_unix_user(login)
                undo.append(lambda login=login: remove_unix_user(login))
            password = self.users.add(login, groups=[ws.group], expires=ws.end_time)
            undo.append(lambda login=login: self.users.remove(login))
            rows.append({"login": login, "password": password, "expires_utc": ws.end_time.strftime("%Y-%m-%d %H:%M"),
                         "url": f"{self.platform.url}/hub/login"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path = self.book.folder(ws.name) / "seats.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text.getvalue())
        return text.getvalue()

    def _make_hub_group(self, ws, undo):
        api = self.platform.api
        _ok(api("POST", "/users", json={"usernames": ws.seat_names}), "create the seat users in the hub", (201, 409))
        undo.append(lambda: self._delete_hub_users(ws))
        _ok(api("POST", f"/groups/{ws.group}", json={"users": ws.seat_names}), "create the hub group", (201,))
        undo.append(lambda: api("DELETE", f"/groups/{ws.group}"))

    def _forget(self, ws):
        folder = self.book.folder(ws.name)
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()

    # -- status --
    def status(self, name, idle_minutes=15):
        ws = self._existing(name)
        jobs = {}
        for job_id, user, state, reason in self.slurm.jobs(ws):
            if int(job_id) > int(jobs.get(user, ("0",))[0]):
                jobs[user] = (job_id, state, reason)
        rows = [self._participant(ws, login, jobs.get(login), idle_minutes) for login in ws.seat_names]
        return ws, rows

    def _participant(self, ws, login, job, idle_minutes):
        response = self.platform.api("GET", f"/users/{login}")
        model = response.json() if response.status_code == 200 else {}
        server = (model.get("servers") or {}).get("", {})
        row = {"login": login, "state": "not started", "detail": "", "url": "", "job": job[0] if job else ""}
        if server.get("ready"):
            age = _age_minutes(server.get("last_activity"))
            row.update(state="idle" if age is not None and age >= idle_minutes else "running",
                       detail=f"last activity {age:.0f} min ago" if age is not None else "",
                       url=server.get("url", f"/user/{login}/"))
        elif server.get("pending") == "spawn":
            queued = job and job[1] == "PENDING"
            row.update(state="queued" if queued else "starting", detail=f"Slurm: {job[3]}" if queued else "")
        elif server.get("pending") == "stop":
            row["state"] = "stopping"
        elif job and job[1] in FAILED_JOB_STATES:
            row.update(state="failed", detail=f"last job {job[0]} {job[1]}")
        elif job and job[1] in STOPPED_JOB_STATES:
            row["state"] = "stopped"
        elif not model.get("last_activity"):
            row["state"] = "not logged in"
        return row

    # -- end --
    def end(self, name, archive_dir=None):
        """Stop, archive, remove; returns (workshop, what was done). Safe to call again."""
        ws = self._existing(name)
        if ws.state == "ended":
            return ws, []
        done = []
        ws.state = "ending"
        self.book.save(ws)
        stopped = self._stop_servers(ws)
        if stopped:
            done.append(f"stopped {stopped} server(s)")
        cancelled = self.slurm.cancel_jobs(ws)
        if cancelled:
            done.append(f"cancelled Slurm job(s) {', '.join(cancelled)}")
        archive_root = Path(archive_dir) if archive_dir else self.book.folder(ws.name) / "archives"
        for login in ws.seat_names:
            path = archive_home(login, archive_root)
            if path:
                ws.archives[login] = str(path)
        self.book.save(ws)
        done.append(f"archived {len(ws.archives)} home(s) to {archive_root}")
        done += self._remove_accounts(ws)
        if self.slurm.exists(ws):
            self.slurm.delete(ws)
            done.append(f"deleted reservation {ws.reservation}")
        ws.state, ws.ended_at = "ended", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.book.save(ws)
        (self.book.folder(ws.name) / "seats.csv").unlink(missing_ok=True)
        self.platform.reload_hub()  # drops the trainer's role
        return ws, done

    def _stop_servers(self, ws, timeout=120):
        api = self.platform.api
        running = [login for login in ws.seat_names if _has_server(api, login)]
        for login in running:
            api("DELETE", f"/users/{login}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_has_server(api, login) for login in running):
            time.sleep(1)
        left = [login for login in running if _has_server(api, login)]
        if left:
            raise WorkshopError(f"server(s) of {', '.join(left)} did not stop within {timeout}s; "
                                "run `aif workshop end` again")
        return len(running)

    def _remove_accounts(self, ws):
        done = []
        api = self.platform.api
        in_hub = [login for login in ws.seat_names if api("GET", f"/users/{login}").status_code == 200]
        for login in in_hub:
            _ok(api("DELETE", f"/users/{login}"), f"delete hub user {login}", (204, 404))
        if api("GET", f"/groups/{ws.group}").status_code == 200:
            _ok(api("DELETE", f"/groups/{ws.group}"), "delete the hub group", (204, 404))
            done.append(f"deleted hub group {ws.group}")
        removed = [login for login in ws.seat_names if self.users.remove(login)]
        if in_hub or removed:
            done.append(f"removed {len(set(in_hub) | set(removed))} seat account(s)")
        if self.unix_accounts:
            for login in ws.seat_names:
                remove_unix_user(login)
        return done

    def _delete_hub_users(self, ws):
        for login in ws.seat_names:
            self.platform.api("DELETE", f"/users/{login}")

    def _existing(self, name):
        ws = self.book.load(name)
        if ws is None:
            known = ", ".join(w.name for w in self.book.all()) or "none"
            raise WorkshopError(f"no workshop {name!r} (known: {known})")
        return ws


# --- helpers -------------------------------------------------------------------------------------------

def check_materials(url, branch=""):
    """The branch to pull (the repository's default when not given); refuse what git cannot reach."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    args = ["git", "ls-remote", "--exit-code", "--symref", url, f"refs/heads/{branch}" if branch else "HEAD"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        raise WorkshopError(f"--materials: {url} did not answer within 30 s") from None
    if proc.returncode != 0:
        what = f"has no branch {branch!r}" if proc.returncode == 2 and branch else "is not reachable"
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"git exit {proc.returncode}"
        raise WorkshopError(f"--materials: {url} {what} ({detail})")
    if branch:
        return branch
    head = re.search(r"^ref: refs/heads/(\S+)\s+HEAD$", proc.stdout, re.M)
    if not head:
        raise WorkshopError(f"--materials: {url} has no default branch; pass --branch")
    return head.group(1)


def archive_home(login, archive_root):
    """<archive_root>/<login>.tar.gz of the participant's home (caches left out); None if no home."""
    try:
        home = Path(pwd.getpwnam(login).pw_dir)
    except KeyError:
        return None
    if not home.is_dir():
        return None
    archive_root.mkdir(parents=True, exist_ok=True)
    target = archive_root / f"{login}.tar.gz"
    partial = target.with_suffix(".partial")

    def keep(info):
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        return None if rel and ARCHIVE_SKIP.match(rel) else info

    with tarfile.open(partial, "w:gz") as tar:
        tar.add(home, arcname=login, filter=keep)
    os.replace(partial, target)  # never a half-written archive under the final name
    return target


def _has_server(api, login):
    response = api("GET", f"/users/{login}")
    return response.status_code == 200 and "" in (response.json().get("servers") or {})


def _ok(response, what, expected):
    if response.status_code not in expected:
        raise WorkshopError(f"could not {what}: hub answered HTTP {response.status_code} {response.text[:200]}")
    return response


def _age_minutes(timestamp):
    if not timestamp:
        return None
    when = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (dt.datetime.now(dt.timezone.utc) - when).total_seconds() / 60


def _quietly(step):
    try:
        step()
    except Exception:  # noqa: BLE001 - best effort while rolling back; the original error is raised
        pass
