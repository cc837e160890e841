"""Process helpers shared by the launcher and the MLflow service."""

import os
import signal
import subprocess


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
