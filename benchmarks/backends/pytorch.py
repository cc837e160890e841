"""PyTorch backend: eager, torch.compile, CUDA graphs; TorchScript, torch.export and nn.Module models."""

from __future__ import annotations

import numpy as np

from ..errors import BackendError
from .base import Backend
from .devices import resolve_device

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(Backend):
    kind = "torch"
    shorthand = "torch[:eager|compile]"

    @classmethod
    def from_shorthand(cls, rest):
        return {"kind": "torch", "mode": rest or "eager"}

    @classmethod
    def config_label(cls, cfg):
        return f"torch:{cfg.mode}" + ("+cudagraphs" if cfg.cuda_graphs else "")

    @classmethod
    def preflight(cls, cfg, model_kind, where):
        if model_kind == "onnx":
            raise BackendError(f"{where}.kind: torch cannot run an ONNX model; use kind: onnxruntime, or give "
                               "a TorchScript/.pt2/factory model (backends[i].model)")
        super().preflight(cfg, model_kind, where)

    def __init__(self, cfg, model, where):
        super().__init__(cfg, model, where)
        import torch

        self.torch = torch
        if not model.is_torch:
            raise BackendError(f"{where}.kind: torch cannot run the ONNX model {model.source}; "
                               "use kind: onnxruntime, or give a TorchScript/.pt2/factory model")
        self.device = resolve_device(cfg.device, where)
        self.dtype = getattr(torch, TORCH_DTYPES[cfg.precision])
        self._check_precision()
        self._saved_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        module = model.module
        if hasattr(module, "to"):
            module = module.to(self.device)
            if cfg.precision != "fp32":
                module = module.to(self.dtype)
        if cfg.mode == "compile":
            module = torch.compile(module)
        self.module = module
        self.is_cuda = self.device.startswith("cuda")
        if cfg.cuda_graphs and not self.is_cuda:
            raise BackendError(f"{where}.cuda_graphs: CUDA graphs need a CUDA device; this backend runs on {self.device}")
        self._graphs = {}

    def _check_precision(self):
        torch = self.torch
        if self.cfg.precision == "bf16" and self.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise BackendError(f"{self.where}.precision: bf16 is not supported on {torch.cuda.get_device_name()}")

    def stage(self, x):
        tensor = self.torch.from_numpy(np.ascontiguousarray(x))
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.to(self.device)

    def infer(self, batch):
        if self.cfg.cuda_graphs:
            return self._replay(batch)
        with self.torch.inference_mode():
            out = self.module(batch)
        if self.is_cuda:
            # Kernels are asynchronous: the query is done only when the device is.
            self.torch.cuda.synchronize(self.device)
        return out

    def launch(self, batch):
        if not self.is_cuda or self.cfg.cuda_graphs:
            return self.infer(batch)
        with self.torch.inference_mode():
            out = self.module(batch)
        done = self.torch.cuda.Event()
        done.record()
        return out, done

    def wait(self, handle):
        if isinstance(handle, tuple):
            handle[1].synchronize()
            return handle[0]
        return handle

    def device_indices(self, indices):
        # One copy per query; later slices index on the device without a blocking host copy.
        return self.torch.from_numpy(indices).to(self.device)

    def _replay(self, batch):
        """Capture once per batch shape into static buffers, then copy-in + replay per query."""
        torch = self.torch
        key = tuple(batch.shape)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(batch)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(batch)
        graph.replay()
        torch.cuda.synchronize(self.device)
        return static_out

    def _capture(self, batch):
        torch = self.torch
        static_in = batch.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up allocator and lazy init off the capture stream
                self.module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = self.module(static_in)
        return graph, static_in, static_out

    def to_numpy(self, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().cpu().numpy()

    def reset_peak_gpu_memory(self):
        if self.is_cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gpu_memory_mb(self):
        if self.is_cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return None

    def close(self):
        self.torch.set_num_threads(self._saved_threads)
        self._graphs.clear()
