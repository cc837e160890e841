"""Model loading: ONNX, TorchScript, torch.export archives, Python factories, MLflow model URIs.

A loaded model says what it is (`kind`) and, where the format records it, its per-sample input
shape and dtype; the config fills in what the format does not carry.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ModelError

ONNX_TO_NUMPY = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 2: "uint8", 3: "int8"}


@dataclass
class LoadedModel:
    name: str
    kind: str  # onnx | torchscript | torch_export | torch_module
    source: str  # what the user gave
    path: Path | None  # file on disk (onnx/torchscript/torch_export)
    module: Any = None  # torch.nn.Module-like callable for torch kinds
    input_name: str = "input"
    input_shape: tuple | None = None  # per sample, None entries are dynamic
    input_dtype: str | None = None

    @property
    def is_torch(self):
        return self.kind != "onnx"


def load_model(cfg: ModelConfig, source: str | None = None, where="model.path") -> LoadedModel:
    source = source or cfg.path
    if _is_text_model(source):  # a Hugging Face directory or hf:/DIR (text/hf.py checks it)
        from .text.hf import open_model_dir

        return open_model_dir(cfg, source, where)
    if source.startswith(("models:/", "runs:/")):
        model = _from_mlflow(source, where, cfg)
        if getattr(model, "is_text", False):
            return model
    elif _is_factory(source):
        model = _from_factory(source, where)
    else:
        model = _from_file(Path(source), where)
    model.name = cfg.name or model.name
    if cfg.input_shape:
        model.input_shape = tuple(cfg.input_shape)
    if cfg.input_dtype:
        model.input_dtype = np.dtype(cfg.input_dtype).name
    return model


def _is_text_model(source):
    from .text.hf import is_text_model_source

    return is_text_model_source(source)


def _is_factory(source):
    module, sep, attr = source.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


def _from_file(path: Path, where):
    if not path.exists():
        raise ModelError(f"{where}: {path} does not exist")
    if path.suffix == ".onnx":
        return _onnx(path, where)
    if path.suffix == ".pt2":
        return _torch_export(path, where)
    if path.suffix in (".pt", ".pth", ".torchscript", ".ts"):
        return _torchscript(path, where)
    raise ModelError(f"{where}: {path}: unknown model format {path.suffix!r}; expected .onnx, .pt (TorchScript) "
                     "or .pt2 (torch.export)")


def _onnx(path, where):
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: also checks external data files
        proto = onnx.load(str(path), load_external_data=False)  # the graph is all we read
    except Exception as err:  # noqa: BLE001 - protobuf/onnx raise many types for corrupt files
        raise ModelError(f"{where}: {path} is not a valid ONNX model (corrupt or truncated?): {err}") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{where}: {path} has {len(inputs)} inputs; the benchmark suite runs single-input models")
    if not proto.graph.output:
        raise ModelError(f"{where}: {path} declares no graph output; the benchmark suite reads the first output")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return LoadedModel(
        name=path.stem, kind="onnx", source=str(path), path=path, input_name=inputs[0].name,
        input_shape=tuple(dims[1:]) if dims else None, input_dtype=ONNX_TO_NUMPY.get(tensor.elem_type),
    )


def _torchscript(path, where):
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001
        hint = " (a torch.export archive? name it .pt2)" if _is_export_archive(path) else ""
        raise ModelError(f"{where}: {path} is not a loadable TorchScript model{hint}: {err}") from None
    shape, dtype = _recorded_signature(module)
    return LoadedModel(name=path.stem, kind="torchscript", source=str(path), path=path, module=module.eval(),
                       input_shape=shape, input_dtype=dtype)


def _is_export_archive(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in archive.namelist())
    except Exception:  # noqa: BLE001 - only a hint; a damaged zip raises many types (bad UTF-8 names, EOF)
        return False


def _recorded_signature(module):
    """Our reference models record their sample shape as attributes; other TorchScript files do not."""
    shape = getattr(module, "aif_input_shape", None)
    dtype = getattr(module, "aif_input_dtype", None)
    return (tuple(shape) if shape else None), (dtype or None)


def _torch_export(path, where):
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: {path} is not a loadable torch.export archive: {err}") from None
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = program.graph_signature.user_inputs
    shape = dtype = None
    for node in placeholders:
        if node.name in user_inputs and "val" in node.meta:
            val = node.meta["val"]
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)[1:]
            dtype = str(val.dtype).removeprefix("torch.")
            break
    return LoadedModel(name=path.stem, kind="torch_export", source=str(path), path=path,
                       module=program.module(), input_shape=shape, input_dtype=dtype)


def _from_factory(source, where):
    module_name, attr = source.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(f"{where}: cannot import factory {source!r}: {err}") from None
    try:
        module = factory()
    except Exception as err:  # noqa: BLE001 - the user's factory
        raise ModelError(f"{where}: factory {source!r} raised {type(err).__name__}: {err}") from err
    if not callable(module):
        raise ModelError(f"{where}: factory {source!r} returned {type(module).__name__}, expected a torch.nn.Module")
    module = _eval(module)
    shape, dtype = _recorded_signature(module)
    return LoadedModel(name=attr, kind="torch_module", source=source, path=None, module=module,
                       input_shape=shape, input_dtype=dtype)


def _eval(module):
    """Inference mode for modules that have one (a torch.export module refuses eval())."""
    try:
        module.eval()
    except (AttributeError, NotImplementedError):
        pass
    return module


def _from_mlflow(uri, where, cfg=None):
    """Download the model's artifacts and load it by flavor (onnx file, or the pytorch flavor)."""
    import mlflow
    import yaml

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # noqa: BLE001 - MlflowException, connection errors
        raise ModelError(f"{where}: cannot fetch MLflow model {uri}: {err}") from None
    mlmodel = local / "MLmodel"
    if not mlmodel.exists():
        raise ModelError(f"{where}: {uri} is not an MLflow model (no MLmodel file)")
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    name = uri.rstrip("/").split("/")[1] if uri.startswith("models:/") else local.name
    if "transformers" in flavors:  # a Hugging Face model logged with mlflow.transformers
        return _from_mlflow_transformers(local, flavors["transformers"], uri, cfg.name or name, where, cfg)
    if "onnx" in flavors:
        model = _onnx(local / flavors["onnx"].get("data", "model.onnx"), where)
    elif "pytorch" in flavors:
        import mlflow.pytorch

        module = _eval(mlflow.pytorch.load_model(str(local), map_location="cpu"))
        shape, dtype = _recorded_signature(module)
        model = LoadedModel(name=name, kind="torch_module", source=uri, path=None, module=module,
                            input_shape=shape, input_dtype=dtype)
    else:
        raise ModelError(f"{where}: {uri} has flavors {', '.join(flavors) or 'none'}; expected onnx, pytorch "
                         "or transformers")
    _apply_mlflow_signature(model, local)
    model.name, model.source = name, uri
    return model


def _from_mlflow_transformers(local, flavor, uri, name, where, cfg):
    import dataclasses

    from .text.hf import mlflow_model_dirs, open_model_dir

    model_dir, tokenizer_dir = mlflow_model_dirs(local, flavor)
    task = cfg.task if cfg.task != "auto" else _task_of(flavor.get("task"))
    model = open_model_dir(dataclasses.replace(cfg, path=str(model_dir), task=task), str(model_dir), where,
                           cfg.tokenizer or tokenizer_dir)
    model.name, model.source = name, uri
    return model


def _task_of(mlflow_task):
    """MLflow records the pipeline task (text-generation, text-classification, feature-extraction)."""
    from .layout import TEXT_TASKS

    return mlflow_task if mlflow_task in TEXT_TASKS else "auto"


def _apply_mlflow_signature(model, local):
    if model.input_shape:
        return
    try:
        from mlflow.models import Model

        signature = Model.load(str(local)).signature
        spec = signature.inputs.inputs[0] if signature and signature.inputs else None
        if spec is not None and getattr(spec, "shape", None):
            model.input_shape = tuple(d if d > 0 else None for d in spec.shape[1:])
            model.input_dtype = np.dtype(spec.type).name
    except Exception:  # noqa: BLE001 - the signature is optional; config may still declare it
        pass
