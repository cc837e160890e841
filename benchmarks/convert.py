"""Classic ML models to ONNX: scikit-learn estimators and pipelines (skl2onnx), LightGBM and XGBoost
models (onnxmltools' converters, registered with skl2onnx so they also convert inside pipelines).

The export is what the backends run; the estimator stays beside it, and every run compares the
export's predictions with the estimator's own `predict` (the runner's cross-check), so a
conversion that changed the model fails the benchmark instead of reporting its figures.

Inputs of the export, by what the estimator was fitted on:
- a NumPy array: one float input `X` [N, n_features_in_], fed from the dataset's features;
- a DataFrame: one float input `X` fed from the fitted columns *by name* (`feature_names_in_`, in
  the fitted order, whatever the order of the table), or, when a ColumnTransformer starts the
  pipeline, one input per column (text columns as strings), as skl2onnx converts column selection.

Classifiers are exported without ZipMap (a label output and a probabilities tensor [N, C], in
`classes_` order), which is also the faster one to fetch per query.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import ModelError, quoted

#: ONNX opsets of the export: ai.onnx.ml 3 is the newest skl2onnx and onnxmltools write
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
#: packages whose types a .skops file may hold (skops refuses anything else unless told to trust it)
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy", "lightgbm", "xgboost")
#: plain containers of the standard library those packages keep their state in
TRUSTED_TYPES = ("collections.OrderedDict",)
FRAMEWORKS = {"sklearn": "scikit-learn", "lightgbm": "LightGBM", "xgboost": "XGBoost"}
INPUT = "X"


def load_estimator(path: Path, where="model.path"):
    """A fitted estimator from .joblib (a pickle: load only files you trust) or .skops (no pickle;
    only scikit-learn, NumPy, SciPy, LightGBM and XGBoost types are accepted)."""
    try:
        if path.suffix == ".skops":
            estimator = _load_skops(path, where)
        else:
            import joblib

            estimator = joblib.load(path)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - pickle and skops raise many types for a bad file
        raise ModelError(f"{where}: {path} is not a loadable {path.suffix} model: {quoted(err)}") from None
    if not hasattr(estimator, "predict"):
        raise ModelError(f"{where}: {path} holds a {type(estimator).__name__}, not a fitted estimator with predict()")
    return estimator


def _load_skops(path, where):
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    refused = [name for name in untrusted if name.split(".")[0] not in TRUSTED_PACKAGES and name not in TRUSTED_TYPES]
    if refused:
        raise ModelError(f"{where}: {path} holds types outside {', '.join(TRUSTED_PACKAGES)}: {', '.join(refused)}; "
                         "the suite loads no other code from a model file (save the estimator without them)")
    return skops.io.load(path, trusted=untrusted)


def framework_of(estimator):
    """scikit-learn, LightGBM or XGBoost: the package of the final estimator (a pipeline's last step)."""
    final = _final_step(estimator)
    return FRAMEWORKS.get(type(final).__module__.split(".")[0], type(final).__module__.split(".")[0])


def _final_step(estimator):
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def _first_step(estimator):
    steps = getattr(estimator, "steps", None)
    return _first_step(steps[0][1]) if steps else estimator


def to_onnx(estimator, dataset, path: Path, source, where="model.path"):
    """Write the ONNX export of `estimator` to `path`; returns the default `data.inputs` binding
    (the fitted columns of input X), or None when the inputs take the dataset as it is."""
    from sklearn.base import is_classifier
    from skl2onnx import convert_sklearn

    _register_boosted_trees()
    initial_types, binding = _initial_types(estimator, dataset)
    options = {id(_final_step(estimator)): {"zipmap": False}} if is_classifier(_final_step(estimator)) else None
    try:
        with warnings.catch_warnings():  # converters' deprecation chatter
            warnings.simplefilter("ignore")
            proto = convert_sklearn(estimator, initial_types=initial_types, options=options, target_opset=TARGET_OPSET)
    except Exception as err:  # noqa: BLE001 - converters raise many types (RuntimeError, MissingShapeCalculator, ...)
        raise ModelError(f"{where}: cannot convert {source} ({type(estimator).__name__}) to ONNX: {quoted(err)}") from None
    path.write_bytes(proto.SerializeToString())
    return binding


def _initial_types(estimator, dataset):
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return [(INPUT, FloatTensorType([None, int(estimator.n_features_in_)]))], None
    names = [str(n) for n in names]
    first = _first_step(estimator)
    if type(first).__name__ == "ColumnTransformer":
        text = _text_columns(first, dataset)
        return [(n, StringTensorType([None, 1]) if n in text else FloatTensorType([None, 1])) for n in names], None
    return [(INPUT, FloatTensorType([None, len(names)]))], {INPUT: names}


def _text_columns(column_transformer, dataset):
    """Columns an encoder fitted on text reads (its categories_ are strings); the fitted model, not
    the data at hand, decides, so data of another type is refused when it is bound."""
    text = set()
    for _, transformer, columns in column_transformer.transformers_:
        steps = [step for _, step in getattr(transformer, "steps", [(None, transformer)])]
        categories = [c for step in steps for c in getattr(step, "categories_", [])]
        if any(np.asarray(c).dtype.kind in "OUS" for c in categories) and isinstance(columns, (list, tuple)):
            text.update(str(c) for c in columns)
    if not text and dataset is not None:  # no encoder says: the data's text columns are text
        text = {name for name, array in getattr(dataset, "columns", {}).items() if array.dtype.kind in "OUS"}
    return text


_REGISTERED = []


def _register_boosted_trees():
    """onnxmltools' LightGBM/XGBoost converters under skl2onnx (once), as skl2onnx documents it."""
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                    convert_lightgbm, options=classifier_options)
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                    convert_lightgbm)
    except ImportError:  # LightGBM is an extra (aifactory-lab[gbm]); without it no model can be one
        pass
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                    convert_xgboost, options=classifier_options)
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                    convert_xgboost)
    except ImportError:
        pass
    _REGISTERED.append(True)
