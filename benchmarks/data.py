"""Datasets: bundled scikit-learn sets (no download), NPZ, CSV/Parquet, image folders.

A dataset has default features `x` (what a single-input model reads) and its named arrays
`columns` (NPZ keys, table columns, a bundled set's feature names). `Dataset.bind` feeds a
model's inputs by name from them: `data.inputs: {input: column or [columns]}` where the names
differ, dtype and shape checked per input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import DataError
from .signature import STRING, Feeds, describe_all

SKLEARN_DATASETS = {
    # name -> (loader name, task)
    "digits": ("load_digits", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "iris": ("load_iris", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class Dataset:
    name: str
    x: np.ndarray | Feeds | None  # (N, *sample_shape); Feeds once bound to a multi-input model; None: no default features
    y: np.ndarray | None  # (N,) labels or targets ((N, C) multi-label); None for latency-only runs
    task: str  # classification | multilabel | regression | none
    #: every named array of the source (label aside): NPZ keys, table columns, a bundled set's feature names
    columns: dict = field(default_factory=dict)
    #: why `x` is None (a table with text columns, an NPZ without the features key), for the error
    no_features: str | None = None

    def __len__(self):
        if self.x is not None:
            return len(self.x)
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def fit_to(self, shape, dtype, model_name):
        """Reshape/cast samples for a model input; same element count reshapes (digits 64 -> 1x8x8)."""
        shape = tuple(shape) if shape else None
        x = self.x
        if shape and None not in shape and tuple(x.shape[1:]) != shape:
            if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
                raise DataError(f"data.source {self.name}: samples have shape {tuple(x.shape[1:])} but model "
                                f"{model_name} expects {shape} per sample")
            x = x.reshape((len(x), *shape))
        if dtype is not None and x.dtype != np.dtype(dtype):
            if np.issubdtype(np.dtype(dtype), np.integer) and np.issubdtype(x.dtype, np.floating):
                raise DataError(f"data.source {self.name}: float samples but model {model_name} expects {dtype} input")
            x = x.astype(dtype)
        return Dataset(self.name, np.ascontiguousarray(x), self.y, self.task, self.columns)

    def bind(self, inputs, mapping=None, model_name="model", where="data.inputs") -> Dataset:
        """This dataset fed to a model's inputs (TensorSpecs, in the model's order), by name.

        Each input comes from `mapping[input]` (a column/key, or a list of columns stacked as
        features) if given, else, for a single-input model, from the default features `x` (where
        the source has them), else from the column of the input's own name. Dtype and per-sample shape are checked (and
        safely converted) input by input. `x` becomes one array, or a `Feeds` of several."""
        mapping = dict(mapping or {})
        names = [spec.name for spec in inputs]
        extra = sorted(set(mapping) - set(names))
        if extra:
            raise DataError(f"{where}: model {model_name} has no input {extra[0]!r}; its inputs are "
                            f"{describe_all(inputs)}")
        if len(inputs) == 1 and inputs[0].name not in mapping and (self.x is not None or inputs[0].name not in self.columns):
            features = self._default_features(model_name)
            return self._with_x(self._fit_input(features, inputs[0], model_name, f"data.source {self.name}"))
        arrays = {spec.name: self._fit_input(self._source_of(spec, mapping, inputs, model_name), spec, model_name)
                  for spec in inputs}
        return self._with_x(next(iter(arrays.values())) if len(arrays) == 1 else Feeds(arrays))

    def _with_x(self, x):
        return Dataset(self.name, x, self.y, self.task, self.columns)

    def _default_features(self, model_name):
        if self.x is None:
            raise DataError(f"data.source {self.name}: no features for model {model_name}: {self.no_features}; "
                            "name the columns of its input with data.inputs: {INPUT: [COLUMN, ...]}")
        return self.x

    def _source_of(self, spec, mapping, inputs, model_name):
        source = mapping.get(spec.name, spec.name)
        wanted = source if isinstance(source, list) else [source]
        missing = [c for c in wanted if c not in self.columns]
        if missing:
            mapped = spec.name in mapping
            raise DataError(
                f"{'data.inputs.' + spec.name if mapped else 'data.inputs'}: model {model_name} needs input "
                f"{spec.describe()}, but dataset {self.name} has no array or column {missing[0]!r} (it has "
                f"{', '.join(self.columns) or 'none'}); the model's inputs are {describe_all(inputs)}"
                + ("" if mapped else f"; map it with data.inputs: {{{spec.name}: COLUMN}}"))
        if isinstance(source, list):
            return np.stack([self.columns[c] for c in source], axis=1)
        return self.columns[source]

    def _fit_input(self, array, spec, model_name, where=None):
        """One input's array in the dtype and per-sample shape the model declares (where it declares them)."""
        array = np.asarray(array)
        what = f"{where or 'data.inputs.' + spec.name}: model {model_name} input {spec.describe()}"
        shape = spec.sample_shape
        if shape is not None and None not in shape and tuple(array.shape[1:]) != shape:
            if int(np.prod(array.shape[1:])) != int(np.prod(shape)):
                raise DataError(f"{what} takes samples of shape {shape}; the data's are {tuple(array.shape[1:])}")
            array = array.reshape((len(array), *shape))
        return np.ascontiguousarray(_cast(array, spec.dtype, what))


def _cast(array, dtype, what):
    """Conversions that keep every value: numbers to wider or float types, text to text; others refused."""
    is_text = array.dtype.kind in "OUS"
    if dtype is None:
        return array
    if dtype == STRING:
        if not is_text:
            raise DataError(f"{what} takes text; the data is {array.dtype}")
        return array.astype(object)
    if is_text:
        raise DataError(f"{what} takes {dtype} numbers; the data is text")
    want = np.dtype(dtype)
    if array.dtype == want:
        return array
    if np.issubdtype(want, np.integer) and array.dtype.kind == "f":
        raise DataError(f"{what} takes {dtype}; the data is {array.dtype} (float samples into an integer input)")
    return array.astype(want)


def load_dataset(cfg: DataConfig) -> Dataset:
    source = cfg.source
    columns, no_features = {}, None
    if source.startswith("sklearn:"):
        x, y, task, name, columns = _sklearn(source)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data.source: {source} does not exist")
        if path.is_dir():
            x, y = _image_folder(path, cfg)
            task = "classification"
        elif path.suffix == ".npz":
            x, y, columns, no_features = _npz(path, cfg)
            task = None
        elif path.suffix in (".csv", ".parquet", ".pq"):
            x, y, columns, no_features = _table(path, cfg)
            task = None
        else:
            raise DataError(f"data.source: {source}: unsupported format; expected sklearn:NAME, .npz, .csv, "
                            ".parquet or an image folder")
        name = path.name
    if cfg.limit:
        x, y = (x[: cfg.limit] if x is not None else None), (y[: cfg.limit] if y is not None else None)
        columns = {key: array[: cfg.limit] for key, array in columns.items()}
    n = len(x) if x is not None else len(next(iter(columns.values()))) if columns else 0
    if y is not None and len(y) != n:
        raise DataError(f"data.source {source}: {n} samples but {len(y)} labels")
    for key, array in columns.items():
        if len(array) != n:
            raise DataError(f"data.source {source}: array {key!r} has {len(array)} samples, the others {n}")
    task = _task(cfg.task, task, y)
    if task == "none":
        y = None
    x = np.ascontiguousarray(x) if x is not None else None
    return Dataset(cfg.name or name, x, y, task, columns, no_features)


def _task(requested, known, y):
    if requested != "auto":
        return requested if y is not None or requested == "none" else "none"
    if y is None:
        return "none"
    if known:
        return known
    # a first guess from the labels alone; the runner settles the task from the scored output
    return "classification" if y.dtype.kind in "iubUSO" or y.ndim == 2 else "regression"


def _sklearn(source):
    import sklearn.datasets

    name = source.split(":", 1)[1]
    if name not in SKLEARN_DATASETS:
        raise DataError(f"data.source: unknown bundled dataset {name!r}; expected sklearn: followed by one of "
                        f"{', '.join(SKLEARN_DATASETS)}")
    loader, task = SKLEARN_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64 if task == "classification" else np.float32)
    # by feature name too: a model fitted on the bundle's DataFrame (as_frame=True) reads its columns by name
    columns = {str(feature): x[:, i] for i, feature in enumerate(bunch.feature_names)}
    return x, y, task, source, columns


def _npz(path, cfg):
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a bad archive
        raise DataError(f"data.source: {path} is not a readable NPZ archive: {err}") from None
    features = cfg.features or "x"
    if cfg.features and features not in arrays:
        raise DataError(f"data.features: {path} has no array {features!r}; it has {', '.join(arrays)}")
    y = None
    label = cfg.label or ("y" if "y" in arrays else None)
    if label:
        if label not in arrays:
            raise DataError(f"data.label: {path} has no array {label!r}; it has {', '.join(arrays)}")
        y = arrays.pop(label)
    columns = {key: (a.astype(np.float32) if a.dtype == np.float64 else a) for key, a in arrays.items()}
    x = columns.get(features)
    no_features = None if x is not None else f"{path} has no array {features!r} (it has {', '.join(arrays)})"
    return x, y, columns, no_features


def _table(path, cfg):
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"data.source: {path} cannot be read: {err}") from None
    y = None
    if cfg.label:
        if cfg.label not in frame.columns:
            raise DataError(f"data.label: {path} has no column {cfg.label!r}; columns are {', '.join(frame.columns)}")
        y = _column_array(frame.pop(cfg.label), features=False)
    columns = {str(name): _column_array(frame[name]) for name in frame.columns}
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:  # fine for a model that names its inputs; a single-input model gets this reason
        return None, y, columns, f"{path} column {non_numeric[0]!r} is not numeric; features must be numbers"
    return frame.to_numpy(dtype=np.float32), y, columns, None


def _column_array(series, features=True):
    """A table column as numpy: numbers as they are (float64 features as float32, like every source's
    features; labels exact), text as str (predictions.npz then needs no pickle)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        array = series.to_numpy()
        return array.astype(np.float32) if features and array.dtype == np.float64 else array
    return series.astype(str).to_numpy().astype(str)


def _image_folder(path, cfg):
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"data.source: {path} has no class sub-folders (expected {path}/CLASS/IMAGE.png)")
    size = tuple(cfg.image_size) if cfg.image_size else None
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                image = Image.open(file).convert("L" if cfg.grayscale else "RGB")
            except Exception as err:  # noqa: BLE001
                raise DataError(f"data.source: {file} is not a readable image: {err}") from None
            if size:
                image = image.resize((size[1], size[0]))
            elif images and image.size != images[0].shape[-1:-3:-1]:
                raise DataError(f"data.image_size: images differ in size ({file}); set data.image_size: [H, W]")
            array = np.asarray(image, dtype=np.float32) / 255.0
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"data.source: {path} contains no images")
    return np.stack(images), np.asarray(labels, dtype=np.int64)
