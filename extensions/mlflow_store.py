"""Which tracking store a session's MLflow client uses for http(s) URIs.

Registered through MLflow's `mlflow.tracking_store` entry point. Where the platform's spawner
sets AIF_MLFLOW_BUFFERED_LOGGING=1 (users' sessions, hub/spawner_env.py) it returns the buffering
store of mlflow_logging.py; everywhere else MLflow's own RestStore. Kept free of MLflow imports at
the top: MLflow loads its entry points while it is itself being imported.
"""

from aifactory.common.envvars import MLFLOW_BUFFERED_LOGGING

ENABLE_ENV = MLFLOW_BUFFERED_LOGGING.name  # the name hub/spawner_env.py sets


def tracking_store(store_uri, **_):
    """The `mlflow.tracking_store` builder for http and https URIs."""
    from functools import partial

    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.credentials import get_default_host_creds

    creds = partial(get_default_host_creds, store_uri)
    if (MLFLOW_BUFFERED_LOGGING.get() or "").lower() in ("1", "true", "yes"):
        from .mlflow_logging import BufferedRestStore

        return BufferedRestStore(creds)
    return RestStore(creds)
