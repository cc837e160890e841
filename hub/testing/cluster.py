"""The Slurm mini-cluster for a test or a measurement: a fresh folder, real Unix users, all removed after."""

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..cluster import MiniCluster
from .ci import require_binary, require_root


@contextmanager
def mini_cluster(prefix, users=(), spec=None):
    """The Slurm mini-cluster in a fresh folder, with these real Unix users; all removed after."""
    require_root()
    for binary, package in (("slurmctld", "slurmctld"), ("munged", "munge"), ("node", "nodejs")):
        require_binary(binary, package)
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)  # users' jobs write their output below it
    mini = MiniCluster(state, spec)
    try:
        mini.up()
        for user in users:
            mini.add_user(user)
        yield mini
    finally:
        mini.down()
        for user in users:
            MiniCluster.remove_user(user)
        shutil.rmtree(state, ignore_errors=True)
