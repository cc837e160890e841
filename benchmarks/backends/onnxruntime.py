"""ONNX Runtime backend: any execution provider (CPU, CUDA with IO binding, TensorRT); a torch
model given to it is exported to ONNX first, so the export is checked against its original.

Inputs are fed by name (one array, or a `Feeds` batch of several); per query the session fetches
only the scored output (`fetch_outputs: scored`, the default) or every output (`all`), and
`to_numpy` reads the scored one (a ZipMap's maps become an [N, C] array in class order)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError, ModelError
from ..signature import MAP_SEQUENCE, OTHER, TENSOR, Feeds, TensorSpec, choose_output, named_outputs, output_array
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
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_dtypes = {i.name: _ORT_TYPES.get(i.type, "float32") for i in inputs}
        self.input_dtype = self.input_dtypes[self.input_name] if len(inputs) == 1 else None
        self._choose_fetches(model)
        self._check_precision()
        self.label = f"onnxruntime:{self.providers[0]}"

    def _choose_fetches(self, model):
        """The scored output (the model's choice, else the rule on this session's outputs), and what is fetched."""
        outputs = [_session_spec(o) for o in self.session.get_outputs()]
        self.output = model.output or choose_output(outputs, None, model.source)
        names = [o.name for o in outputs]
        if self.output.name not in names:
            raise ModelError(f"{self.where}: the ONNX graph run for {model.source} has no output {self.output.name!r}; "
                             f"it has {', '.join(names)}")
        self.fetched_outputs = names if self.cfg.fetch_outputs == "all" else [self.output.name]
        self._scored = self.fetched_outputs.index(self.output.name)
        # IO binding keeps tensors on the device; a ZipMap's maps (or other non-tensors) cannot be bound
        self._bindable = all(outputs[names.index(n)].kind == TENSOR for n in self.fetched_outputs)

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
        floats = [d for d in self.input_dtypes.values() if d in ("float32", "float16", "bfloat16")]
        native = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(floats[0] if floats else None, "fp32")
        trt = self.providers[0] == "TensorrtExecutionProvider"
        if self.cfg.precision != native and not trt:
            raise BackendError(f"{self.where}.precision: ONNX Runtime runs the model in its own precision "
                               f"({native}); export a {self.cfg.precision} model, or use TensorRT")

    def stage(self, x):
        if isinstance(x, Feeds):
            missing = sorted(set(self.input_dtypes) - set(x.arrays))
            if missing:
                raise ModelError(f"{self.where}: model {self.model.source} needs input {missing[0]!r}; the data "
                                 f"binds {', '.join(x.arrays)}")
            return Feeds({name: _staged(x.arrays[name], dtype) for name, dtype in self.input_dtypes.items()})
        return _staged(x, self.input_dtype)

    def infer(self, batch):
        """The fetched outputs (a list, the session's own result) once they exist."""
        if self.device == "cuda" and self._bindable:
            return self._infer_bound(batch)
        feeds = batch.arrays if isinstance(batch, Feeds) else {self.input_name: batch}
        return self.session.run(self.fetched_outputs, feeds)

    def _infer_bound(self, batch):
        """IO binding: inputs copied once to the device, outputs left there; wait for completion."""
        binding = self.session.io_binding()
        feeds = batch.arrays if isinstance(batch, Feeds) else {self.input_name: batch}
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.fetched_outputs:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    def to_numpy(self, out):
        """The scored output on the host: scores float32, labels as labels, maps as [N, C] scores."""
        value = out[self._scored] if isinstance(out, list) else out.copy_outputs_to_cpu()[self._scored]
        return output_array(value, self.output)

    def close(self):
        if self._tmpdir is not None:
            self._tmpdir.cleanup()


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bfloat16)": "float32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(bool)": "bool",
              "tensor(string)": "object"}


def _staged(array, dtype):
    return np.ascontiguousarray(array.astype(dtype, copy=False)) if dtype else np.ascontiguousarray(array)


def _session_spec(node_arg):
    """An ORT NodeArg ('tensor(float)', [None, 3] / 'seq(map(int64,tensor(float)))') as a TensorSpec."""
    kind = node_arg.type
    if kind.startswith("tensor("):
        dtype = "string" if kind == "tensor(string)" else _ORT_TYPES.get(kind, kind[7:-1])
        shape = tuple(d if isinstance(d, int) else None for d in node_arg.shape)
        return TensorSpec(node_arg.name, dtype, shape)
    if kind.startswith("seq(map("):
        return TensorSpec(node_arg.name, "float32", None, MAP_SEQUENCE)
    return TensorSpec(node_arg.name, kind, None, OTHER)


def export_onnx(model: LoadedModel, path, where="model"):
    """A torch model as ONNX, its inputs and outputs named as the suite names them (so model.output
    means the same output on both backends), the batch dim dynamic."""
    import torch

    example = _example_inputs(model, where)
    input_names = list(example)
    if model.outputs is None:  # not described by the runner: name them from one traced call
        with torch.inference_mode():
            out = model.module(*example.values())
        output_names = [name for name, _ in named_outputs(out)]
    else:
        output_names = [spec.name for spec in model.outputs]
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation chatter
            warnings.simplefilter("ignore")
            # PRESERVE: the module is in eval mode already, and a torch.export module refuses train()
            torch.onnx.export(model.module, tuple(example.values()), str(path), dynamo=False,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes,
                              training=torch.onnx.TrainingMode.PRESERVE)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: cannot export {model.source} to ONNX: {err}") from None


def _example_inputs(model, where):
    """One sample per input: the real one the runner keeps (model.example), else zeros of the declared shape."""
    import torch

    if model.example is not None:
        arrays = model.example.arrays if isinstance(model.example, Feeds) else {model.input_name: model.example}
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    if not model.input_shape or None in model.input_shape:
        raise ModelError(f"{where}: exporting {model.source} to ONNX needs its input shape; set model.input_shape")
    dtype = getattr(torch, model.input_dtype or "float32")
    return {model.input_name: torch.zeros((1, *model.input_shape), dtype=dtype)}


def _check_installed(providers, where, available=None):
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    for name in providers:
        if name not in available:
            raise BackendError(f"{where}.providers: execution provider {name!r} is not installed; this "
                               f"ONNX Runtime has {', '.join(available)}")
