"""Which device a backend runs on: what this session was given (CUDA_VISIBLE_DEVICES, as Slurm
sets it, is honoured by CUDA itself), probed without importing torch where it is absent."""

from __future__ import annotations

import os

from ..errors import BackendError


def cuda_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def resolve_device(device, where):
    """`auto`, `cpu`, `cuda` or `cuda:N` as the session sees it -> `cpu` or `cuda:N`."""
    if device == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        if not cuda_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise BackendError(f"{where}.device: {device} requested but no CUDA device is available "
                               f"(CUDA_VISIBLE_DEVICES={visible!r})")
        import torch

        index = cuda_index(device)
        if index >= torch.cuda.device_count():
            raise BackendError(f"{where}.device: {device} but this session sees {torch.cuda.device_count()} GPU(s)")
        return f"cuda:{index}"
    return "cpu"


def cuda_index(device):
    """The N of `cuda:N` (0 for plain `cuda`)."""
    return int(device.split(":")[1]) if ":" in device else 0
