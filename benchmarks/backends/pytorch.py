"""PyTorch backend: eager, torch.compile, CUDA graphs; TorchScript, torch.export and nn.Module models.

A module with several inputs is called with them in its forward() order (a `Feeds` batch); of
what it returns (a tensor, a tuple, a dict or ModelOutput) `to_numpy` reads the scored output.
A module computes all its outputs whatever is read, so every query "fetches" all of them."""

from __future__ import annotations

import copy

import numpy as np

from ..errors import BackendError
from ..signature import Feeds, choose_output, named_outputs, spec_of
from .base import Backend
from .devices import resolve_device

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchCudaMemory:
    """Peak GPU memory from torch's allocator, for backends with `torch`, `device` and `is_cuda`."""

    def reset_peak_gpu_memory(self):
        if self.is_cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gpu_memory_mb(self):
        if self.is_cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return None


class TorchBackend(TorchCudaMemory, Backend):
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
        if model_kind in ("onnx", "sklearn"):
            what = "an ONNX model" if model_kind == "onnx" else "a scikit-learn/LightGBM/XGBoost model"
            raise BackendError(f"{where}.kind: torch cannot run {what}; use kind: onnxruntime, or give "
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
            if cfg.precision != "fp32":
                # a copy: .to() casts in place, and the model's own fp32 module is what other
                # backends and the cross-check run
                module = copy.deepcopy(module).to(self.dtype)
            module = module.to(self.device)
        if cfg.mode == "compile":
            module = torch.compile(module)
        self.module = module
        self.is_cuda = self.device.startswith("cuda")
        if cfg.cuda_graphs and not self.is_cuda:
            raise BackendError(f"{where}.cuda_graphs: CUDA graphs need a CUDA device; this backend runs on {self.device}")
        self._graphs = {}
        self.fetched_outputs = [spec.name for spec in model.outputs] if model.outputs else []

    def _check_precision(self):
        torch = self.torch
        if self.cfg.precision == "bf16" and self.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise BackendError(f"{self.where}.precision: bf16 is not supported on {torch.cuda.get_device_name()}")

    def stage(self, x):
        if isinstance(x, Feeds):
            return Feeds({name: self._tensor(array) for name, array in x.arrays.items()})
        return self._tensor(x)

    def _tensor(self, array):
        if array.dtype.kind in "OUS":
            raise BackendError(f"{self.where}.kind: torch takes no text input; model {self.model.source} is "
                               "fed text (tokenize it first, or run an ONNX model on onnxruntime)")
        tensor = self.torch.from_numpy(np.ascontiguousarray(array))
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.to(self.device)

    def _call(self, batch):
        if isinstance(batch, Feeds):
            return self.module(*batch.arrays.values())
        return self.module(batch)

    def infer(self, batch):
        if self.cfg.cuda_graphs:
            return self._replay(batch)
        with self.torch.inference_mode():
            out = self._call(batch)
        if self.is_cuda:
            # Kernels are asynchronous: the query is done only when the device is.
            self.torch.cuda.synchronize(self.device)
        return out

    def launch(self, batch):
        if not self.is_cuda or self.cfg.cuda_graphs:
            return self.infer(batch)
        with self.torch.inference_mode():
            out = self._call(batch)
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
        if isinstance(batch, Feeds):
            for name, tensor in batch.arrays.items():
                static_in.arrays[name].copy_(tensor)
        else:
            static_in.copy_(batch)
        graph.replay()
        torch.cuda.synchronize(self.device)
        return static_out

    def _capture(self, batch):
        torch = self.torch
        static_in = (Feeds({n: t.clone() for n, t in batch.arrays.items()}) if isinstance(batch, Feeds)
                     else batch.clone())
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up allocator and lazy init off the capture stream
                self._call(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = self._call(static_in)
        return graph, static_in, static_out

    def to_numpy(self, out):
        """The scored output on the host: float outputs as float32, integer/bool ones (labels) as they are."""
        if not isinstance(out, self.torch.Tensor):
            out = self._scored(out)
        out = out.detach().cpu()
        return out.float().numpy() if out.is_floating_point() else out.numpy()

    def _scored(self, out):
        if self.output is None:  # built outside the runner: the rule, on what the module returned
            self.output = choose_output([spec_of(n, v) for n, v in named_outputs(out)], None, self.model.source)
        if isinstance(out, dict):
            return out[self.output.name]
        return named_outputs(out)[self.output.index][1]

    def close(self):
        self.torch.set_num_threads(self._saved_threads)
        self._graphs.clear()
