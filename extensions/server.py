"""The jupyter-server extension: `/aif/session` as JSON, and the example notebooks for new users."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .session import session_info

NOTEBOOKS = Path(__file__).with_name("notebooks")
EXAMPLES_DIR = "examples"


class SessionHandler(APIHandler):
    """GET /aif/session: the session's Slurm job, node, GPUs, walltime and links."""

    @web.authenticated  # the server's own auth: the hub user (or a token with access to this server)
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(session_info()))


def offer_examples(home) -> list:
    """Copy the shipped example notebooks to <home>/examples; never overwrite what is there."""
    target = Path(home) / EXAMPLES_DIR
    copied = []
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        destination = target / notebook.name
        if destination.exists():
            continue  # the user's copy, possibly edited
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, destination)
        copied.append(destination)
    return copied


def load(serverapp):
    web_app = serverapp.web_app
    route = url_path_join(web_app.settings["base_url"], "aif", "session")
    web_app.add_handlers(".*$", [(route, SessionHandler)])
    try:
        copied = offer_examples(serverapp.root_dir)
    except OSError as err:  # a read-only or full home must not stop the server
        serverapp.log.warning("aifactory: example notebooks not copied: %s", err)
        copied = []
    serverapp.log.info("aifactory: /aif/session enabled; %d example notebook(s) offered", len(copied))
