"""MLflow auth-app plug-in: trust the identity that the hub's MLflow bridge vouches for.

Loaded inside the MLflow server (`authorization_function` in its auth config). The server listens
on loopback only, and a request counts only if it carries the bridge's per-start secret, so a
local user cannot reach MLflow around the hub by talking to its port directly.
"""

import hmac
import os

from flask import Response, request
from werkzeug.datastructures import Authorization

USER_HEADER = "X-Aif-User"
SECRET_HEADER = "X-Aif-Bridge-Secret"
SECRET_ENV = "AIF_MLFLOW_BRIDGE_SECRET"


def authenticate_request():
    secret = os.environ.get(SECRET_ENV, "")
    given = request.headers.get(SECRET_HEADER, "")
    user = request.headers.get(USER_HEADER, "")
    if not secret or not user or not hmac.compare_digest(given.encode(), secret.encode()):
        return Response("MLflow is reached through the hub: /services/mlflow/", status=401)
    return Authorization("basic", {"username": user, "password": ""})
