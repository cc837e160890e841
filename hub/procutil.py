"""Process helpers shared by the launcher and the MLflow service."""

import ctypes
import os
import signal
import subprocess

PR_SET_PDEATHSIG = 1


def die_with_parent():
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL.

    Used as preexec_fn (and by services on themselves), so that nothing the platform started
    outlives a launcher that was killed before it could clean up.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: orphans are then stopped by `aif up`'s own shutdown only


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
