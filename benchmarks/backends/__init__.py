"""Backends: how a model runs. The contract is `base.Backend`; `registry.BACKENDS` names each one.

    torch        pytorch.TorchBackend        eager, torch.compile, CUDA graphs
    onnxruntime  onnxruntime.OnnxRuntimeBackend  any execution provider
    null         null.NullBackend            returns its input (harness overhead)
"""

from .base import Backend
from .devices import cuda_available, resolve_device
from .registry import BACKENDS, backend_class, create_backend, parse_shorthand, preflight

__all__ = ["BACKENDS", "Backend", "backend_class", "create_backend", "cuda_available", "parse_shorthand",
           "preflight", "resolve_device"]
