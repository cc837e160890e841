"""ONNX Runtime backend: any execution provider (CPU, CUDA with IO binding, TensorRT); a torch
model given to it is exported to ONNX first, so the export is checked against its original."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError, ModelError
from .base import Backend
from .devices import cuda_available, cuda_index, resolve_device

if TYPE_CHECKING:
    from ..models import LoadedModel

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"
    shorthand = "onnxruntime[:PROVIDER]"

    @classmethod
    def from_shorthand(cls, rest):
        return {"kind": "onnxruntime", "providers": [rest] if rest else None}

    @classmethod
    def config_label(cls, cfg):
        return f"onnxruntime:{(cfg.providers or ['auto'])[0]}"

    @classmethod
    def preflight(cls, cfg, model_kind, where):
        if cfg.providers:
            _check_installed(cfg.providers, where)
        super().preflight(cfg, model_kind, where)

    @classmethod
    def planned_device(cls, cfg):
        gpu = any(p in GPU_PROVIDERS for p in (cfg.providers or []))
        return "cuda:0" if gpu or (cfg.providers is None and cfg.device != "cpu" and cuda_available()) else "cpu"

    def __init__(self, cfg, model, where):
        super().__init__(cfg, model, where)
        import onnxruntime as ort

        self.ort = ort
        self._tmpdir = None
        path = self._onnx_path(model)
        self.providers = self._providers()
        self.device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        if self.device == "cuda":
            self.device_id = cuda_index(resolve_device(cfg.device, where))
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
        _check_installed(requested, self.where, available)
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


def _check_installed(providers, where, available=None):
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    for name in providers:
        if name not in available:
            raise BackendError(f"{where}.providers: execution provider {name!r} is not installed; this "
                               f"ONNX Runtime has {', '.join(available)}")
