"""The hub API route a starting Slurm session reports its port to: the port and nothing else.

`import batchspawner` appends its own handler for /api/batchspawner to JupyterHub's handler list.
That handler sets *any* attribute a server's token names on the spawner (e.g. `exec_prefix` or
`batch_submit_cmd`, later run as root by the hub), so the Slurm spawner module, the one place
that imports batchspawner, swaps it for this one with `use_port_only_handler()`. The swap is
done at class-loading time because JupyterHub builds its routes right after loading its config.
"""

from batchspawner.api import BatchSpawnerAPIHandler
from jupyterhub import apihandlers
from tornado import web

ROUTE = r"/api/batchspawner"


class PortOnlyAPIHandler(BatchSpawnerAPIHandler):
    """Records the port a server of the token's owner reports, refuses any other field."""

    @web.authenticated
    def post(self):
        data = self.get_json_body() or {}
        port = data.get("port")
        if set(data) != {"port"} or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise web.HTTPError(400, "expected a JSON body {\"port\": <1..65535>}")
        token = self.get_auth_token()
        spawner = next((s for s in self.current_user.spawners.values() if s.api_token == token), None)
        if spawner is None:
            raise web.HTTPError(403, "this token belongs to no server of this user")
        spawner.port = port
        self.set_status(201)
        self.finish({"message": "port recorded"})


def use_port_only_handler(handlers=None):
    """Replace batchspawner's handler in JupyterHub's API handler list (idempotent)."""
    handlers = apihandlers.default_handlers if handlers is None else handlers
    for index, (route, _handler, *rest) in enumerate(handlers):
        if route == ROUTE:
            handlers[index] = (route, PortOnlyAPIHandler, *rest)
