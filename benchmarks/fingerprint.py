"""Fingerprint of the machine and software a result was measured on."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata

from aifactory.common.envvars import ENVIRONMENT, ENVIRONMENT_DIGEST, ENVIRONMENT_VERSION

from .backends.devices import cuda_index


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gpu_info():
    """Name and driver of the GPUs this session sees, from NVML; [] without an NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver
        return None, []
    driver = pynvml.nvmlSystemGetDriverVersion()
    driver = driver.decode() if isinstance(driver, bytes) else driver
    names = []
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip().isdigit()]
    indices = [int(v) for v in visible] or range(pynvml.nvmlDeviceGetCount())
    for index in indices:
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else name)
        except Exception:  # noqa: BLE001 - a simulated index (Slurm test nodes) has no device
            pass
    return driver, names


def collect(config_dict=None):
    torch_version = cuda_version = None
    try:
        import torch

        torch_version = torch.__version__
        cuda_version = torch.version.cuda
    except ImportError:
        pass
    driver, gpus = gpu_info()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu_names": gpus,
        "gpu_driver": driver,
        "cuda": cuda_version,
        "torch": torch_version,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "loadgen": _version("mlcommons-loadgen"),
        "python": platform.python_version(),
        "aifactory": _version("aifactory-lab"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "environment": environment_name(),
        "environment_digest": ENVIRONMENT_DIGEST.get(),
        "environment_packages": environment_packages(),
        "config": config_dict,
    }


def environment_name():
    """The notebook image's name and version when it sets them (images/ exports these)."""
    name, version = ENVIRONMENT.get(), ENVIRONMENT_VERSION.get()
    if name:
        return f"{name}:{version}" if version else name
    return f"python-{platform.python_version()}"


def environment_packages():
    """The pinned package versions of the environment this Python runs in (from its build manifest).

    `aif images build` writes aif-environment.json into the venv / image prefix; None elsewhere.
    """
    import json
    import sys

    try:
        with open(os.path.join(sys.prefix, "aif-environment.json")) as manifest:
            return json.load(manifest).get("packages")
    except (OSError, ValueError, AttributeError):
        return None


def hardware_tag(device: str, fingerprint: dict):
    """`<device kind>:<device name>` as the MLflow layout wants it."""
    if device == "remote":  # an endpoint backend: the model runs on the server, not on this host
        return "remote:endpoint"
    if device.startswith("cuda"):
        index = cuda_index(device)
        names = fingerprint.get("gpu_names") or []
        name = names[index] if index < len(names) else "unknown GPU"
        return f"cuda:{name}"
    return f"cpu:{fingerprint.get('cpu_model')}"
