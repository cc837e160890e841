"""The tracking room: MLflow behind the hub's login, one module per concern.

- service.py: the hub-managed service process (`python -m aifactory.hub.tracking.service`);
- handlers.py: its request handlers (health, shares, the authenticated proxy to MLflow);
- attribution.py: the rules that make runs belong to the hub user who logs them;
- shares.py: experiments shared read-only with hub groups, and the grants made for them;
- backends.py: calls to MLflow's REST API (as service admin) and to the hub's, identity sync;
- server.py: the MLflow server process, its stores and auth config;
- auth_plugin.py: loaded inside the MLflow server, trusts only the bridge's identity;
- store.py, bulk_store.py: the `mlflow.tracking_store` plugin of the platform's server.

Nothing is imported here: MLflow loads store.py's entry point in every process that tracks, and
the MLflow server loads auth_plugin.py; neither should pay for the service's imports.
"""
