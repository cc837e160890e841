"""The local spawner of the embedded default: each user's server is a process on this machine.

For a laptop or a demo: no isolation between users beyond separate home directories under the
state directory. A site uses the Slurm spawner (`aif-slurm`).
"""

import os
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import default

from ...common.envvars import STATE_DIR
from .env import PlatformEnvMixin


class AIFLocalSpawner(PlatformEnvMixin, SimpleLocalProcessSpawner):
    """A local process per user, with its files under <state_dir>/users/<name>."""

    @default("home_dir_template")
    def _default_home_dir_template(self):
        return os.path.join(STATE_DIR.get("/tmp"), "users", "{username}")

    @default("cmd")
    def _default_cmd(self):
        # the singleuser server of the platform's own environment, with its extensions
        return [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("args")
    def _default_args(self):
        # every local server runs as the hub's own Unix user; when that is root (containers,
        # CI) Jupyter refuses to start unless told that this is deliberate
        return ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
