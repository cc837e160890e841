"""Workshops on a running platform: seat accounts, a Slurm reservation, a trainer role, status, a clean end.

`aif workshop` (cli.py) drives `WorkshopManager`; the trainer page is service.py. Creation checks
everything it can before making anything (trainer, window, capacity, overlapping reservations,
materials reachable), then makes each part with its undo on a stack: a failure half-way removes
what was made. Ending is idempotent: each step skips what is already gone.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import subprocess
import time
from pathlib import Path

from ...common.files import write_private
from ..auth import UsersFile
from ..unix_accounts import ensure_unix_user, remove_unix_user
from .archive import archive_home
from .record import BRANCH_RE, NAME_RE, SEAT_OPTIONS, Workshop, WorkshopBook, WorkshopError, parse_duration, parse_start
from .reservations import SlurmReservations

FAILED_JOB_STATES = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
STOPPED_JOB_STATES = {"COMPLETED", "CANCELLED"}  # stopped by the participant, trainer or culler


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
        write_private(self.book.folder(ws.name) / "seats.csv", text.getvalue())
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
