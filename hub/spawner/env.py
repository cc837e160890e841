"""What every AI Factory spawner adds to a user's server environment.

Mixed into both the local and the Slurm spawner, so that inside any session
`import mlflow; mlflow.log_metric("x", 1)` works with no configuration.
"""

import os
from importlib.util import find_spec

from traitlets import Bool, Integer, Unicode
from traitlets.config import Configurable

from ...common.envvars import MLFLOW_BUFFERED_LOGGING


#: JupyterLab fetches no news feed and checks no versions on the internet (its UI defaults are
#: off too, labconfig/default_setting_overrides.json, but a user could turn those on)
NO_PHONING_HOME_ARGS = [
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
]


class PlatformEnvMixin(Configurable):
    """Adds the MLflow tracking settings of the platform to the server's environment."""

    mlflow_tracking_uri = Unicode(
        "",
        help="""URL of the hub's MLflow service as seen from a user's server
        (e.g. https://hub.example.eu/services/mlflow). Empty: MLflow is not configured.""",
    ).tag(config=True)

    mlflow_async_logging = Bool(
        True,
        help="""Make MLflow logging asynchronous in users' sessions, so that a naive
        per-step `mlflow.log_metric` loop is batched instead of paying one HTTP round
        trip per point.""",
    ).tag(config=True)

    mlflow_async_buffer_seconds = Integer(
        1,
        help="""With asynchronous logging, how long logged points gather in the session before they
        are sent as one batch (with buffered logging a full batch of 1,000 goes at once, and a
        read or the run's end sends what is left).""",
    ).tag(config=True)

    mlflow_buffered_logging = Bool(
        True,
        help="""With asynchronous logging, log through the platform's in-process buffer
        (aifactory.extensions.mlflow_logging) instead of MLflow's async queue: a `log_metric`
        call costs a list append instead of a thread-pool hand-off, and one background thread
        sends large batches. Reads and the run's end see every point logged before them.""",
    ).tag(config=True)

    def get_args(self):
        # traitlets config from a config.d folder does not reach LabApp; the command line does
        return [*super().get_args(), *NO_PHONING_HOME_ARGS]

    def get_env(self):
        env = super().get_env()
        if self.mlflow_tracking_uri:
            env.update(self.mlflow_env())
        env.update(extensions_env(env))
        return env

    def mlflow_env(self):
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            # without it, every MlflowClient() probes for pyspark with a failing import
            # (~1 ms per log_metric call)
            "MLFLOW_REGISTRY_URI": self.mlflow_tracking_uri,
            # the server's own hub token; the hub's "server" role grants it access to the service
            "MLFLOW_TRACKING_TOKEN": self.api_token,
            "MLFLOW_EXPERIMENT_NAME": f"{self.user.name}/default",
            # companies' work stays on the site: no usage telemetry to MLflow's servers
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
        if self.mlflow_async_logging:
            env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
            env["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = str(self.mlflow_async_buffer_seconds)
            if self.mlflow_buffered_logging:
                env[MLFLOW_BUFFERED_LOGGING.name] = "1"
        return env


def extensions_env(env):
    """JUPYTER_CONFIG_PATH with the notebook extensions' config (enables /aif/session and the
    example notebooks) also in an editable install, where pip's data-files do not reach etc/jupyter."""
    spec = find_spec("aifactory.extensions")
    if spec is None or not spec.submodule_search_locations:
        return {}
    config_dir = os.path.join(list(spec.submodule_search_locations)[0], "etc", "jupyter")
    paths = [config_dir] + [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    return {"JUPYTER_CONFIG_PATH": os.pathsep.join(dict.fromkeys(paths))}
