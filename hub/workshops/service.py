"""The trainer page: a hub-managed service at /services/workshops/.

A trainer (or a hub admin) logs in through the hub and sees, for each of their workshops, who is
running, idle, queued in Slurm or failed, with one click into a participant's server (the
trainer's role grants `access:servers` on the workshop group), and starts or stops a
participant's session. The status comes from the same code as `aif workshop status`
(manager.py), with this service's own read-only hub token; start and stop go to the hub with the
trainer's own OAuth token (the service may ask for `servers`, the hub grants only the trainer's
`servers!group=`), so the hub, not this page, decides what a trainer may do.
"""

import asyncio
import os
from pathlib import Path
from urllib.parse import urlencode

import requests
from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from ...common.envvars import STATE_DIR
from .manager import WorkshopManager
from .record import WorkshopError

PAGE = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                   autoescape=select_autoescape(default=True)).get_template("trainer.html")


class HubAPI:
    """What WorkshopManager needs of a platform, from inside a hub service."""

    def __init__(self, state_dir):
        self.state = Path(state_dir)
        self.url = ""
        self._base = os.environ["JUPYTERHUB_API_URL"].rstrip("/")
        self._headers = {"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"}

    def api(self, method, path, **kwargs):
        return requests.request(method, self._base + path, headers=self._headers, timeout=30, **kwargs)

    def as_user(self, token, method, path, **kwargs):
        """A hub API call with a user's token (the trainer's own permissions, not this service's)."""
        headers = {"Authorization": f"token {token}"}
        return requests.request(method, self._base + path, headers=headers, timeout=60, **kwargs)


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def manager(self) -> WorkshopManager:
        return self.settings["manager"]

    def visible(self, ws, user):
        return user.get("admin") or ws.trainer == user["name"]

    def workshop_for(self, name, user):
        ws = self.manager.book.load(name)
        if ws is None or not self.visible(ws, user):
            raise web.HTTPError(404, f"no workshop {name!r} that you train")
        return ws

    async def status(self, name, user):
        self.workshop_for(name, user)
        try:
            return await IOLoop.current().run_in_executor(None, self.manager.status, name)
        except WorkshopError as err:
            raise web.HTTPError(404, str(err)) from err


class ListHandler(BaseHandler):
    @web.authenticated
    def get(self):
        user = self.current_user
        mine = [ws for ws in self.manager.book.all() if self.visible(ws, user)]
        self.finish(PAGE.render(title="Workshops", workshops=mine, rows=None, prefix=self.settings["prefix"]))


# participant states (WorkshopManager.status) in which the page offers each action
STOPPABLE = ("running", "idle", "queued", "starting")
STARTABLE = ("not started", "not logged in", "stopped", "failed")
# what the page says after an action: fixed texts, so nothing from a URL is echoed into the page
NOTICES = {
    "started": ("ok", "session of {login} started"),
    "starting": ("ok", "session of {login} asked for: it starts when Slurm gives it a node"),
    "stopped": ("ok", "session of {login} stopped"),
    "stopping": ("ok", "session of {login} is stopping"),
    "busy": ("error", "{login}: the hub refused, the session is already starting, running or stopping"),
    "refused": ("error", "{login}: the hub refused (HTTP {code}); see the hub log"),
}


class WorkshopPageHandler(BaseHandler):
    @web.authenticated
    async def get(self, name):
        ws, rows = await self.status(name, self.current_user)
        counts = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        self.finish(PAGE.render(title=f"Workshop {ws.name}", ws=ws, rows=rows, counts=sorted(counts.items()),
                                prefix=self.settings["prefix"], notice=self._notice(ws),
                                xsrf=self.xsrf_token.decode(), stoppable=STOPPABLE, startable=STARTABLE))

    def _notice(self, ws):
        kind, login = self.get_query_argument("done", ""), self.get_query_argument("login", "")
        if kind not in NOTICES or login not in ws.seat_names:
            return None
        style, text = NOTICES[kind]
        code = self.get_query_argument("code", "")
        return {"kind": style, "text": text.format(login=login, code=code if code.isdigit() else "?")}


class ServerActionHandler(BaseHandler):
    """Start (with the workshop's profile) or stop one participant's session for the trainer."""

    @web.authenticated
    async def post(self, name, login):
        ws = self.workshop_for(name, self.current_user)
        if login not in ws.seat_names:
            raise web.HTTPError(404, f"{login!r} is not a participant of workshop {ws.name}")
        action = self.get_body_argument("action", "")
        if action not in ("start", "stop"):
            raise web.HTTPError(400, f"action: {action!r} is not one of start, stop")
        method, body = ("POST", {"profile": ws.profile_name}) if action == "start" else ("DELETE", None)
        token = self.hub_auth.get_token(self)
        response = await IOLoop.current().run_in_executor(
            None, lambda: self.settings["hub_api"].as_user(token, method, f"/users/{login}/server", json=body))
        done = _outcome(action, response.status_code)
        query = urlencode({"done": done, "login": login, "code": response.status_code})
        self.redirect(f"{self.settings['prefix']}{ws.name}?{query}", status=303)


def _outcome(action, status_code):
    if status_code in (201, 204):
        return "started" if action == "start" else "stopped"
    if status_code == 202:
        return "starting" if action == "start" else "stopping"
    return "busy" if status_code == 400 else "refused"


class WorkshopAPIHandler(BaseHandler):
    @web.authenticated
    async def get(self, name):
        ws, rows = await self.status(name, self.current_user)
        self.finish({"workshop": ws.name, "state": ws.state, "participants": rows})


def make_app(prefix, manager):
    prefix = prefix.rstrip("/") + "/"
    return web.Application(
        [
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix, ListHandler),
            (prefix + r"api/([a-z][a-z0-9-]*)", WorkshopAPIHandler),
            (prefix + r"([a-z][a-z0-9-]*)/servers/([a-z][a-z0-9-]*)", ServerActionHandler),
            (prefix + r"([a-z][a-z0-9-]*)/?", WorkshopPageHandler),
        ],
        manager=manager,
        hub_api=manager.platform,
        prefix=prefix,
        xsrf_cookies=True,
        cookie_secret=os.urandom(32),
        login_url=url_path_join(prefix, "oauth_callback"),
    )


async def serve():
    from urllib.parse import urlparse

    manager = WorkshopManager(HubAPI(STATE_DIR.get()), unix_accounts=False)
    app = make_app(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/workshops/"), manager)
    bind = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(bind.port, bind.hostname)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # the hub runs this through common/guarded.py: the death-of-parent guard is armed already
    asyncio.run(serve())
