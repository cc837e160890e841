"""The spawner room: where users' servers run, and what they may ask for.

- slurm.py: `AIFSlurmSpawner` (entry point `aif-slurm`), JupyterLab in a Slurm job;
- local.py: `AIFLocalSpawner` (`aif-local`), a local process per user (laptop, demo);
- env.py: what every AI Factory spawner adds to a server's environment (MLflow, extensions);
- profiles.py: resource profiles, group limits, validation of `user_options`;
- poller.py: one shared squeue view per hub;
- api.py: the port-only replacement of batchspawner's API handler;
- templates/: the spawn form and the batch script (jinja2).

`aifactory.hub.spawner:AIFSlurmSpawner` is the stable path (entry points, site configs). It is
loaded on first use, so that the local spawner or the profiles never import batchspawner.
"""

__all__ = ["AIFSlurmSpawner", "AIFLocalSpawner"]


def __getattr__(name):
    if name == "AIFSlurmSpawner":
        from .slurm import AIFSlurmSpawner

        return AIFSlurmSpawner
    if name == "AIFLocalSpawner":
        from .local import AIFLocalSpawner

        return AIFLocalSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
