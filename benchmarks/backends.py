"""Backends: how a model runs. PyTorch (eager, torch.compile, CUDA graphs) and ONNX Runtime.

Contract used by scenarios and accuracy:
  stage(x)     -> the whole dataset placed where the model reads it (host or device memory)
  infer(batch) -> runs the model on a slice of the staged data and returns only once the result
                  exists (GPU work synchronized), so a caller's clock measures finished work
  to_numpy(out)-> host float32 copy of an output
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .config import BackendConfig
from .models import LoadedModel, ModelError

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class BackendError(ValueError):
    """A backend cannot run as configured; the message names the config field."""


def preflight(cfg: BackendConfig, model_kind: str, where: str):
    """Cheap checks before anything runs, so a bad backend fails the benchmark at once."""
    if cfg.kind == "torch" and model_kind == "onnx":
        raise BackendError(f"{where}.kind: torch cannot run an ONNX model; use kind: onnxruntime, or give "
                           "a TorchScript/.pt2/factory model (backends[i].model)")
    if cfg.kind == "onnxruntime" and cfg.providers:
        import onnxruntime as ort

        available = ort.get_available_providers()
        for name in cfg.providers:
            if name not in available:
                raise BackendError(f"{where}.providers: execution provider {name!r} is not installed; this "
                                   f"ONNX Runtime has {', '.join(available)}")
    if cfg.device.startswith("cuda") and cfg.kind != "null":
        resolve_device(cfg.device, where)


def create_backend(cfg: BackendConfig, model: LoadedModel, where: str):
    if cfg.kind == "null":
        return NullBackend(cfg, model, where)
    if cfg.kind == "torch":
        return TorchBackend(cfg, model, where)
    return OnnxRuntimeBackend(cfg, model, where)


class Backend:
    label = "backend"

    def __init__(self, cfg: BackendConfig, model: LoadedModel, where: str):
        self.cfg, self.model, self.where = cfg, model, where
        self.device = "cpu"
        self.precision = cfg.precision

    def stage(self, x: np.ndarray):
        return x

    def infer(self, batch):
        raise NotImplementedError

    # Pipelining (Offline): launch batch k+1 before waiting for batch k, so per-sample host work
    # (LoadGen responses) overlaps device compute. Synchronous backends just run in launch().
    def launch(self, batch):
        return self.infer(batch)

    def wait(self, handle):
        return handle

    def device_indices(self, indices: np.ndarray):
        """Sample indices where gathering from the staged data is cheapest."""
        return indices

    def to_numpy(self, out) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def warmup(self, staged, batch_sizes=(1,), iterations=3):
        for size in batch_sizes:
            for _ in range(iterations):
                self.infer(staged[:size])

    def reset_peak_gpu_memory(self):
        pass

    def peak_gpu_memory_mb(self):
        return None

    def close(self):
        pass


class NullBackend(Backend):
    """Returns its input: measures the harness itself (perf/bench_overhead.py)."""

    label = "null"

    def infer(self, batch):
        return batch


class TorchBackend(Backend):
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
        self.label = cfg.label

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


class OnnxRuntimeBackend(Backend):
    def __init__(self, cfg, model, where):
        super().__init__(cfg, model, where)
        import onnxruntime as ort

        self.ort = ort
        self._tmpdir = None
        path = self._onnx_path(model)
        self.providers = self._providers()
        self.device = "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        if self.device == "cuda":
            self.device_id = _cuda_index(resolve_device(cfg.device, where))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if cfg.threads:
            options.intra_op_num_threads = cfg.threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self._provider_options())
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelError(f"{where}: ONNX Runtime cannot load {path}: {err}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = _ORT_TYPES.get(inp.type, "float32")
        self._check_precision()
        self.label = f"onnxruntime:{self.providers[0]}"

    def _onnx_path(self, model):
        if model.kind == "onnx":
            return model.path
        # A torch model on ONNX Runtime: export it, so the export is checked against its original.
        self._tmpdir = tempfile.TemporaryDirectory(prefix="aif-onnx-")
        path = Path(self._tmpdir.name) / f"{model.name}.onnx"
        export_onnx(model, path, self.where)
        return path

    def _providers(self):
        available = self.ort.get_available_providers()
        requested = self.cfg.providers
        if not requested:
            wants_cuda = self.cfg.device.startswith("cuda") or (self.cfg.device == "auto" and cuda_available())
            requested = ["CUDAExecutionProvider"] if wants_cuda and "CUDAExecutionProvider" in available else []
        for name in requested:
            if name not in available:
                raise BackendError(f"{self.where}.providers: execution provider {name!r} is not installed; this "
                                   f"ONNX Runtime has {', '.join(available)}")
        if "CPUExecutionProvider" not in requested:
            requested = [*requested, "CPUExecutionProvider"]
        return requested

    def _provider_options(self):
        options = []
        for name in self.providers:
            if name == "TensorrtExecutionProvider":
                opts = {"device_id": self.device_id}
                if self.cfg.precision != "fp32":  # only name the flag asked for: older TensorRT EPs lack bf16
                    opts[f"trt_{self.cfg.precision}_enable"] = True
            elif name == "CUDAExecutionProvider":
                opts = {"device_id": self.device_id}
            else:
                opts = {}
            options.append((name, opts))
        return options

    def _check_precision(self):
        native = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(self.input_dtype, "fp32")
        trt = self.providers[0] == "TensorrtExecutionProvider"
        if self.cfg.precision != native and not trt:
            raise BackendError(f"{self.where}.precision: ONNX Runtime runs the model in its own precision "
                               f"({native}); export a {self.cfg.precision} model, or use TensorRT")

    def stage(self, x):
        return np.ascontiguousarray(x.astype(self.input_dtype, copy=False))

    def infer(self, batch):
        if self.device == "cuda":
            return self._infer_bound(batch)
        return self.session.run((self.output_name,), {self.input_name: batch})[0]

    def _infer_bound(self, batch):
        """IO binding: input copied once to the device, output left there; wait for completion."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    def to_numpy(self, out):
        if not isinstance(out, np.ndarray):
            out = out.copy_outputs_to_cpu()[0]
        return np.asarray(out, dtype=np.float32)

    def close(self):
        if self._tmpdir is not None:
            self._tmpdir.cleanup()


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bfloat16)": "float32"}


def export_onnx(model: LoadedModel, path, where="model"):
    import torch

    if not model.input_shape or None in model.input_shape:
        raise ModelError(f"{where}: exporting {model.source} to ONNX needs its input shape; set model.input_shape")
    dtype = getattr(torch, model.input_dtype or "float32")
    example = torch.zeros((1, *model.input_shape), dtype=dtype)
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation chatter
            warnings.simplefilter("ignore")
            torch.onnx.export(model.module, (example,), str(path), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: cannot export {model.source} to ONNX: {err}") from None


def cuda_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def resolve_device(device, where):
    """Pick from what this session was given (CUDA_VISIBLE_DEVICES is honoured by CUDA itself)."""
    if device == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        if not cuda_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise BackendError(f"{where}.device: {device} requested but no CUDA device is available "
                               f"(CUDA_VISIBLE_DEVICES={visible!r})")
        import torch

        index = _cuda_index(device)
        if index >= torch.cuda.device_count():
            raise BackendError(f"{where}.device: {device} but this session sees {torch.cuda.device_count()} GPU(s)")
        return f"cuda:{index}"
    return "cpu"


def _cuda_index(device):
    return int(device.split(":")[1]) if ":" in device else 0
