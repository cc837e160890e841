"""Every AIF_* environment variable the platform reads or writes, defined once.

Code never spells an `AIF_...` name as a string literal: it imports the variable from here and
uses `.name` to set it or `.get()` to read it, so a rename or a typo cannot split one setting
into two. `REGISTRY` is what docs and `aif config` list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    help: str
    #: who sets it: "operator" (a person, in the shell), "platform" (aif up / the hub), "session"
    #: (the spawner, inside a user's server or job)
    set_by: str

    def get(self, default=None, environ=None):
        value = (os.environ if environ is None else environ).get(self.name)
        return default if value in (None, "") else value

    def __str__(self):
        return self.name


REGISTRY: dict[str, EnvVar] = {}


def _var(name, help, set_by):
    var = EnvVar(name, help, set_by)
    REGISTRY[name] = var
    return var


# -- the platform process tree (aif up -> hub -> services) ----------------------------------------
STATE_DIR = _var("AIF_STATE_DIR", "The platform's state directory (databases, secrets, logs, runtime.json); "
                 "also the default of every --state-dir option.", "operator")
CONFIG_FILE = _var("AIF_CONFIG_FILE", "The traitlets configuration file the hub and its services load.", "platform")
RUNTIME = _var("AIF_RUNTIME", "Path of runtime.json: the ports and URLs `aif up` chose, read by the hub's config.",
               "platform")
CHP = _var("AIF_CHP", "Path of the configurable-http-proxy executable to use instead of the project-local one.",
           "operator")
PARENT_PID = _var("AIF_PARENT_PID", "Pid of the process that started a platform process (the hub, for its "
                 "services): the process ends at once when that parent is already gone.", "platform")
PROCESS_RECORD = _var("AIF_PROCESS_RECORD", "Path of <state_dir>/run/processes.jsonl (0600): every process the "
                      "platform starts records its pid and process group there, so that `aif up` stops them all "
                      "and refuses to start over leftovers.", "platform")
MLFLOW_BRIDGE_SECRET = _var("AIF_MLFLOW_BRIDGE_SECRET", "Per-start secret the MLflow service presents to its "
                            "MLflow server, which refuses requests without it.", "platform")
MLFLOW_BULK_INGEST = _var("AIF_MLFLOW_BULK_INGEST", "1 in the platform's MLflow server: a log-batch is inserted "
                          "in one statement (hub tracking store plugin).", "platform")

# -- the Slurm mini-cluster -----------------------------------------------------------------------
CLUSTER_DIR = _var("AIF_CLUSTER_DIR", "State directory of the Slurm mini-cluster (`aif cluster`).", "operator")
MINICLUSTER = _var("AIF_MINICLUSTER", "Marks the processes of a mini-cluster, so `aif cluster down` finds its "
                   "own daemons only.", "platform")

# -- inside a user's session or job ---------------------------------------------------------------
SLURM_JOB_ID = _var("AIF_SLURM_JOB_ID", "The Slurm job a session runs in.", "session")
SLURM_NODE = _var("AIF_SLURM_NODE", "The node a session runs on.", "session")
GPUS = _var("AIF_GPUS", "The GPUs Slurm gave the session (CUDA_VISIBLE_DEVICES at start).", "session")
WALLTIME_END = _var("AIF_WALLTIME_END", "When the session's walltime ends (UTC, ISO 8601).", "session")
ENVIRONMENT = _var("AIF_ENVIRONMENT", "Name of the notebook environment (images/specs) a session runs in.", "session")
ENVIRONMENT_VERSION = _var("AIF_ENVIRONMENT_VERSION", "Version of that environment's spec.", "session")
ENVIRONMENT_DIGEST = _var("AIF_ENVIRONMENT_DIGEST", "First 16 hex digits of the spec's content digest.", "session")
MLFLOW_BUFFERED_LOGGING = _var("AIF_MLFLOW_BUFFERED_LOGGING", "1 in sessions: MLflow metrics go through the "
                               "session's batching tracking store (extensions).", "session")
WORKER_PARENT = _var("AIF_WORKER_PARENT", "Pid of the kernel that started a notebook benchmark worker; the worker "
                     "exits when that kernel is gone.", "session")

# -- the benchmark suite ----------------------------------------------------------------------------
HF_ALLOW_REMOTE_CODE = _var("AIF_HF_ALLOW_REMOTE_CODE", "1 lets benchmarks load Hugging Face models that need their "
                            "own Python code (config auto_map), where the config also says "
                            "model.trust_remote_code: true; unset, such models are refused.", "operator")
REFERENCE_CACHE = _var("AIF_REFERENCE_CACHE", "Where `aif bench reference-models` keeps the reference language "
                       "models it builds (default: $XDG_CACHE_HOME/aifactory, else ~/.cache/aifactory).", "operator")

# -- served models (aif serve) ------------------------------------------------------------------------
SERVE_DIR = _var("AIF_SERVE_DIR", "Where endpoints' private records live: $AIF_SERVE_DIR/<user>/<name> "
                 "(default ~/.aif/serve/<name>); the hub's serve service reads the same place.", "operator")
SERVE_ENGINE_PYTHON = _var("AIF_SERVE_ENGINE_PYTHON", "Python of the venv with the inference engine (vLLM) that "
                           "endpoint jobs run (default: the project's .venv-vllm, made by `make engines`).",
                           "operator")
SERVE_HOST = _var("AIF_SERVE_HOST", "Address an endpoint's engine binds to on its node (default: the node's "
                  "address as its hostname resolves); the hub's serve service must reach it.", "operator")
