"""A workshop's record, and what the hub derives from it.

A workshop is one record under <state_dir>/workshops/<name>/workshop.json; everything the hub
derives from it (the workshop profile pinned to the reservation, the trainer's group-scoped role,
the banner, the materials link) is read from these records, so it all survives hub restarts.
Also here: parsing what the trainer types for the window (`--start`, `--duration`).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...common.errors import AIFError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,19}$")
BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


class WorkshopError(AIFError):
    """A workshop request was refused or could not be carried out; the message says why."""


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

    def stamp(self):
        """What changes whenever a record is written, without reading any: (name, mtime, size) each."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return ()
        stamps = []
        for entry in entries:
            try:
                info = os.stat(os.path.join(entry.path, "workshop.json"))
            except (FileNotFoundError, NotADirectoryError):
                continue
            stamps.append((entry.name, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

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
