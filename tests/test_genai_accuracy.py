"""Accuracy of text models: every figure recomputed here independently (transformers' own generate
and loss, rouge-score, scikit-learn), torch vs ONNX Runtime agreement, one lm-eval task offline."""

import json
import math

import numpy as np
import pytest
import torch
import transformers

from aifactory.benchmarks import run
from aifactory.benchmarks.testing import tiny_lm_config


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lm_result(reference_lm, tmp_path_factory):
    config = tiny_lm_config(
        tmp_path_factory.mktemp("lm-accuracy"), data={"limit": 64},
        backends=[{"kind": "transformers", "threads": 1}, {"kind": "onnxruntime", "threads": 1}],
        scenario={"scenarios": []},
        accuracy={"perplexity_text": str(reference_lm["heldout"]), "perplexity_block": 128,
                  "lm_eval": {"tasks": ["aif_docstring_or_license"], "include_path": str(reference_lm["lm_eval_tasks"]),
                              "limit": 24}})
    return run(config, progress=False)


@pytest.fixture(scope="module")
def hf_lm(reference_lm):
    model = transformers.AutoModelForCausalLM.from_pretrained(reference_lm["lm"], local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(reference_lm["lm"], local_files_only=True)


def test_exact_match_and_rouge_equal_an_independent_computation(lm_result, reference_lm, hf_lm):
    from rouge_score import rouge_scorer

    model, tokenizer = hf_lm
    records = _jsonl(reference_lm["prompts"])
    generated = []
    with torch.no_grad():
        for record in records:  # one prompt at a time, transformers' own greedy generate
            enc = tokenizer(record["prompt"], return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=record["max_new_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            generated.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    exact = np.mean([g == r["reference"] for g, r in zip(generated, records)])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = np.mean([scorer.score(r["reference"], g)["rougeL"].fmeasure for g, r in zip(generated, records)])
    accuracy = lm_result.child(backend="transformers:eager", scenario="Accuracy").metrics
    assert accuracy["exact_match"] == pytest.approx(exact) and exact > 0  # the model_exact group matches
    assert accuracy["rouge_l"] == pytest.approx(rouge_l)
    assert accuracy["exact_match_ci_low"] < exact < accuracy["exact_match_ci_high"]
    saved = _jsonl(lm_result.artifact(lm_result.child("transformers:eager", "Accuracy"), "generations.jsonl"))
    assert [s["generated"] for s in saved] == generated


def test_perplexity_equals_transformers_own_loss(lm_result, reference_lm, hf_lm):
    model, tokenizer = hf_lm
    ids = tokenizer(reference_lm["heldout"].read_text(), add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 127, 128):
            block = torch.tensor([ids[begin:begin + 128]])
            nll += model(input_ids=block, labels=block).loss.item() * 127  # HF shifts labels itself
            count += 127
    accuracy = lm_result.child(backend="transformers:eager", scenario="Accuracy").metrics
    assert accuracy["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert accuracy["perplexity_ci_low"] < accuracy["perplexity"] < accuracy["perplexity_ci_high"]
    assert lm_result.metrics["perplexity"] == accuracy["perplexity"]  # the reference backend's, on the parent


def test_onnx_runtime_generates_the_same_tokens_as_torch(lm_result):
    ort = lm_result.child(backend="onnxruntime:CPUExecutionProvider", scenario="Accuracy").metrics
    torch_metrics = lm_result.child(backend="transformers:eager", scenario="Accuracy").metrics
    assert ort["agreement_tokens_equal"] == 1.0  # greedy: identical ids for every prompt
    assert ort["agreement_max_abs_diff"] < 1e-4
    assert ort["exact_match"] == torch_metrics["exact_match"]
    assert ort["perplexity"] == pytest.approx(torch_metrics["perplexity"], rel=1e-5)


def test_lm_eval_runs_a_local_task_offline_and_its_figures_are_logged_as_they_are(lm_result):
    child = lm_result.child(backend="transformers:eager", scenario="Accuracy")
    raw = json.loads(lm_result.artifact(child, "lm_eval.json").read_text())["results"]["aif_docstring_or_license"]
    assert child.metrics["lm_eval.aif_docstring_or_license.acc"] == raw["acc,none"]
    assert child.metrics["lm_eval.aif_docstring_or_license.acc_stderr"] == raw["acc_stderr,none"]
    assert 0 < raw["acc_stderr,none"] < 0.2
    assert "lm_eval.aif_docstring_or_license.acc" not in \
        lm_result.child(backend="onnxruntime:CPUExecutionProvider", scenario="Accuracy").metrics


def test_text_classification_accuracy_equals_scikit_learns_on_the_models_own_predictions(reference_lm, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    config = tiny_lm_config(tmp_path, model=reference_lm["encoder"],
                            data={"source": str(reference_lm["classification"]), "limit": 96},
                            backends=[{"kind": "transformers", "threads": 1}, {"kind": "onnxruntime", "threads": 1}],
                            scenario={"scenarios": ["SingleStream"]})
    result = run(config, progress=False)
    rows = _jsonl(reference_lm["classification"])[:96]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(reference_lm["encoder"],
                                                                           local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(reference_lm["encoder"], local_files_only=True)
    with torch.no_grad():
        predicted = [int(model(**tokenizer(r["text"], return_tensors="pt")).logits.argmax()) for r in rows]
    truth = [model.config.label2id[r["label"]] for r in rows]
    metrics = result.child(backend="transformers:eager", scenario="Accuracy").metrics
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted)) and metrics["accuracy"] > 0.85
    assert metrics["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    ort = result.child(backend="onnxruntime:CPUExecutionProvider", scenario="Accuracy").metrics
    assert ort["agreement_top1"] == 1.0 and ort["agreement_max_abs_diff"] < 1e-4
    single = result.child(backend="transformers:eager", scenario="SingleStream")
    assert single.metrics["latency_p50_ms"] > 0 and result.task == "text-classification"
