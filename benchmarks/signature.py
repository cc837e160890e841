"""A model's inputs and outputs as the suite reads them: specs, the rule that picks the scored
output, and batches of named inputs.

Every model format describes its inputs and outputs here the same way (`TensorSpec`): ONNX graphs
from their declared types, torch modules from their forward signature and one observed call,
converted scikit-learn models from their ONNX export. The suite then

- feeds each input by name (`data.Dataset.bind`; several inputs travel as one `Feeds` batch),
- scores one output, picked by `choose_output`: `model.output: NAME` if given, else class scores
  over a label output, else the label output itself; anything else is refused with the outputs
  listed, because a figure computed from the wrong output is worse than no figure,
- reads that output into an array (`output_array`: a ZipMap's sequence of {class: probability}
  maps becomes an [N, C] array in class order).

Only numpy is imported: backends, data loading and the Hugging Face backend share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import ModelError

#: what a scored output holds
SCORES = "scores"  # a float tensor: class scores/probabilities [N, C], a logit or a regression value [N, 1]
MAPS = "probability maps"  # a sequence of {class: probability} maps, one per sample (skl2onnx's ZipMap)
LABELS = "labels"  # an integer, string or bool tensor: the model's own predicted labels [N] (multi-label [N, C])

TENSOR, MAP_SEQUENCE, OTHER = "tensor", "map_sequence", "other"
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
STRING = "string"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, element type and shape (batch first; None where dynamic)."""

    name: str
    dtype: str | None = None  # numpy dtype name, "string" for text; None where the format does not say
    shape: tuple | None = None  # (batch, ...) with None for dynamic dims; None when the rank is unknown
    kind: str = TENSOR  # tensor | map_sequence (ZipMap) | other (sequences, maps, optionals)

    @property
    def rank(self):
        return None if self.shape is None else len(self.shape)

    @property
    def sample_shape(self):
        """Per-sample shape (no batch dim), or None when unknown."""
        return None if self.shape is None else tuple(self.shape[1:])

    @property
    def is_float(self):
        return self.kind == TENSOR and self.dtype in FLOAT_DTYPES

    @property
    def is_label_like(self):
        return self.kind == TENSOR and self.dtype is not None and not self.is_float

    def describe(self):
        if self.kind == MAP_SEQUENCE:
            return f"{self.name} (a {{class: probability}} map per sample)"
        if self.kind == OTHER:
            return f"{self.name} ({self.dtype or 'not a tensor'})"
        dims = "?" if self.shape is None else "[" + ", ".join("N" if i == 0 else str(d or "?")
                                                                for i, d in enumerate(self.shape)) + "]"
        return f"{self.name} ({self.dtype or '?'} {dims})"


def describe_all(specs):
    return ", ".join(spec.describe() for spec in specs) or "none"


@dataclass(frozen=True)
class OutputChoice:
    """The output a backend fetches and accuracy scores, and why that one."""

    name: str
    index: int  # position among the model's outputs
    role: str  # SCORES | MAPS | LABELS
    reason: str
    classes: tuple | None = None  # the class of each score column, where the model (or config) says
    label_output: str | None = None  # the model's own label output beside scores (the cross-check reads it)

    def with_classes(self, classes):
        return replace(self, classes=None if classes is None else tuple(classes))


def role_of(spec: TensorSpec):
    if spec.kind == MAP_SEQUENCE:
        return MAPS
    return LABELS if spec.is_label_like else SCORES


def choose_output(outputs, requested=None, model="model", where="model.output") -> OutputChoice:
    """The output to score: `requested` by name, else by rule (module docstring); refuse when unsure."""
    outputs = list(outputs)
    if requested is not None:
        for index, spec in enumerate(outputs):
            if spec.name == requested:
                return OutputChoice(spec.name, index, role_of(spec), reason=where)
        raise ModelError(f"{where}: model {model} has no output {requested!r}; its outputs are "
                         f"{describe_all(outputs)}")
    if not outputs:
        raise ModelError(f"{where}: model {model} declares no output to score")
    if len(outputs) == 1:
        return OutputChoice(outputs[0].name, 0, role_of(outputs[0]), reason="its only output")
    scores = [i for i, s in enumerate(outputs) if s.kind == MAP_SEQUENCE or (s.is_float and (s.rank or 0) <= 2)]
    labels = [i for i, s in enumerate(outputs) if s.is_label_like and (s.rank or 0) <= 2]
    if len(scores) == 1:
        label = outputs[labels[0]].name if len(labels) == 1 else None
        spec = outputs[scores[0]]
        reason = "class scores over a label output" if label else "the only output shaped like scores [N, C]"
        return OutputChoice(spec.name, scores[0], role_of(spec), reason=reason, label_output=label)
    if not scores and len(labels) == 1:
        spec = outputs[labels[0]]
        return OutputChoice(spec.name, labels[0], LABELS, reason="its label output (the model gives no scores)")
    if len(scores) > 1:
        why = f"{len(scores)} outputs could be class scores or values ({', '.join(outputs[i].name for i in scores)})"
    elif len(labels) > 1:
        why = f"{len(labels)} label outputs and no scores"
    else:
        why = "no output is class scores [N, C], a value [N, 1] or labels [N]"
    raise ModelError(f"{where}: cannot tell which output of model {model} to score: {why}. Its outputs are "
                     f"{describe_all(outputs)}. Name the one to score: model.output: NAME (aif bench run --output NAME)")


def output_array(value, choice: OutputChoice) -> np.ndarray:
    """One fetched output as the array accuracy reads: scores float32, labels as labels."""
    if choice.role == MAPS:
        return maps_to_scores(value, choice.classes)
    if choice.role == LABELS:
        return label_array(value)
    return np.asarray(value, dtype=np.float32)


def label_array(value) -> np.ndarray:
    """Predicted labels as numpy; text as str, not object (predictions.npz then needs no pickle)."""
    array = np.asarray(value)
    return array.astype(str) if array.dtype == object else array


def named_outputs(out):
    """A model call's result as (name, value) pairs: one tensor is "output", a tuple or list
    "output_0", "output_1", ..., a dict (a Hugging Face ModelOutput is one) by key, a namedtuple
    by field. The torch -> ONNX export names its graph outputs the same way."""
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items() if v is not None]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return list(zip(out._fields, out))
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out)]
    return [("output", out)]


def maps_to_scores(maps, classes=None) -> np.ndarray:
    """ZipMap's [{class: probability}, ...] -> [N, C] float32, columns in `classes` order."""
    if classes is None:
        classes = list(maps[0]) if len(maps) else []
    return np.array([[row[c] for c in classes] for row in maps], dtype=np.float32).reshape(len(maps), len(classes))


def spec_of(name, value) -> TensorSpec:
    """The spec of one observed output value (a torch tensor or numpy array; anything else is OTHER)."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        return TensorSpec(name, type(value).__name__, None, OTHER)
    shape = tuple(value.shape)
    dtype = str(value.dtype).removeprefix("torch.")
    return TensorSpec(name, "string" if dtype == "object" else dtype, (None, *shape[1:]) if shape else ())


class Feeds:
    """A batch of named model inputs, indexed like one array: every input is sliced alike
    (`feeds[i:i + 1]`, `feeds[index_array]`), so sample libraries and queries need not know
    how many inputs a model has. Iterating order is the model's input order."""

    __slots__ = ("arrays",)

    def __init__(self, arrays):
        self.arrays = dict(arrays)

    def __getitem__(self, index):
        return Feeds({name: array[index] for name, array in self.arrays.items()})

    def __len__(self):
        return len(next(iter(self.arrays.values())))

    @property
    def names(self):
        return list(self.arrays)

    def describe(self):
        return ", ".join(f"{name} {tuple(a.shape[1:])} {getattr(a, 'dtype', '?')}" for name, a in self.arrays.items())


def describe_batch(batch):
    """`shape (64,) (float32)` of one array, or each named input of a Feeds batch."""
    if isinstance(batch, Feeds):
        return f"inputs {batch.describe()}"
    return f"shape {tuple(batch.shape[1:])} ({batch.dtype})"
