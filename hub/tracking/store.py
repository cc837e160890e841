"""Which tracking store the platform's MLflow server uses: MLflow's, or the bulk-ingesting one.

Registered for the sqlite and postgresql schemes through MLflow's `mlflow.tracking_store` entry
point. Only where the platform's MLflow service sets AIF_MLFLOW_BULK_INGEST=1 (its own `mlflow
server`) does it return bulk_store.BulkIngestStore; everywhere else MLflow's own store.
Kept free of heavy imports: MLflow loads every entry point in every process that tracks.
"""

import os

from ...common.envvars import MLFLOW_BULK_INGEST


def tracking_store(store_uri, artifact_uri=None, **_):
    """The `mlflow.tracking_store` builder for sqlite and postgresql URIs."""
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.tracking._tracking_service import utils

    # workspaces use another store class; leave them to MLflow
    if MLFLOW_BULK_INGEST.get() != "1" or MLFLOW_ENABLE_WORKSPACES.get():
        return utils._get_sqlalchemy_store(store_uri, artifact_uri)
    if artifact_uri is None:  # as MLflow's builder: the server's configured artifact root
        artifact_uri = os.environ.get(utils._SERVER_ARTIFACT_ROOT_ENV_VAR, utils.DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    from .bulk_store import BulkIngestStore

    return BulkIngestStore(store_uri, artifact_uri)
