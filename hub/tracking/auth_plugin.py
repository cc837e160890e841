"""MLflow auth-app plug-in: trust the identity that the hub's MLflow bridge vouches for.

Loaded inside the MLflow server (`authorization_function` in its auth config). The server listens
on loopback only, and a request counts only if it carries the bridge's per-start secret, so a
local user cannot reach MLflow around the hub by talking to its port directly.
"""

import hmac

from ...common.envvars import MLFLOW_BRIDGE_SECRET

USER_HEADER = "X-Aif-User"
SECRET_HEADER = "X-Aif-Bridge-Secret"
SERVICE_ADMIN = "aif-service"  # MLflow auth-app admin the bridge acts as for housekeeping


def authenticate_request():
    """MLflow auth app's `authorization_function`: the user the bridge names, with its secret."""
    # Flask is the MLflow server's; the service itself imports this module for the names above
    from flask import Response, request
    from werkzeug.datastructures import Authorization

    secret = MLFLOW_BRIDGE_SECRET.get("")
    given = request.headers.get(SECRET_HEADER, "")
    user = request.headers.get(USER_HEADER, "")
    if not secret or not user or not hmac.compare_digest(given.encode(), secret.encode()):
        return Response("MLflow is reached through the hub: /services/mlflow/", status=401)
    return Authorization("basic", {"username": user, "password": ""})
