"""Every input and output read right (issue 17), against real converters on the bundled datasets.

The matrix: scikit-learn classifiers and pipelines (with and without ZipMap, integer labels,
labels with gaps, text labels), LightGBM and XGBoost, regressors, a multi-label model, torch
models with several outputs, models with several named inputs. For each, the suite's accuracy
(or R²) must equal the figure the model's own framework gives on the same samples, computed here
independently (scikit-learn's `predict`, the torch module), and the run must say which output it
scored. Models are trained in the test (small, on half of each dataset, so the figures are not
all 1.0) and saved as users save them (skl2onnx ONNX files, joblib, skops, TorchScript, torch.export).

Then the refusals: an output that does not exist, an ambiguous model, a missing or unknown input,
a dtype mismatch, scores whose columns are not in class order, each a BenchmarkError naming the
model, the input/output and what was expected, with nothing recorded as a result.
"""

from dataclasses import dataclass, field

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import datasets
from sklearn.metrics import accuracy_score, r2_score

from aifactory.benchmarks import run
from aifactory.benchmarks.errors import AccuracyError, DataError, ModelError
from aifactory.benchmarks.signature import (LABELS, MAP_SEQUENCE, MAPS, SCORES, Feeds, TensorSpec, choose_output,
                                            maps_to_scores)
from aifactory.benchmarks.testing import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore")  # converters', LightGBM's and short trainings' chatter


def bundled(name):
    """The samples the suite reads for sklearn:NAME (float32 features, as every loader gives them)."""
    bunch = getattr(datasets, f"load_{name}")()
    return bunch.data.astype(np.float32), bunch.target


def bench(tmp_path, model_path, data, **sections):
    """One accuracy-only benchmark (no LoadGen scenarios unless asked), local results only."""
    defaults = {"scenario": {"scenarios": []}, "accuracy": {"bootstrap_resamples": 50}}
    for key, value in defaults.items():
        sections[key] = {**value, **sections.get(key, {})}
    config = tiny_config(tmp_path / "results", model={"path": str(model_path), **sections.pop("model", {})}, data=data,
                         **sections)
    return run(config, progress=False)


def skl2onnx_file(estimator, x, path, zipmap=True):
    from skl2onnx import to_onnx

    options = None if zipmap else {"zipmap": False}
    path.write_bytes(to_onnx(estimator, x[:1], options=options, target_opset={"": 18, "ai.onnx.ml": 3})
                     .SerializeToString())
    return path


def table(path, frame):
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


# -- the matrix ------------------------------------------------------------------------------------

@dataclass
class Case:
    model: object  # the file the suite is given
    data: dict  # its data: section
    output: str  # the output the suite must score
    own: float  # the framework's own figure on the same samples, computed here
    metric: str = "accuracy"
    task: str = "classification"
    crosscheck: str = "scikit-learn"  # whose predictions the backend is checked against
    sections: dict = field(default_factory=dict)


def logistic_regression_with_zipmap(tmp_path):
    """skl2onnx's default export: a label output first, ZipMap probabilities second (the issue's model)."""
    from sklearn.linear_model import LogisticRegression

    x, y = bundled("iris")
    model = LogisticRegression(max_iter=500).fit(x[::2], y[::2])
    path = skl2onnx_file(model, x, tmp_path / "logreg.onnx")
    return Case(path, {"source": "sklearn:iris"}, "output_probability", accuracy_score(y, model.predict(x)),
                crosscheck="label output 'output_label'")


def knn_with_text_labels_and_zipmap(tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    x, y = bundled("iris")
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = KNeighborsClassifier(n_neighbors=15).fit(x[::2], names[::2])
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).assign(species=names)
    return Case(skl2onnx_file(model, x, tmp_path / "knn.onnx"), {"source": str(table(tmp_path / "iris.csv", frame)),
                "label": "species"}, "output_probability", accuracy_score(names, model.predict(x)),
                crosscheck="label output 'output_label'")


def mlp_pipeline_with_text_labels(tmp_path):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = bundled("digits")
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=60, random_state=0)).fit(x[::2], names[::2])
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).assign(digit=names)
    return Case(skl2onnx_file(model, x, tmp_path / "mlp.onnx", zipmap=False),
                {"source": str(table(tmp_path / "digits.parquet", frame)), "label": "digit"}, "probabilities",
                accuracy_score(names, model.predict(x)), crosscheck="label output 'label'")


def random_forest_with_label_gaps_joblib(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    x, y = bundled("wine")
    gaps = y * 10 + 10  # classes 10, 20, 30
    model = RandomForestClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x[::2], gaps[::2])
    joblib.dump(model, tmp_path / "forest.joblib")
    np.savez(tmp_path / "wine.npz", x=x, y=gaps)
    return Case(tmp_path / "forest.joblib", {"source": str(tmp_path / "wine.npz")}, "probabilities",
                accuracy_score(gaps, model.predict(x)))


def logistic_regression_skops_on_named_columns(tmp_path):
    """Fitted on a DataFrame: the export's input X reads the fitted columns by name, not position."""
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = bundled("breast_cancer")
    columns = [f"c{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=columns)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(frame[::2], y[::2])
    skops.io.dump(model, tmp_path / "logreg.skops")
    shuffled = frame[columns[::-1]].assign(target=y)  # the table's column order is not the fitted one
    return Case(tmp_path / "logreg.skops", {"source": str(table(tmp_path / "cancer.csv", shuffled)), "label": "target"},
                "probabilities", accuracy_score(y, model.predict(frame)))


def lightgbm_with_text_labels(tmp_path):
    from lightgbm import LGBMClassifier

    x, y = bundled("wine")
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    model = LGBMClassifier(n_estimators=20, num_leaves=7, min_child_samples=5, verbose=-1).fit(x[::2], names[::2])
    joblib.dump(model, tmp_path / "lgbm.joblib")
    frame = pd.DataFrame(x, columns=[f"w{i}" for i in range(x.shape[1])]).assign(cultivar=names)
    return Case(tmp_path / "lgbm.joblib", {"source": str(table(tmp_path / "wine.parquet", frame)), "label": "cultivar"},
                "probabilities", accuracy_score(names, model.predict(x)), crosscheck="LightGBM")


def xgboost_classifier(tmp_path):
    from xgboost import XGBClassifier

    x, y = bundled("breast_cancer")
    model = XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x[::2], y[::2])
    joblib.dump(model, tmp_path / "xgb.joblib")
    return Case(tmp_path / "xgb.joblib", {"source": "sklearn:breast_cancer"}, "probabilities",
                accuracy_score(y, model.predict(x)), crosscheck="XGBoost")


def column_transformer_with_text_column(tmp_path):
    """Features split by type: one input per column, a text column among them (a multi-input model)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = bundled("wine")
    frame = pd.DataFrame(x[:, :4], columns=["alcohol", "malic_acid", "ash", "alcalinity"])
    frame["hue"] = pd.cut(x[:, 10], 3, labels=["pale", "mid", "deep"]).astype(str)
    model = make_pipeline(ColumnTransformer([("num", StandardScaler(), ["alcohol", "malic_acid", "ash", "alcalinity"]),
                                             ("cat", OneHotEncoder(), ["hue"])]),
                          LogisticRegression(max_iter=500)).fit(frame[::2], y[::2])
    joblib.dump(model, tmp_path / "mixed.joblib")
    return Case(tmp_path / "mixed.joblib", {"source": str(table(tmp_path / "mixed.csv", frame.assign(label=y))),
                "label": "label"}, "probabilities", accuracy_score(y, model.predict(frame)))


def gradient_boosting_regressor(tmp_path):
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = bundled("diabetes")
    model = GradientBoostingRegressor(n_estimators=30, max_depth=2, random_state=0).fit(x[::2], y[::2])
    joblib.dump(model, tmp_path / "gbr.joblib")
    return Case(tmp_path / "gbr.joblib", {"source": "sklearn:diabetes"}, "variable", r2_score(y, model.predict(x)),
                metric="r2", task="regression")


def lightgbm_regressor_skops(tmp_path):
    import skops.io
    from lightgbm import LGBMRegressor

    x, y = bundled("diabetes")
    model = LGBMRegressor(n_estimators=30, num_leaves=7, verbose=-1).fit(x[::2], y[::2])
    skops.io.dump(model, tmp_path / "lgbm.skops")
    return Case(tmp_path / "lgbm.skops", {"source": "sklearn:diabetes"}, "variable", r2_score(y, model.predict(x)),
                metric="r2", task="regression", crosscheck="LightGBM")


def multilabel_mlp(tmp_path):
    from sklearn.neural_network import MLPClassifier

    x, y = bundled("digits")
    labels = np.stack([y % 2 == 0, y > 4, np.isin(y, [0, 6, 8, 9])], axis=1).astype(np.int64)
    model = MLPClassifier((32,), max_iter=60, random_state=0).fit(x[::2], labels[::2])
    joblib.dump(model, tmp_path / "multilabel.joblib")
    np.savez(tmp_path / "multilabel.npz", x=x, y=labels)
    return Case(tmp_path / "multilabel.joblib", {"source": str(tmp_path / "multilabel.npz")}, "probabilities",
                accuracy_score(labels, model.predict(x)), task="multilabel")


MATRIX = [logistic_regression_with_zipmap, knn_with_text_labels_and_zipmap, mlp_pipeline_with_text_labels,
          random_forest_with_label_gaps_joblib, logistic_regression_skops_on_named_columns, lightgbm_with_text_labels,
          xgboost_classifier, column_transformer_with_text_column, gradient_boosting_regressor,
          lightgbm_regressor_skops, multilabel_mlp]


@pytest.mark.parametrize("build", MATRIX, ids=[b.__name__ for b in MATRIX])
def test_the_suites_figure_equals_the_frameworks_own(build, tmp_path):
    case = build(tmp_path)
    result = bench(tmp_path, case.model, case.data, **case.sections)
    child = result.child(scenario="Accuracy")
    assert result.task == case.task
    assert child.metrics[case.metric] == pytest.approx(case.own, abs=1e-6), case.model
    assert child.tags["aif.output"] == result.output == case.output
    assert child.tags["aif.outputs_fetched"] == case.output  # the scored output only, by default
    assert case.crosscheck in child.tags["aif.crosscheck"]
    assert child.metrics["crosscheck_agreement"] >= 0.99
    assert child.metrics["crosscheck_score"] == pytest.approx(child.metrics["crosscheck_reference_score"], abs=0.01)
    if case.task != "regression":
        assert 0.6 < case.own < 1.0  # trained on half: a real figure, not a model that cannot err
    with np.load(result.artifact(child, "predictions.npz")) as npz:  # what was scored is what was saved
        assert npz["y_true"].shape == npz["y_pred"].shape


# -- torch: several outputs, several inputs ------------------------------------------------------

class TwoHeads(torch.nn.Module):
    """Logits and an embedding: two float [N, *] outputs, so which to score must be named."""

    def __init__(self, features, classes):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, classes)

    def forward(self, x):
        hidden = self.body(x)
        return self.head(hidden), hidden


class DictOutput(TwoHeads):
    """A Hugging Face-style dict: logits [N, C] beside hidden states [N, 4, 4] (not class scores)."""

    def forward(self, x):
        logits, hidden = super().forward(x)
        return {"hidden_states": hidden.reshape(-1, 4, 4), "logits": logits}


class TwoInputs(torch.nn.Module):
    """Features and a per-feature mask, by name (a multi-input model)."""

    def __init__(self, features, classes):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(features))
        self.net = TwoHeads(features, classes)

    def forward(self, features, mask):
        return self.net(features * mask * self.scale)[0]


def trained(module, x, y, forward=lambda m, x: m(x)[0], steps=150):
    """A few full-batch Adam steps: enough for a real, imperfect classifier."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    inputs, target = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(forward(module, inputs), target).backward()
        optimizer.step()
    return module.eval()


def standardized(name):
    x, y = bundled(name)
    return ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32), y


def torch_accuracy(module, *inputs, pick=lambda out: out[0], y=None):
    with torch.no_grad():
        logits = pick(module(*(torch.from_numpy(a) for a in inputs)))
    return float((logits.argmax(1).numpy() == y).mean())


def test_torch_model_with_two_outputs_scores_the_named_one_on_both_backends(tmp_path):
    torch.manual_seed(0)
    x, y = standardized("wine")
    module = trained(TwoHeads(13, 3), x[::2], y[::2])
    path = tmp_path / "two_heads.pt"
    torch.jit.save(torch.jit.trace(module, torch.from_numpy(x[:2])), str(path))
    np.savez(tmp_path / "wine.npz", x=x, y=y)
    data = {"source": str(tmp_path / "wine.npz")}
    with pytest.raises(ModelError, match=r"model\.output: cannot tell which output of model .*two_heads\.pt to score: "
                                         r"2 outputs could be class scores or values \(output_0, output_1\)\. Its outputs "
                                         r"are output_0 \(float32 \[N, 3\]\), output_1 \(float32 \[N, 16\]\)\. "
                                         r"Name the one to score: model\.output: NAME"):
        bench(tmp_path, path, data, backends=[{"kind": "torch"}])
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())

    result = bench(tmp_path, path, data, model={"output": "output_0"},
                   backends=[{"kind": "torch"}, {"kind": "onnxruntime", "threads": 1}])
    own = torch_accuracy(module, x, y=y)
    assert 0.6 < own < 1.0
    for backend in ("torch:eager", "onnxruntime:CPUExecutionProvider"):  # the ONNX export names them alike
        child = result.child(backend, "Accuracy")
        assert child.metrics["accuracy"] == pytest.approx(own, abs=1e-6), backend
        assert child.tags["aif.output"] == "output_0"
        assert child.tags["aif.crosscheck"] == "output 'output_0' of the torch module on the CPU"
    assert result.child("torch:eager", "Accuracy").tags["aif.outputs_fetched"] == "output_0,output_1"
    assert result.child("onnxruntime:CPUExecutionProvider", "Accuracy").tags["aif.outputs_fetched"] == "output_0"


def test_dict_output_scores_the_logits_not_the_hidden_states(tmp_path):
    x, y = standardized("iris")
    module = trained(DictOutput(4, 3), x[::2], y[::2], forward=lambda m, x: m(x)["logits"])
    path = tmp_path / "dict_output.pt"
    torch.jit.save(torch.jit.trace(module, torch.from_numpy(x[:2]), strict=False), str(path))
    np.savez(tmp_path / "iris.npz", x=x, y=y)
    result = bench(tmp_path, path, {"source": str(tmp_path / "iris.npz")}, backends=[{"kind": "torch"}])
    child = result.child(scenario="Accuracy")
    assert child.tags["aif.output"] == "logits"
    assert child.metrics["accuracy"] == pytest.approx(torch_accuracy(module, x, pick=lambda o: o["logits"], y=y))


def test_inputs_are_fed_by_name_with_a_mapping_on_torch_and_onnxruntime(tmp_path):
    x, y = standardized("breast_cancer")
    mask = (np.random.default_rng(0).random(x.shape) > 0.2).astype(np.float32)
    module = trained(TwoInputs(30, 2), x[::2], y[::2], forward=lambda m, x: m(x, torch.ones_like(x)))
    program = torch.export.export(module, (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])),
                                  dynamic_shapes=({0: torch.export.Dim("batch")}, {0: torch.export.Dim("batch")}))
    torch.export.save(program, str(tmp_path / "two_inputs.pt2"))
    np.savez(tmp_path / "cancer.npz", feats=x, mask=mask, y=y)  # "features" is stored as "feats"
    result = bench(tmp_path, tmp_path / "two_inputs.pt2",
                   {"source": str(tmp_path / "cancer.npz"), "inputs": {"features": "feats"}},
                   backends=[{"kind": "torch"}, {"kind": "onnxruntime", "threads": 1}])
    own = torch_accuracy(module, x, mask, pick=lambda out: out, y=y)
    assert 0.6 < own < 1.0
    for backend in ("torch:eager", "onnxruntime:CPUExecutionProvider"):
        assert result.child(backend, "Accuracy").metrics["accuracy"] == pytest.approx(own, abs=1e-6), backend


def test_latency_runs_fetch_the_scored_output_or_all_and_say_which(tmp_path):
    case = logistic_regression_with_zipmap(tmp_path)
    both = {"scenario": {"scenarios": ["SingleStream"], "min_duration_s": 0.1, "min_query_count": 32}}
    scored = bench(tmp_path, case.model, case.data, **both)
    everything = bench(tmp_path, case.model, case.data, backends=[{"kind": "onnxruntime", "fetch_outputs": "all"}],
                       **both)
    assert scored.child(scenario="SingleStream").tags["aif.outputs_fetched"] == "output_probability"
    assert everything.child(scenario="SingleStream").tags["aif.outputs_fetched"] == "output_label,output_probability"
    # what is fetched changes no figure
    assert (scored.child(scenario="Accuracy").metrics["accuracy"]
            == everything.child(scenario="Accuracy").metrics["accuracy"] == pytest.approx(case.own))
    assert scored.child(scenario="SingleStream").metrics["crosscheck_agreement"] == 1.0


def test_the_label_output_when_named_gives_the_same_figure(tmp_path):
    """What went wrong before: the first output (labels) read as scores. Named, it is read as labels."""
    case = logistic_regression_with_zipmap(tmp_path)
    result = bench(tmp_path, case.model, case.data, model={"output": "output_label"})
    child = result.child(scenario="Accuracy")
    assert child.tags["aif.output"] == "output_label"
    assert child.metrics["accuracy"] == pytest.approx(case.own)


def test_cli_converts_a_joblib_model_on_the_fly(tmp_path):
    from click.testing import CliRunner

    from aifactory.hub.cli import main

    case = random_forest_with_label_gaps_joblib(tmp_path)
    cli = CliRunner().invoke(main, ["bench", "run", "--model", str(case.model), "--data", case.data["source"],
                                    "--scenario", "SingleStream", "--profile", "quick", "--no-mlflow", "--no-progress",
                                    "--results-dir", str(tmp_path / "results"), "--threads", "1"])
    assert cli.exit_code == 0, cli.output
    assert f"{case.own:.4g}" in cli.output  # the accuracy column: scikit-learn's own figure


# -- the rules, on specs -------------------------------------------------------------------------

LABEL = TensorSpec("label", "int64", (None,))
PROBABILITIES = TensorSpec("probabilities", "float32", (None, 3))
ZIPMAP = TensorSpec("output_probability", "float32", None, MAP_SEQUENCE)


def test_the_output_rule():
    assert choose_output([LABEL, ZIPMAP]).name == "output_probability"
    chosen = choose_output([LABEL, PROBABILITIES])
    assert (chosen.name, chosen.role, chosen.label_output, chosen.index) == ("probabilities", SCORES, "label", 1)
    assert choose_output([LABEL]).role == LABELS
    assert choose_output([LABEL, TensorSpec("text", "string", (None,))], "text").role == LABELS
    hidden = TensorSpec("last_hidden_state", "float32", (None, 8, 32))
    assert choose_output([hidden, TensorSpec("logits", "float32", (None, 2))]).name == "logits"
    assert choose_output([hidden, LABEL]).name == "label"
    with pytest.raises(ModelError, match=r"cannot tell .*no output is class scores"):
        choose_output([hidden, TensorSpec("attentions", "float32", (None, 8, 8))])
    with pytest.raises(ModelError, match=r"2 label outputs and no scores"):
        choose_output([LABEL, TensorSpec("label2", "int64", (None,))])
    assert choose_output([LABEL, ZIPMAP], "label").role == LABELS  # named wins
    assert choose_output([ZIPMAP]).role == MAPS
    scores = maps_to_scores([{"b": 0.9, "a": 0.1}, {"a": 0.7, "b": 0.3}], ("a", "b"))
    np.testing.assert_array_equal(scores, np.array([[0.1, 0.9], [0.7, 0.3]], np.float32))


def test_feeds_index_every_input_alike():
    feeds = Feeds({"a": np.arange(10), "b": np.arange(20).reshape(10, 2)})
    assert len(feeds) == 10 and feeds.names == ["a", "b"]
    picked = feeds[np.array([3, 7])]
    assert picked.arrays["a"].tolist() == [3, 7] and picked.arrays["b"].tolist() == [[6, 7], [14, 15]]
    assert feeds[2:3].arrays["b"].shape == (1, 2)


# -- refusals: clear errors, nothing recorded ------------------------------------------------------

def refusals(tmp_path):
    from sklearn.linear_model import LogisticRegression

    zipmap = logistic_regression_with_zipmap(tmp_path)
    x, y = bundled("iris")
    plain = skl2onnx_file(LogisticRegression(max_iter=500).fit(x, y), x, tmp_path / "plain.onnx", zipmap=False)
    mixed = column_transformer_with_text_column(tmp_path)
    frame = pd.read_csv(mixed.data["source"])
    numeric_hue = table(tmp_path / "numeric_hue.csv", frame.assign(hue=np.arange(len(frame)) % 3))
    no_hue = table(tmp_path / "no_hue.csv", frame.drop(columns="hue"))
    svc = _binary_svc(tmp_path)
    two_heads = tmp_path / "two_heads.pt"
    torch.jit.save(torch.jit.trace(TwoHeads(13, 3).eval(), torch.zeros(2, 13)), str(two_heads))
    return {
        "ambiguous outputs": (two_heads, {"source": "sklearn:wine"}, {"backends": [{"kind": "torch"}]}, ModelError,
                              r"model\.output: cannot tell which output of model .*two_heads\.pt to score: 2 outputs "
                              r"could be class scores or values \(output_0, output_1\)"),
        # (a ZipMap's maps name their classes: there, any order given reads right)
        "wrong class order": (plain, zipmap.data, {"model": {"classes": [2, 0, 1]}}, ModelError,
                              r"model\.output: model .*plain\.onnx: output 'probabilities' read as class scores "
                              r"\(the class of the highest column, classes 2, 0, 1\) gives the model's own predictions "
                              r"\(the model's own label output 'label' on ONNX Runtime's CPU provider\) on only"),
        "unknown output": (zipmap.model, zipmap.data, {"model": {"output": "proba"}}, ModelError,
                           r"model\.output: model .*logreg\.onnx has no output 'proba'; its outputs are output_label "
                           r"\(int64 \[N\]\), output_probability \(a \{class: probability\} map per sample\)"),
        "missing input": (mixed.model, {**mixed.data, "source": str(no_hue)}, {}, DataError,
                          r"data\.inputs: model .*mixed\.joblib needs input hue \(string \[N, 1\]\), but dataset "
                          r"no_hue\.csv has no array or column 'hue' .*map it with data\.inputs: \{hue: COLUMN\}"),
        "unknown input": (zipmap.model, {**zipmap.data, "inputs": {"features": "x"}}, {}, DataError,
                          r"data\.inputs: model .*logreg\.onnx has no input 'features'; its inputs are X "
                          r"\(float32 \[N, 4\]\)"),
        "dtype mismatch": (mixed.model, {**mixed.data, "source": str(numeric_hue)}, {}, DataError,
                           r"data\.inputs\.hue: model .*mixed\.joblib input hue \(string \[N, 1\]\) takes text; "
                           r"the data is int64"),
        "scores not in class order": (svc, {"source": "sklearn:breast_cancer"}, {}, ModelError,
                                      r"model\.output: model .*svc\.joblib: output 'probabilities' read as class scores "
                                      r".*gives the model's own predictions \(scikit-learn Pipeline\.predict\) on only "
                                      r".*score the model's label output instead \(model\.output: label\)"),
        "not the data's classes": (zipmap.model, {"source": "sklearn:digits", "inputs": {"X": ["pixel_0_0", "pixel_0_1",
                                   "pixel_0_2", "pixel_0_3"]}}, {}, AccuracyError,
                                   r"data\.label: labels 3, 4, 5, 6, 7 are none of model .*logreg\.onnx's classes "
                                   r"\(0, 1, 2\)"),
    }


def _binary_svc(tmp_path):
    """skl2onnx's binary SVC without probabilities: its 'probabilities' are decision values whose
    highest column is not the predicted class."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = bundled("breast_cancer")
    joblib.dump(make_pipeline(StandardScaler(), SVC()).fit(x[::2], y[::2]), tmp_path / "svc.joblib")
    return tmp_path / "svc.joblib"


REFUSALS = ["ambiguous outputs", "wrong class order", "unknown output", "missing input", "unknown input", "dtype mismatch", "scores not in class order",
            "not the data's classes"]


@pytest.mark.parametrize("name", REFUSALS)
def test_bad_model_io_is_refused_before_anything_is_recorded(name, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    model, data, sections, error, message = refusals(tmp_path)[name]
    experiment = f"bench-refused-{REFUSALS.index(name)}"
    with pytest.raises(error, match=message):
        bench(tmp_path, model, data, mlflow={"enabled": True, "tracking_uri": mlflow_server, "experiment": experiment},
              **sections)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    found = MlflowClient(mlflow_server).get_experiment_by_name(experiment)
    assert found is None or not MlflowClient(mlflow_server).search_runs([found.experiment_id])


def test_the_svc_is_scored_right_by_its_label_output(tmp_path):
    """The refusal's advice works: the label output is the estimator's own predict()."""
    from sklearn.svm import SVC  # noqa: F401 - imported by joblib.load

    path = _binary_svc(tmp_path)
    x, y = bundled("breast_cancer")
    result = bench(tmp_path, path, {"source": "sklearn:breast_cancer"}, model={"output": "label"})
    own = accuracy_score(y, joblib.load(path).predict(x))
    assert result.child(scenario="Accuracy").metrics["accuracy"] == pytest.approx(own)


def near_ties():
    """A digits classifier whose logits sit close together on a large offset: bf16 (spacing 0.5
    near 100) rounds many of them into ties, so its predictions really differ from fp32's."""
    torch.manual_seed(0)
    module = torch.nn.Linear(64, 10)
    with torch.no_grad():
        module.weight.mul_(0.05)
        module.bias.fill_(100.0)
    return module.eval()


def test_a_backend_that_disagrees_with_the_framework_fails_the_run_naming_both_figures(tmp_path, mlflow_server):
    """Checked after the runs exist: the run ends FAILED in MLflow with both figures, no result kept."""
    from mlflow import MlflowClient

    module = near_ties()
    path = tmp_path / "near_ties.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    x, _ = bundled("digits")
    with torch.no_grad():
        flips = (module(torch.from_numpy(x)).argmax(1) != module.to(torch.bfloat16)(
            torch.from_numpy(x).bfloat16()).argmax(1)).float().mean().item()
    assert flips > 0.1  # the premise: bf16 changes the predictions
    mlflow = {"enabled": True, "tracking_uri": mlflow_server, "experiment": "bench-crosscheck"}
    with pytest.raises(AccuracyError, match=r"backends\[0\] \(torch:eager\), output 'output': the suite's predictions and "
                                            r"the framework's own \(output 'output' of the torch module on the CPU\) "
                                            r"differ: .* of 256 probe samples predicted alike, below the 99% the "
                                            r"tolerance allows; accuracy \S+ through the suite vs \S+ by the framework"):
        bench(tmp_path, path, {"source": "sklearn:digits"}, model={"input_shape": [64]}, mlflow=mlflow,
              backends=[{"kind": "torch", "precision": "bf16"}], accuracy={"crosscheck_tolerance": 0.01})
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("bench-crosscheck").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    assert "through the suite vs" in runs[0].data.tags["aif.error"]


def test_the_scored_output_and_the_agreement_reach_mlflow(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    case = logistic_regression_with_zipmap(tmp_path)
    mlflow = {"enabled": True, "tracking_uri": mlflow_server, "experiment": "bench-model-io"}
    result = bench(tmp_path, case.model, case.data, mlflow=mlflow)
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("bench-model-io").experiment_id])
    parent = next(r for r in runs if r.info.run_id == result.mlflow_run_id)
    child = next(r for r in runs if r.data.tags.get("aif.scenario") == "Accuracy")
    assert parent.data.tags["aif.output"] == child.data.tags["aif.output"] == "output_probability"
    assert child.data.tags["aif.crosscheck"] == "the model's own label output 'output_label' on ONNX Runtime's CPU provider"
    assert child.data.metrics["crosscheck_agreement"] == 1.0
    assert child.data.metrics["crosscheck_reference_score"] == pytest.approx(case.own)
