"""How a spawner tells a user that their session could not start."""

from jupyterhub.spawner import SpawnException


def spawn_failure(message, reason, status_code=500):
    """A SpawnException whose message is what the user reads on the spawn page and in progress."""
    err = SpawnException(message, reason=reason, status_code=status_code)
    err.jupyterhub_message = message  # else JupyterHub shows "HTTP 500: reason (message)"
    return err
