"""Model loading: ONNX, TorchScript, torch.export archives, Python factories, MLflow model URIs,
scikit-learn / LightGBM / XGBoost estimators (.joblib, .skops; converted to ONNX, convert.py).

A loaded model says what it is (`kind`), its named inputs and outputs (`signature.TensorSpec`)
where the format records them, which output is scored (`output`), and who can tell what it
predicts (`own_output`: the framework's own predictions the cross-check compares with); the
config fills in what the format does not carry.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ModelError, quoted
from .signature import (LABELS, MAP_SEQUENCE, OTHER, Feeds, OutputChoice, TensorSpec, choose_output, label_array,
                        named_outputs, output_array, spec_of)

ONNX_TO_NUMPY = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool",
                 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 12: "uint32", 13: "uint64", 8: "string"}
ESTIMATOR_SUFFIXES = (".joblib", ".skops")
#: ops a class label passes through unchanged on its way to a label output
LABEL_PASSTHROUGH = {"Identity", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten"}


@dataclass
class LoadedModel:
    name: str
    kind: str  # onnx | torchscript | torch_export | torch_module | sklearn (an estimator, until converted)
    source: str  # what the user gave
    path: Path | None  # file on disk (onnx/torchscript/torch_export; a converted estimator's export)
    module: Any = None  # torch.nn.Module-like callable for torch kinds
    input_name: str = "input"
    input_shape: tuple | None = None  # per sample, None entries are dynamic (the first input's)
    input_dtype: str | None = None
    #: every input, in the order the model takes them (one for single-input models)
    inputs: list = field(default_factory=list)
    #: every output; None until a torch module has run once (describe_torch_outputs)
    outputs: list | None = None
    #: the output that is scored, and why (signature.choose_output)
    output: OutputChoice | None = None
    #: whose predictions the cross-check compares with: onnx, torch, scikit-learn, LightGBM, XGBoost
    framework: str = "onnx"
    estimator: Any = None  # the original scikit-learn/LightGBM/XGBoost estimator of a converted model
    #: default `data.inputs` (a converted estimator's single input reads its fitted columns by name)
    input_columns: dict | None = None
    #: one real sample of every input (the torch -> ONNX export traces with it)
    example: Any = None
    _workdir: Any = None  # holds a converted export on disk as long as the model lives
    _cpu_session: Any = None  # cpu_session(): the file on ONNX Runtime's CPU provider, made once

    @property
    def is_torch(self):
        return self.kind not in ("onnx", "sklearn")


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
    _declare_first_input(model)
    if model.outputs is not None:
        choose_scored_output(model, cfg)
    return model


def _declare_first_input(model):
    """The first input's spec carries model.input_shape/input_dtype (the format's, or the config's)."""
    if not model.inputs:
        model.inputs = [TensorSpec(model.input_name)]
    first = model.inputs[0]
    shape = (None, *model.input_shape) if model.input_shape else first.shape
    model.inputs[0] = TensorSpec(first.name, model.input_dtype or first.dtype, shape, first.kind)
    model.input_name = model.inputs[0].name


def choose_scored_output(model, cfg: ModelConfig):
    """model.output by config or rule, with the class of each score column where it is known."""
    choice = choose_output(model.outputs, cfg.output, model.source)
    classes = cfg.classes
    if classes is None and model.estimator is not None:
        classes = _estimator_classes(model.estimator)
    if classes is None and model.kind == "onnx":
        classes = graph_classes(model.path, choice)
    model.output = choice.with_classes(classes)
    return model.output
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
    if path.suffix in ESTIMATOR_SUFFIXES:
        from .convert import load_estimator

        return _from_estimator(load_estimator(path, where), path.stem, str(path), path)
    raise ModelError(f"{where}: {path}: unknown model format {path.suffix!r}; expected .onnx, .pt (TorchScript), "
                     ".pt2 (torch.export), or a scikit-learn/LightGBM/XGBoost model as .joblib or .skops")


def _from_estimator(estimator, name, source, path=None):
    from .convert import framework_of

    return LoadedModel(name=name, kind="sklearn", source=source, path=path, framework=framework_of(estimator),
                       estimator=estimator)


def _onnx(path, where):
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: also checks external data files
        proto = onnx.load(str(path), load_external_data=False)  # the graph is all we read
    except Exception as err:  # noqa: BLE001 - protobuf/onnx raise many types for corrupt files
        raise ModelError(f"{where}: {path} is not a valid ONNX model (corrupt or truncated?): {err}") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [onnx_spec(i) for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        raise ModelError(f"{where}: {path} declares no graph input")
    if not proto.graph.output:
        raise ModelError(f"{where}: {path} declares no graph output; the benchmark suite scores one of them")
    first = inputs[0]
    return LoadedModel(
        name=path.stem, kind="onnx", source=str(path), path=path, input_name=first.name,
        input_shape=first.sample_shape if first.shape else None, input_dtype=first.dtype, inputs=inputs,
        outputs=[onnx_spec(o) for o in proto.graph.output],
    )


def onnx_spec(value_info) -> TensorSpec:
    """An ONNX graph input/output as a TensorSpec (ZipMap's sequence of maps has a kind of its own)."""
    kind = value_info.type.WhichOneof("value")
    if kind == "tensor_type":
        tensor = value_info.type.tensor_type
        shape = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
                 if tensor.HasField("shape") else None)
        return TensorSpec(value_info.name, ONNX_TO_NUMPY.get(tensor.elem_type), shape)
    if kind == "sequence_type" and value_info.type.sequence_type.elem_type.WhichOneof("value") == "map_type":
        return TensorSpec(value_info.name, "float32", None, MAP_SEQUENCE)
    return TensorSpec(value_info.name, kind, None, OTHER)


def graph_classes(path, choice: OutputChoice):
    """The class of each score column as the graph records it: ZipMap's labels, the labels a label
    output is looked up from (a constant ArrayFeatureExtractor reads), or a classifier node's."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {name: node for node in graph.node for name in node.output}
    constants = {i.name: i for i in graph.initializer}
    constants.update({node.output[0]: a.t for node in graph.node if node.op_type == "Constant"
                      for a in node.attribute if a.name == "value"})
    zipmap = producer.get(choice.name)
    if zipmap is not None and zipmap.op_type == "ZipMap":
        return _classlabels(zipmap)
    for start in (choice.label_output, choice.name if choice.role == LABELS else None):
        name = start
        for _ in range(8):  # a few pass-through ops at most between the lookup and the output
            node = producer.get(name)
            if node is None:
                break
            if _classlabels(node) is not None:
                return _classlabels(node)
            if node.op_type == "ArrayFeatureExtractor" and node.input[0] in constants:
                return _constant_labels(constants[node.input[0]])
            if node.op_type not in LABEL_PASSTHROUGH:
                break
            name = node.input[0]
    recorded = {_classlabels(node) for node in graph.node} - {None}
    return next(iter(recorded)) if len(recorded) == 1 else None


def _classlabels(node):
    for attribute in node.attribute:
        if attribute.name.startswith("classlabels_"):
            if attribute.strings:
                return tuple(s.decode() for s in attribute.strings)
            return tuple(int(i) for i in attribute.ints)
    return None


def _constant_labels(tensor):
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor).ravel()
    return tuple(v.decode() if isinstance(v, bytes) else (str(v) if values.dtype == object else v.item())
                 for v in values)


def _torchscript(path, where):
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001
        hint = " (a torch.export archive? name it .pt2)" if _is_export_archive(path) else ""
        raise ModelError(f"{where}: {path} is not a loadable TorchScript model{hint}: {err}") from None
    return _torch_model(path.stem, "torchscript", str(path), path, module.eval())


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


def _torch_model(name, kind, source, path, module, inputs=None):
    """A torch model: inputs named as its forward() names them; outputs known once it has run."""
    shape, dtype = _recorded_signature(module)
    inputs = inputs or [TensorSpec(n) for n in _forward_arguments(module)] or [TensorSpec("input")]
    if len(inputs) == 1 and inputs[0].shape is not None:
        shape, dtype = shape or inputs[0].sample_shape, dtype or inputs[0].dtype
    return LoadedModel(name=name, kind=kind, source=source, path=path, module=module, input_name=inputs[0].name,
                       input_shape=shape, input_dtype=dtype, inputs=inputs, framework="torch")


def _forward_arguments(module):
    """The required arguments of forward(), in order: the names of the model's inputs."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        return [a.name for a in schema.arguments[1:] if a.default_value is None]
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return []
    return [p.name for p in parameters if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _torch_export(path, where):
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: {path} is not a loadable torch.export archive: {err}") from None
    user_inputs = program.graph_signature.user_inputs
    inputs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            shape = (None, *(d if isinstance(d, int) else None for d in val.shape[1:])) if val is not None else None
            dtype = str(val.dtype).removeprefix("torch.") if val is not None else None
            inputs.append(TensorSpec(node.name, dtype, shape))
    return _torch_model(path.stem, "torch_export", str(path), path, program.module(), inputs)


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
    return _torch_model(attr, "torch_module", source, None, _eval(module))


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

        model = _torch_model(name, "torch_module", uri, None,
                             _eval(mlflow.pytorch.load_model(str(local), map_location="cpu")))
    elif "sklearn" in flavors:
        import mlflow.sklearn

        model = _from_estimator(mlflow.sklearn.load_model(str(local)), name, uri)
    else:
        raise ModelError(f"{where}: {uri} has flavors {', '.join(flavors) or 'none'}; expected onnx, pytorch, "
                         "sklearn or transformers")
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


# -- what a model computes, as its own framework computes it ---------------------------------------

def describe_torch_outputs(model: LoadedModel, batch):
    """Run a torch model once on a few real samples (CPU, its own precision) to name its outputs:
    one tensor is `output`, a tuple `output_0`, `output_1`, ..., a dict (or a Hugging Face
    ModelOutput) by key, a namedtuple by field."""
    out = _torch_call(model.module, batch)
    model.outputs = [spec_of(name, value) for name, value in named_outputs(out)]
    model.example = batch[:1]
    return model.outputs


def _torch_call(module, batch):
    import torch

    arrays = batch.arrays.values() if isinstance(batch, Feeds) else [batch]
    with torch.inference_mode():
        return module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))


def _torch_output(out, choice):
    value = out[choice.name] if isinstance(out, dict) else named_outputs(out)[choice.index][1]
    value = value.detach().cpu()
    return value.float().numpy() if value.is_floating_point() else value.numpy()


@dataclass
class OwnOutput:
    """The model's predictions on some samples, as its own framework makes them."""

    values: np.ndarray
    #: True: predicted labels/values as they are (estimator.predict, a label output); False: the
    #: scored output as the framework computes it, read into predictions by the suite's rules
    is_prediction: bool
    source: str  # who made them, for messages and the aif.crosscheck tag
    #: the scored output on the same samples, as the framework's CPU path computes it (its width
    #: decides the task); for an estimator, its export on ONNX Runtime's CPU provider
    scored: np.ndarray | None = None


def own_output(model: LoadedModel, inputs, batch_size=256) -> OwnOutput:
    """What the model's framework itself predicts for `inputs` (bound to the model, host memory):
    the estimator's predict() for a converted estimator; the label output, else the scored output,
    of the ONNX file on ONNX Runtime's CPU provider; the torch module itself on the CPU."""
    if model.kind != "onnx":
        choice = model.output
        values = np.concatenate([_torch_output(_torch_call(model.module, inputs[i:i + batch_size]), choice)
                                 for i in range(0, len(inputs), batch_size)])
        return OwnOutput(values, False, f"output {choice.name!r} of the torch module on the CPU", values)
    scored, labels = _onnx_cpu_outputs(model, inputs, batch_size)
    if model.estimator is not None:
        predictions = np.asarray(model.estimator.predict(estimator_input(model, inputs)))
        return OwnOutput(predictions, True, f"{model.framework} {type(model.estimator).__name__}.predict", scored)
    if labels is not None:
        return OwnOutput(labels, True, f"the model's own label output {model.output.label_output!r} on ONNX "
                                       "Runtime's CPU provider", scored)
    return OwnOutput(scored, False, f"output {model.output.name!r} of the ONNX model on ONNX Runtime's CPU provider",
                     scored)


def _onnx_cpu_outputs(model, inputs, batch_size):
    """The scored output, and the label output beside scores where there is one, on the CPU provider."""
    choice = model.output
    label = choice.label_output if choice.role != LABELS else None
    names = [choice.name, *([label] if label else [])]
    session = cpu_session(model)
    feeds = inputs.arrays if isinstance(inputs, Feeds) else {model.input_name: inputs}
    parts = [session.run(names, {k: v[i:i + batch_size] for k, v in feeds.items()})
             for i in range(0, len(inputs), batch_size)]
    scored = np.concatenate([output_array(p[0], choice) for p in parts])
    labels = np.concatenate([label_array(p[1]) for p in parts]) if label else None
    return scored, labels


def cpu_session(model):
    """The model file on ONNX Runtime's CPU provider, default options (one per model)."""
    import onnxruntime as ort

    session = model._cpu_session
    if session is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelError(f"model.path: ONNX Runtime cannot load {model.source}: {quoted(err)}") from None
        model._cpu_session = session
    return session


def estimator_input(model, inputs):
    """Bound inputs as the estimator was fitted on them: a DataFrame of its columns where it was
    fitted on one (feature_names_in_), else a float64 array (the float32 values the export sees)."""
    names = getattr(model.estimator, "feature_names_in_", None)
    if isinstance(inputs, Feeds):
        import pandas as pd

        return pd.DataFrame({name: _as_column(array) for name, array in inputs.arrays.items()})
    x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    if names is not None:
        import pandas as pd

        return pd.DataFrame(x, columns=list(names))
    return x


def _as_column(array):
    array = array.reshape(len(array))
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _estimator_classes(estimator):
    classes = getattr(estimator, "classes_", None)
    if classes is None or np.ndim(classes) != 1:  # multi-output estimators keep one array per output
        return None
    return tuple(c.item() if hasattr(c, "item") else str(c) for c in classes)


def convert_estimator(model: LoadedModel, dataset, cfg: ModelConfig, where="model.path"):
    """A scikit-learn/LightGBM/XGBoost estimator exported to ONNX (in a folder that lives as long
    as the model), so the backends run the export and the cross-check compares it with the
    estimator's own predict()."""
    from .convert import to_onnx

    model._workdir = tempfile.TemporaryDirectory(prefix="aif-sklearn-")
    path = Path(model._workdir.name) / f"{model.name}.onnx"
    input_columns = to_onnx(model.estimator, dataset, path, model.source, where)
    exported = _onnx(path, where)
    model.kind, model.path = "onnx", path
    model.inputs, model.outputs, model.input_columns = exported.inputs, exported.outputs, input_columns
    model.input_name, model.input_shape, model.input_dtype = exported.input_name, exported.input_shape, exported.input_dtype
    choose_scored_output(model, cfg)
    return model
