"""Process helpers: every process the platform starts dies with its parent, and groups stop cleanly."""

import ctypes
import os
import signal
import subprocess

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None):
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL.

    Used as preexec_fn (and by services on themselves, first thing), so that nothing the platform
    started outlives a launcher that was killed before it could clean up. A parent that died
    before the request took effect is never signalled for: with `parent_pid` (the pid the parent
    had when it started us) that case is caught here, and this process SIGTERMs itself.
    Returns False where the request is not available (not Linux).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return False  # not Linux: orphans are then stopped by `aif up`'s own shutdown only
    if parent_pid is not None and os.getppid() != int(parent_pid):
        os.kill(os.getpid(), signal.SIGTERM)
    return True


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
