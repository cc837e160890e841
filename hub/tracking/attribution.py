"""Attribution rules, per MLflow endpoint: runs belong to the hub user who logs them.

`user_id` and the `mlflow.user` tag of a new run are set to the hub user; a client that tries to
set another user's name is refused; `other/...` experiment names belong to hub user `other`, and
artifacts stay in the platform's store. Each rule gets the parsed body; it raises to refuse, and
returns True when it rewrote the payload (otherwise the original bytes go on: MLflow parses them
with the same json module).
"""

from urllib.parse import unquote

from .errors import MLflowError
from .server import ARTIFACT_ROOT

USER_TAG = "mlflow.user"


def _refuse_user_tag(name, tags, where):
    for tag in tags or []:
        if tag.get("key") == USER_TAG and tag.get("value") != name:
            raise MLflowError(403, "PERMISSION_DENIED",
                              f"{where}: tag {USER_TAG} is set by the platform to the run's owner ({name})")


async def _attribute_new_run(handler, name, payload):
    payload["user_id"] = name
    tags = [t for t in payload.get("tags") or [] if t.get("key") != USER_TAG]
    payload["tags"] = tags + [{"key": USER_TAG, "value": name}]
    return True


async def _check_set_tag(handler, name, payload):
    _refuse_user_tag(name, [payload], "runs/set-tag")


async def _check_log_batch(handler, name, payload):
    _refuse_user_tag(name, payload.get("tags"), "runs/log-batch")


async def _check_new_experiment(handler, name, payload):
    """`other/...` names are reserved to the hub user `other` (default experiments are `<user>/default`);
    artifacts stay in the platform's store (a client would write to any path it is given)."""
    location = payload.get("artifact_location") or ""
    inside = location.startswith(ARTIFACT_ROOT) and ".." not in unquote(location).split("/")
    if location and not inside:
        raise MLflowError(400, "INVALID_PARAMETER_VALUE",
                          f"experiments/create: artifact_location {location!r} is refused; leave it empty "
                          f"(artifacts go to the platform's store, {ARTIFACT_ROOT})")
    owner, sep, _ = (payload.get("name") or "").partition("/")
    if not sep or owner == name:
        return
    _, admin, _ = await handler.backends.ensure_identity(name)
    if not admin and await handler.backends.hub_user(owner) is not None:
        raise MLflowError(403, "PERMISSION_DENIED",
                          f"experiments/create: names starting with '{owner}/' belong to hub user {owner}")


REWRITES = {
    "/mlflow/runs/create": _attribute_new_run,
    "/mlflow/runs/set-tag": _check_set_tag,
    "/mlflow/runs/log-batch": _check_log_batch,
    "/mlflow/experiments/create": _check_new_experiment,
}

