# AI Factory Lab configuration (a traitlets file, like jupyterhub_config.py).
#
# Put it at <state-dir>/aif_config.py, or pass --config FILE to `aif up`, `aif status` and
# `aif config show`. The same file configures the launcher (AIFPlatform, MLflowService) and
# everything the hub runs (JupyterHub, Authenticator, spawners): it is loaded by the hub after
# the platform's defaults, so anything set here wins. `aif config show` prints the result.

# --- the platform ----------------------------------------------------------------------------
# c.AIFPlatform.state_dir = "/srv/aifactory"          # hub db, MLflow store, secrets, logs
# c.AIFPlatform.ip = "0.0.0.0"                          # public proxy address
# c.AIFPlatform.port = 8000
# c.AIFPlatform.public_url = "https://lab.aifactory.example.eu"   # as users and jobs reach it
# c.AIFPlatform.spawner = "slurm"                       # "local" or "slurm"
# c.AIFPlatform.keep_servers_on_stop = True             # a site: never kill sessions on stop
# c.AIFPlatform.admin_user = "admin"                    # local authenticator's generated admin

# --- databases (SQLite by default; PostgreSQL at a site) ---------------------------------------
# c.AIFPlatform.hub_db_url = "postgresql://hub:PASSWORD@db.example.eu/jupyterhub"
# c.MLflowService.backend_store_uri = "postgresql://mlflow:PASSWORD@db.example.eu/mlflow"
# c.MLflowService.auth_db_uri = "postgresql://mlflow:PASSWORD@db.example.eu/mlflow_auth"
# c.MLflowService.artifacts_destination = "/gpfs/projects/aifactory/mlflow-artifacts"
# c.MLflowService.workers = 4

# --- authentication: the site's own instead of the local users file ---------------------------
# PAM (Unix accounts of the login node):
# c.JupyterHub.authenticator_class = "pam"
# c.Authenticator.admin_users = {"operator1"}
# c.Authenticator.allowed_users = set()     # or c.Authenticator.allow_all = True
#
# Generic OAuth / OpenID Connect (e.g. the centre's Keycloak); needs `pip install oauthenticator`:
# c.JupyterHub.authenticator_class = "generic-oauth"
# c.GenericOAuthenticator.client_id = "aifactory-lab"
# c.GenericOAuthenticator.client_secret = "..."
# c.GenericOAuthenticator.oauth_callback_url = "https://lab.aifactory.example.eu/hub/oauth_callback"
# c.GenericOAuthenticator.authorize_url = "https://sso.example.eu/realms/hpc/protocol/openid-connect/auth"
# c.GenericOAuthenticator.token_url = "https://sso.example.eu/realms/hpc/protocol/openid-connect/token"
# c.GenericOAuthenticator.userdata_url = "https://sso.example.eu/realms/hpc/protocol/openid-connect/userinfo"
# c.GenericOAuthenticator.username_claim = "preferred_username"
# c.GenericOAuthenticator.manage_groups = True
# c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"   # e.g. sme, evaluators
# c.GenericOAuthenticator.allow_all = True

# --- what sessions get ----------------------------------------------------------------------------
# c.PlatformEnvMixin.mlflow_async_logging = True       # batch notebook logging (default)
# c.PlatformEnvMixin.mlflow_async_buffer_seconds = 1
# c.Spawner.default_url = "/lab"
