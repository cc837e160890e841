"""Process helpers: every process the platform starts dies with its parent, and groups stop cleanly.

Two safety nets, because either alone misses a timing:

- the death-of-parent guard (`die_with_parent`): armed first thing in every process, so a
  parent killed without cleanup takes its children along, whatever they were doing;
- the process record (`ProcessRecord`, <state_dir>/run/processes.jsonl): every process the
  platform starts writes its pid, process group and start time there, so the launcher stops the
  groups itself (services run in their own sessions, out of reach of a signal to the hub's
  group) and `aif up` refuses to start over leftovers of a previous run.
"""

import ctypes
import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from . import envvars

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None):
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL.

    Used as preexec_fn (child_guard) and by services on themselves, first thing (guarded.py), so
    that nothing the platform started outlives a parent that was killed before it could clean
    up. A parent that died before the request took effect is never signalled for: with
    `parent_pid` (the pid the parent had when it started us) that case is caught here, and this
    process SIGTERMs itself. Returns False where the request is not available (not Linux).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return False  # not Linux: orphans are then stopped by `aif up`'s own shutdown only
    if parent_pid is not None and os.getppid() != int(parent_pid):
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def child_guard():
    """A preexec_fn that arms die_with_parent in the child, checked against this process's pid."""
    return functools.partial(die_with_parent, os.getpid())


def guard_this_process(name):
    """First thing in a process started by the hub: end with the hub, and be recorded.

    The hub passes its pid in AIF_PARENT_PID (hubconfig.py); it is removed here so that this
    process's own children do not inherit an expectation about a parent that is not theirs.
    """
    parent = envvars.PARENT_PID.get()
    os.environ.pop(envvars.PARENT_PID.name, None)
    die_with_parent(parent)
    record = ProcessRecord.from_env()
    if record:
        record.add(name, os.getpid(), os.getpgid(0))


def stop_process_group(proc, timeout=15):
    """SIGTERM the process group a child leads (it was started with start_new_session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# --- /proc ------------------------------------------------------------------------------------

def _stat(pid):
    """(process group, start time in clock ticks since boot) of a live process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie holds its pid, but runs nothing
    return int(fields[2]), int(fields[19])


def start_time(pid):
    """When `pid` started (clock ticks since boot): with the pid, it names one process for good."""
    stat = _stat(pid)
    return stat[1] if stat else None


def _all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


# --- the process record -------------------------------------------------------------------------

class ProcessRecord:
    """Processes of one state directory, one JSON line each: name, pid, pgid (None: signal the pid
    alone, e.g. the launcher itself) and start time. Lines are appended with O_APPEND by each
    process for itself (small writes, atomic), so services and their servers need no lock."""

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def from_env(cls):
        path = envvars.PROCESS_RECORD.get()
        return cls(path) if path else None

    def add(self, name, pid, pgid):
        line = json.dumps({"name": name, "pid": pid, "pgid": pgid, "start": start_time(pid)}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def entries(self):
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a full disk: nothing to stop there
        return entries

    def live(self, skip=()):
        """[(entry, [live pids])] of the recorded processes still running (not named in `skip`).

        A pid counts only with its recorded start time (pids are reused); the members of a
        recorded group count when they started after its leader (e.g. MLflow's workers, which
        outlive a leader killed by SIGKILL). A group id cannot be handed out again while any
        member lives, so members of a group whose leader is gone are still the recorded ones.
        """
        entries = [e for e in self.entries() if e["name"] not in skip and e.get("start") is not None]
        if not entries:
            return []
        stats = {pid: stat for pid in _all_pids() if (stat := _stat(pid))}
        found = []
        for entry in entries:
            leader = stats.get(entry["pid"])
            if leader and leader[1] != entry["start"]:
                continue  # the pid was reused: the recorded process, and its group, are gone
            pids = {entry["pid"]} if leader else set()
            if entry.get("pgid") is not None:
                pids |= {pid for pid, (pgid, start) in stats.items()
                         if pgid == entry["pgid"] and start >= entry["start"]}
            if pids:
                found.append((entry, sorted(pids)))
        return found

    def stop(self, skip=(), grace=10):
        """SIGTERM every live recorded process (not named in `skip`), SIGKILL what is left after
        `grace` seconds; then forget the ones that are gone. Returns the pids that were running."""
        sent, seen = set(), set()
        deadline = time.monotonic() + grace
        sig = signal.SIGTERM
        while live := self.live(skip):
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    break  # unkillable (stuck in the kernel): stays recorded, `aif up` names it
                sig, deadline = signal.SIGKILL, time.monotonic() + 5
            for _entry, pids in live:
                for pid in pids:
                    if (pid, sig) not in sent:
                        _signal(pid, sig)
                        sent.add((pid, sig))
                        seen.add(pid)
            time.sleep(0.1)
        self.forget_gone()
        return sorted(seen)

    def forget_gone(self, also=()):
        """Rewrite the record with only the processes still running, less the pids in `also`
        (the caller itself, done); nothing left: remove it."""
        keep = {(e["pid"], e["start"]) for e, _ in self.live() if e["pid"] not in also}
        entries = [e for e in self.entries() if (e["pid"], e.get("start")) in keep]
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        from .files import replace_private

        replace_private(self.path, "".join(json.dumps(e) + "\n" for e in entries))


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
