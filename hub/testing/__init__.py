"""The testing room: real components for tests and perf scripts, importable like any module.

- platform.py: `start_platform` and a person's way in (`login`, `open_lab`, `start_server`);
- kernel.py: `run_in_kernel`, code run in a user's server over the Jupyter websocket API;
- spawner_lab.py: `SpawnerLab`, a bare JupyterHub + proxy for comparing Slurm spawners;
- cluster.py: `mini_cluster`, the Slurm mini-cluster with real Unix users, removed after;
- ci.py: `require`, `require_root`, `require_binary` (in CI a missing prerequisite fails);
- oidc_idp.py: `OIDCProvider`, a real OpenID Connect provider (django-oidc-provider) on loopback;
- fixtures.py: the pytest fixtures `platform`, `platform_factory`, `port`, `oidc_provider` (tests/conftest.py).

Not imported by anything the platform runs; shipped so that tests and perf/ share one copy.
"""
