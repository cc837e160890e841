"""The serving room: `aif serve` puts a model behind an OpenAI-compatible endpoint.

- endpoints.py: an endpoint's private record (0700 folder, 0600 files) per user, names, models;
- engines.py: the inference engine's command line and environment (vLLM; its CPU build in dev/CI);
- jobs.py: the endpoint's Slurm job, with the notebook sessions' validated resource request;
- manager.py: start, status, stop, share: what the CLI does, as a Python API;
- front.py: the hub-managed service that authenticates hub tokens and proxies to the engine;
- idle.py: the service's idle stop (ServeService.idle_timeout);
- overview.py + templates/: the user's endpoints on the hub's home page and in the session panel;
- tracking.py: each endpoint as an MLflow run;
- cli.py: `aif serve start|list|status|logs|stop|share`.
"""
