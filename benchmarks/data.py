"""Datasets: bundled scikit-learn sets (no download), NPZ, CSV/Parquet, image folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import DataError

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
    x: np.ndarray  # (N, *sample_shape)
    y: np.ndarray | None  # (N,) labels or targets; None for latency-only runs
    task: str  # classification | regression | none

    def __len__(self):
        return len(self.x)

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
        return Dataset(self.name, np.ascontiguousarray(x), self.y, self.task)


def load_dataset(cfg: DataConfig) -> Dataset:
    source = cfg.source
    if source.startswith("sklearn:"):
        x, y, task, name = _sklearn(source)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data.source: {source} does not exist")
        if path.is_dir():
            x, y = _image_folder(path, cfg)
            task = "classification"
        elif path.suffix == ".npz":
            x, y = _npz(path, cfg)
            task = None
        elif path.suffix in (".csv", ".parquet", ".pq"):
            x, y = _table(path, cfg)
            task = None
        else:
            raise DataError(f"data.source: {source}: unsupported format; expected sklearn:NAME, .npz, .csv, "
                            ".parquet or an image folder")
        name = path.name
    if cfg.limit:
        x, y = x[: cfg.limit], (y[: cfg.limit] if y is not None else None)
    if y is not None and len(y) != len(x):
        raise DataError(f"data.source {source}: {len(x)} samples but {len(y)} labels")
    task = _task(cfg.task, task, y)
    if task == "none":
        y = None
    return Dataset(cfg.name or name, np.ascontiguousarray(x), y, task)


def _task(requested, known, y):
    if requested != "auto":
        return requested if y is not None or requested == "none" else "none"
    if y is None:
        return "none"
    if known:
        return known
    return "classification" if np.issubdtype(y.dtype, np.integer) else "regression"


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
    return x, y, task, source


def _npz(path, cfg):
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a bad archive
        raise DataError(f"data.source: {path} is not a readable NPZ archive: {err}") from None
    features = cfg.features or "x"
    if features not in archive:
        raise DataError(f"data.features: {path} has no array {features!r}; it has {', '.join(archive.files)}")
    x = archive[features]
    y = None
    label = cfg.label or ("y" if "y" in archive else None)
    if label:
        if label not in archive:
            raise DataError(f"data.label: {path} has no array {label!r}; it has {', '.join(archive.files)}")
        y = archive[label]
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return x, y


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
        y = frame.pop(cfg.label).to_numpy()
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataError(f"data.source: {path} column {non_numeric[0]!r} is not numeric; features must be numbers")
    return frame.to_numpy(dtype=np.float32), y


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
