"""What a notebook session knows about itself: Slurm job, node, GPUs, walltime, platform links.

Read from the environment the spawners set (docs/slurm.md: AIF_SLURM_JOB_ID, AIF_SLURM_NODE,
AIF_GPUS, AIF_WALLTIME_END; JupyterHub's JUPYTERHUB_*; MLFLOW_TRACKING_URI) plus `nvidia-smi`
when a GPU is present. One function serves the `/aif/session` endpoint, the panel and the magic.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess

from aifactory.common.envvars import GPUS, SLURM_JOB_ID, SLURM_NODE, WALLTIME_END

GPU_QUERY = "index,name,utilization.gpu,memory.used,memory.total"


def session_info(env=None, now=None) -> dict:
    """The session as a JSON-ready dict; fields that do not apply are None."""
    env = os.environ if env is None else env
    end = _parse_time(WALLTIME_END.get(environ=env))
    now = now or dt.datetime.now(dt.timezone.utc)
    return {
        "user": env.get("JUPYTERHUB_USER"),
        "server_name": env.get("JUPYTERHUB_SERVER_NAME") or "",
        "slurm_job_id": SLURM_JOB_ID.get(environ=env) or env.get("SLURM_JOB_ID"),
        "node": SLURM_NODE.get(environ=env) or env.get("SLURMD_NODENAME"),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "gpus": _gpu_ids(env),
        "gpu_stats": gpu_stats(env),
        "walltime_end": end.strftime("%Y-%m-%dT%H:%M:%SZ") if end else None,
        "walltime_remaining_s": max(0, int((end - now).total_seconds())) if end else None,
        "mlflow_url": mlflow_link(env),
        "hub_control_panel_url": _hub_link(env),
    }


def _gpu_ids(env):
    visible = GPUS.get(environ=env) or env.get("CUDA_VISIBLE_DEVICES") or ""
    return [g for g in visible.split(",") if g.strip()]


def _parse_time(text):
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def gpu_stats(env=None, timeout=5) -> list:
    """Live utilisation and memory per GPU from nvidia-smi; [] where there is no GPU or driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
                             check=False, capture_output=True, text=True, timeout=timeout, env=dict(env or os.environ))
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    stats = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        index, name, util, used, total = parts
        stats.append({"index": index, "name": name, "utilization_pct": _number(util),
                      "memory_used_mib": _number(used), "memory_total_mib": _number(total)})
    return stats


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]" on some GPUs


def mlflow_link(env=None):
    """MLflow as a browser reaches it: the hub-relative path when MLflow is the hub's service."""
    env = os.environ if env is None else env
    uri = env.get("MLFLOW_TRACKING_URI") or ""
    marker = "/services/"
    if marker in uri:
        return uri[uri.index(marker):].rstrip("/") + "/"
    return uri or None


def _hub_link(env):
    prefix = env.get("JUPYTERHUB_BASE_URL")
    return f"{prefix.rstrip('/')}/hub/home" if prefix else None
