"""A user's endpoints at a glance, for the hub's home page and the session panel.

Read from the records alone (endpoint.json, address.json): no Slurm call and no engine probe, so a
page view or a panel refresh costs a few file reads. `aif serve status` asks Slurm and the engine.
"""

from __future__ import annotations

import time

from .endpoints import EndpointStore, ServeError

SERVICE_PREFIX = "/services/serve"


def hub_path(endpoint):
    """The endpoint's OpenAI base URL path on the hub (what clients take as base_url)."""
    return f"{SERVICE_PREFIX}/{endpoint.owner}/{endpoint.name}/v1"


def summary(endpoint, base_url="", now=None):
    """name, state, detail, url, walltime_left_s (None when not running) of one endpoint."""
    now = now or time.time()
    left = None
    if endpoint.stopped:
        state, detail = "stopped", time.strftime("at %Y-%m-%d %H:%M UTC", time.gmtime(endpoint.stopped))
        if endpoint.stop_reason:
            detail += f" {endpoint.stop_reason}"
    elif not endpoint.job_id:
        state, detail = "submitting", ""
    elif endpoint.started() is None:
        state, detail = "waiting", f"Slurm job {endpoint.job_id} has not started yet"
    else:
        left = endpoint.walltime_left(now)
        state, detail = ("running", f"Slurm job {endpoint.job_id}") if left > 0 else ("ended", "walltime over")
    return {"name": endpoint.name, "state": state, "detail": detail, "url": base_url.rstrip("/") + hub_path(endpoint),
            "model": endpoint.model, "walltime_left_s": left,
            "walltime_left": duration(left) if left is not None else "—"}


def summaries(user, base_url="", now=None):
    """Every endpoint of `user`, newest first; a record that cannot be read is skipped."""
    store = EndpointStore(user)
    found = []
    for name in store.names():
        try:
            found.append(store.get(name))
        except (ServeError, OSError, ValueError, TypeError):
            continue  # half-written or from another version: `aif serve list` names the problem
    found.sort(key=lambda e: e.created, reverse=True)
    return [summary(e, base_url, now) for e in found]


def duration(seconds):
    """3 h 05 min; under an hour, 12 min."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


class HomePageEndpoints:
    """The hub home page's list for one user, read only when the page iterates it.

    JupyterHub calls template_vars callables for every page it renders; only home.html looks at
    this one, so the records are read there and nowhere else.
    """

    def __init__(self, user, base_url=""):
        self.user, self.base_url, self._rows = user, base_url, None

    def rows(self):
        if self._rows is None:
            try:
                self._rows = summaries(self.user, self.base_url) if self.user else []
            except (OSError, KeyError, ServeError):  # no such Unix account, unreadable home
                self._rows = []
        return self._rows

    def __iter__(self):
        return iter(self.rows())

    def __len__(self):
        return len(self.rows())
