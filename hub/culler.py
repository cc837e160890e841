"""jupyterhub-idle-culler as a hub-managed service with least-privilege scopes.

The culler stops servers idle longer than `timeout`, so their Slurm jobs release GPUs even when
a session's own idle shutdown did not fire (e.g. a browser tab kept polling). It runs through
this module (`python -m aifactory.hub.culler`), which ties it to the hub's life first: JupyterHub
starts services in their own session, so a hub that died without its cleanup left the culler
running for good (seen after a test run whose hub was stopped right after a restart).
"""

import os
import sys

#: exactly what the culler needs: list users and their servers' activity, stop servers
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def idle_culler_config(timeout=3600, cull_every=300, concurrency=10, name="idle-culler"):
    """Return (service, role) dicts for c.JupyterHub.services / c.JupyterHub.load_roles."""
    for field, value in (("timeout", timeout), ("cull_every", cull_every), ("concurrency", concurrency)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"idle culler {field}: expected a positive whole number of seconds, got {value!r}")
    service = {
        "name": name,
        "command": [
            sys.executable, "-m", "aifactory.hub.culler",
            f"--timeout={timeout}", f"--cull-every={cull_every}", f"--concurrency={concurrency}",
        ],
    }
    role = {"name": f"{name}-role", "scopes": list(CULLER_SCOPES), "services": [name]}
    return service, role


def add_idle_culler(c, **kwargs):
    """Register the culler in a hub config object `c` (additive: keeps other services and roles)."""
    service, role = idle_culler_config(**kwargs)
    # on a traitlets Config an unset list is a lazy value that also supports append
    c.JupyterHub.services.append(service)
    c.JupyterHub.load_roles.append(role)
    return service, role


def main():
    """jupyterhub-idle-culler's own main, ended with the hub that started it."""
    from ..common.procutil import die_with_parent

    die_with_parent()  # first: the culler's imports take a while, and the hub may die meanwhile
    if not _parent_is_a_hub():  # it died before we asked: nobody will send the signal
        sys.exit("idle culler: the hub that started it is gone")
    from jupyterhub_idle_culler import main as culler_main

    culler_main()


def _parent_is_a_hub():
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as cmdline:
            return b"jupyterhub" in cmdline.read()
    except OSError:
        return True  # no /proc (not Linux): die_with_parent did nothing either


if __name__ == "__main__":
    main()
