"""Models, data, backends, accuracy and bad input, on the shipped reference models."""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics as skm

from aifactory.benchmarks import accuracy as acc
from aifactory.benchmarks import run
from aifactory.benchmarks.backends import create_backend
from aifactory.benchmarks.config import AccuracyConfig, BackendConfig, BenchmarkConfig, DataConfig, ModelConfig
from aifactory.benchmarks.data import load_dataset
from aifactory.benchmarks.errors import AccuracyError, BackendError, ConfigError, DataError, ModelError
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.testing import REFERENCE_MODELS, tiny_config

DIGITS = load_dataset(DataConfig(source="sklearn:digits"))


def outputs(path, kind="torch", n=64, **backend):
    model = load_model(ModelConfig(path=str(path)))
    backend = create_backend(BackendConfig(kind=kind, **backend), model, "backends[0]")
    data = DIGITS.fit_to(model.input_shape, getattr(backend, "input_dtype", None) or model.input_dtype, model.source)
    try:
        return backend.to_numpy(backend.infer(backend.stage(data.x[:n]))), model
    finally:
        backend.close()


# --- models in -------------------------------------------------------------------------------

def test_every_shipped_format_computes_the_same_function():
    reference, _ = outputs(REFERENCE_MODELS / "digits_cnn.pt")
    for path, kind in [(REFERENCE_MODELS / "digits_cnn.pt2", "torch"), (REFERENCE_MODELS / "digits_cnn.onnx", "onnxruntime"),
                       ("aifactory.benchmarks.reference:digits_cnn", "torch")]:
        got, model = outputs(path, kind)
        np.testing.assert_allclose(got, reference, atol=1e-4, err_msg=str(path))
        assert model.input_shape == (1, 8, 8), path
    # and the function is a good digits classifier, not just self-consistent
    assert (reference.argmax(1) == DIGITS.y[:64]).mean() > 0.9


def test_input_signature_is_read_from_the_model():
    onnx = load_model(ModelConfig(path=str(REFERENCE_MODELS / "digits_mlp.onnx")))
    assert (onnx.kind, onnx.input_shape, onnx.input_dtype) == ("onnx", (64,), "float32")
    exported = load_model(ModelConfig(path=str(REFERENCE_MODELS / "digits_mlp.pt2")))
    assert (exported.kind, exported.input_shape, exported.input_dtype) == ("torch_export", (64,), "float32")
    declared = load_model(ModelConfig(path=str(REFERENCE_MODELS / "digits_mlp.onnx"), input_shape=[8, 8]))
    assert declared.input_shape == (8, 8)


@pytest.mark.parametrize("suffix", [".onnx", ".pt", ".pt2"])
def test_truncated_model_files_are_named_in_the_error(tmp_path, suffix):
    source = REFERENCE_MODELS / f"digits_mlp{suffix}"
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 3])
    with pytest.raises(ModelError, match=r"model\.path: .*broken" + suffix.replace(".", r"\.")):
        load_model(ModelConfig(path=str(broken)))


def test_missing_file_unknown_format_and_bad_factory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(ModelConfig(path=str(tmp_path / "nope.onnx")))
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model format '.h5'"):
        load_model(ModelConfig(path=str(tmp_path / "model.h5")))
    with pytest.raises(ModelError, match="cannot import factory 'aifactory.benchmarks.reference:nothing_here'"):
        load_model(ModelConfig(path="aifactory.benchmarks.reference:nothing_here"))


def test_mlflow_model_uri_errors_name_the_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    with pytest.raises(ModelError, match="models:/absent/1"):
        load_model(ModelConfig(path="models:/absent/1"))


# --- data in ---------------------------------------------------------------------------------

def test_npz_csv_parquet_and_image_folder(tmp_path):
    x, y = DIGITS.x[:50], DIGITS.y[:50]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    npz = load_dataset(DataConfig(source=str(tmp_path / "d.npz")))
    assert npz.task == "classification" and np.array_equal(npz.x, x) and np.array_equal(npz.y, y)

    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).assign(target=y)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        table = load_dataset(DataConfig(source=str(tmp_path / name), label="target"))
        assert table.x.shape == (50, 64) and np.array_equal(table.y, y)
    unlabeled = load_dataset(DataConfig(source=str(tmp_path / "d.csv")))
    assert unlabeled.task == "none" and unlabeled.y is None and unlabeled.x.shape == (50, 65)

    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "img" / label / f"{i}.png")
    images = load_dataset(DataConfig(source=str(tmp_path / "img"), image_size=[8, 8]))
    assert images.x.shape == (6, 3, 8, 8) and list(images.y) == [0, 0, 0, 1, 1, 1]


def test_bad_data_is_named(tmp_path):
    np.savez(tmp_path / "short.npz", x=DIGITS.x[:10], y=DIGITS.y[:9])
    with pytest.raises(DataError, match="10 samples but 9 labels"):
        load_dataset(DataConfig(source=str(tmp_path / "short.npz")))
    with pytest.raises(DataError, match="data.features: .* has no array 'inputs'"):
        load_dataset(DataConfig(source=str(tmp_path / "short.npz"), features="inputs"))
    with pytest.raises(DataError, match="unknown bundled dataset 'mnist'"):
        load_dataset(DataConfig(source="sklearn:mnist"))
    wine = load_dataset(DataConfig(source="sklearn:wine"))
    with pytest.raises(DataError, match=r"samples have shape \(13,\) but model .*digits_mlp.onnx expects \(64,\)"):
        wine.fit_to((64,), "float32", str(REFERENCE_MODELS / "digits_mlp.onnx"))
    with pytest.raises(DataError, match="float samples but model .* expects int64"):
        DIGITS.fit_to((64,), "int64", "m.onnx")


# --- config ----------------------------------------------------------------------------------

def test_config_errors_name_the_field(tmp_path):
    cases = [
        ({"model": {"path": "m.onnx", "pth": 1}}, r"model\.pth: unknown field"),
        ({"model": {"path": "m.onnx"}, "backends": [{"kind": "tensorflow"}]}, r"backends\[0\]\.kind: expected one of"),
        ({"model": {"path": "m.onnx"}, "backends": ["torch", {"precision": "int4"}]}, r"backends\[1\]\.precision"),
        ({"model": {"path": "m.onnx"}, "scenario": {"scenarios": ["Stream"]}}, r"scenario\.scenarios: 'Stream'"),
        ({"model": {"path": "m.onnx"}, "scenario": {"batch_sizes": [0]}}, r"scenario\.batch_sizes"),
        ({"data": {"source": "sklearn:digits"}}, r"model\.path: required"),
        ({"model": {"path": "m.onnx"}, "accuracy": {"confidence": 95}}, r"accuracy\.confidence"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message):
            BenchmarkConfig.from_dict(raw)
    (tmp_path / "c.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        BenchmarkConfig.from_yaml(tmp_path / "c.yaml")


def test_yaml_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes((REFERENCE_MODELS / "digits_mlp.onnx").read_bytes())
    (tmp_path / "c.yaml").write_text("model: {path: m.onnx}\nbackends: [onnxruntime, 'torch:compile']\n")
    config = BenchmarkConfig.from_yaml(tmp_path / "c.yaml")
    assert config.model.path == str(tmp_path / "m.onnx")
    assert [b.label for b in config.backends] == ["onnxruntime:auto", "torch:compile"]
    assert config.flat_params(1)["backend.mode"] == "compile"


# --- backends --------------------------------------------------------------------------------

def test_missing_execution_provider_and_wrong_backend_kind():
    model = load_model(ModelConfig(path=str(REFERENCE_MODELS / "digits_mlp.onnx")))
    with pytest.raises(BackendError, match=r"backends\[0\]\.providers: execution provider 'TensorrtExecutionProvider' "
                                           r"is not installed; this ONNX Runtime has .*CPUExecutionProvider"):
        create_backend(BackendConfig(kind="onnxruntime", providers=["TensorrtExecutionProvider"]), model, "backends[0]")
    with pytest.raises(BackendError, match=r"backends\[0\]\.kind: torch cannot run the ONNX model"):
        create_backend(BackendConfig(kind="torch"), model, "backends[0]")
    with pytest.raises(BackendError, match=r"backends\[0\]\.device: cuda requested but no CUDA device"):
        create_backend(BackendConfig(kind="torch", device="cuda"), load_model(ModelConfig(path=str(
            REFERENCE_MODELS / "digits_mlp.pt"))), "backends[0]")


def test_reduced_precision_stays_close_to_fp32():
    fp32, _ = outputs(REFERENCE_MODELS / "digits_mlp.pt", n=256)
    bf16, _ = outputs(REFERENCE_MODELS / "digits_mlp.pt", n=256, precision="bf16")
    assert (fp32.argmax(1) == bf16.argmax(1)).mean() > 0.97
    assert 0 < np.abs(fp32 - bf16).max() < 1.0  # really ran in bf16, and still the same model


def test_unrunnable_shape_fails_before_loadgen_with_a_named_error(tmp_path):
    config = tiny_config(tmp_path, model={"path": str(REFERENCE_MODELS / "digits_mlp.pt"), "input_shape": [8, 8]},
                         backends=[{"kind": "torch"}])
    with pytest.raises(ModelError, match=r"model: model .*digits_mlp.pt failed on samples of shape \(8, 8\) \(float32\) "
                                         r"in its own framework \(torch, CPU\)"):
        run(config, progress=False)
    assert not any(tmp_path.iterdir())


# --- accuracy --------------------------------------------------------------------------------

def test_vectorized_statistics_equal_scikit_learn_on_resamples():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 6, 300))
    idx = rng.integers(0, 300, (20, 300))
    got = acc.classification_statistics(y_true[idx], y_pred[idx])
    for b in range(20):
        t, p = y_true[idx[b]], y_pred[idx[b]]
        assert got[0, b] == pytest.approx(skm.accuracy_score(t, p))
        assert got[1, b] == pytest.approx(skm.f1_score(t, p, average="macro", zero_division=0))
        assert got[2, b] == pytest.approx(skm.precision_score(t, p, average="macro", zero_division=0))
        assert got[3, b] == pytest.approx(skm.recall_score(t, p, average="macro", zero_division=0))
    yt, yp = rng.normal(size=300), rng.normal(size=300)
    got = acc.regression_statistics(yt[idx], yp[idx])
    for b in range(20):
        assert got[:, b] == pytest.approx([skm.mean_absolute_error(yt[idx[b]], yp[idx[b]]),
                                           np.sqrt(skm.mean_squared_error(yt[idx[b]], yp[idx[b]])),
                                           skm.r2_score(yt[idx[b]], yp[idx[b]])])


def test_accuracy_and_ci_against_an_independent_computation(tmp_path):
    """A real run's figures, recomputed from its own predictions artifact with plain numpy."""
    config = tiny_config(tmp_path, model={"path": str(REFERENCE_MODELS / "breast_cancer_mlp.onnx")},
                         data={"source": "sklearn:breast_cancer"}, scenario={"scenarios": []},
                         accuracy={"bootstrap_resamples": 2000})
    result = run(config, progress=False)
    child = result.child(scenario="Accuracy")
    with np.load(result.artifact(child, "predictions.npz")) as npz:
        y_true, y_pred, scores = npz["y_true"], npz["y_pred"], npz["scores"]
    assert np.array_equal(y_pred, scores.argmax(1))
    correct = (y_true == y_pred).astype(float)
    assert child.metrics["accuracy"] == pytest.approx(correct.mean())
    tp = ((y_pred == 1) & (y_true == 1)).sum()
    precision1, recall1 = tp / (y_pred == 1).sum(), tp / (y_true == 1).sum()
    tn = ((y_pred == 0) & (y_true == 0)).sum()
    precision0, recall0 = tn / (y_pred == 0).sum(), tn / (y_true == 0).sum()
    f1 = np.mean([2 * p * r / (p + r) for p, r in ((precision0, recall0), (precision1, recall1))])
    assert child.metrics["f1_macro"] == pytest.approx(f1)
    assert child.metrics["recall_macro"] == pytest.approx((recall0 + recall1) / 2)
    # an independent percentile bootstrap of the mean lands on the same interval (Monte Carlo error)
    rng = np.random.default_rng(7)
    means = correct[rng.integers(0, len(correct), (4000, len(correct)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert child.metrics["accuracy_ci_low"] == pytest.approx(low, abs=0.004)
    assert child.metrics["accuracy_ci_high"] == pytest.approx(high, abs=0.004)
    # and agrees with the normal approximation to a binomial proportion
    se = np.sqrt(correct.mean() * (1 - correct.mean()) / len(correct))
    assert child.metrics["accuracy_ci_high"] - child.metrics["accuracy_ci_low"] == pytest.approx(
        2 * scipy_stats.norm.ppf(0.975) * se, rel=0.25)


def test_regression_metrics_on_the_diabetes_model(tmp_path):
    config = tiny_config(tmp_path, model={"path": str(REFERENCE_MODELS / "diabetes_mlp.pt2")},
                         data={"source": "sklearn:diabetes"}, backends=[{"kind": "torch"}],
                         scenario={"scenarios": []})
    result = run(config, progress=False)
    assert result.task == "regression"
    child = result.child(scenario="Accuracy")
    with np.load(result.artifact(child, "predictions.npz")) as npz:
        y_true, y_pred = npz["y_true"], npz["y_pred"]
    assert child.metrics["mae"] == pytest.approx(np.abs(y_true - y_pred).mean(), rel=1e-5)
    assert child.metrics["rmse"] == pytest.approx(np.sqrt(((y_true - y_pred) ** 2).mean()), rel=1e-5)
    assert 0.3 < child.metrics["r2"] < 1
    assert child.metrics["r2_ci_low"] < child.metrics["r2"] < child.metrics["r2_ci_high"]
    assert result.metrics["mae"] == child.metrics["mae"]  # copied to the parent


def test_label_prediction_mismatch_and_nan_outputs_are_refused():
    cfg = AccuracyConfig(bootstrap_resamples=50)
    with pytest.raises(AccuracyError, match="data.label: 10 labels but backend torch:eager produced 9 predictions"):
        acc.score(np.zeros(10, int), np.zeros(9, int), "classification", cfg, "torch:eager")
    scores = np.ones((5, 3), np.float32)
    scores[3, 1] = np.nan
    with pytest.raises(AccuracyError, match="backend b: model produced NaN/inf outputs for 1 of 5 samples "
                                                r"\(first at sample 3\)"):
        acc.check_finite(scores, "b")


def test_latency_only_run_without_labels(tmp_path):
    np.savez(tmp_path / "x.npz", x=DIGITS.x[:100])
    config = tiny_config(tmp_path / "r", data={"source": str(tmp_path / "x.npz")})
    result = run(config, progress=False)
    assert result.task == "none"
    assert [c.scenario for c in result.children] == ["SingleStream"]
    assert result.metrics == {}


def test_torch_compile_backend_agrees_with_eager(tmp_path):
    config = tiny_config(tmp_path, model={"path": "aifactory.benchmarks.reference:digits_mlp"},
                         backends=[{"kind": "torch"}, {"kind": "torch", "mode": "compile"}])
    result = run(config, progress=False)
    compiled = result.child("torch:compile", "Accuracy").metrics
    assert compiled["agreement_top1"] == 1.0
    assert compiled["agreement_max_abs_diff"] < 1e-4
    assert result.child("torch:compile", "SingleStream").metrics["latency_p50_ms"] > 0
