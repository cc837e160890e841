"""Hugging Face models and text data in: the shipped reference models, offline loading, bad input.

Every bad input is refused before any weights load, with a message naming the file or field.
"""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from aifactory.benchmarks.config import DataConfig, GenerationConfig, ModelConfig
from aifactory.benchmarks.errors import ConfigError, DataError, ModelError
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.text.data import load_text_dataset, tokenize


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_reference_models_are_real_trained_models(reference_lm):
    lm = json.loads((reference_lm["lm"] / "build_info.json").read_text())
    assert lm["perplexity"] < 400 < 1500 < lm["perplexity_init"]  # it learnt: ~2,000 -> ~300
    assert 0.5e6 < lm["parameters"] < 1.5e6
    encoder = json.loads((reference_lm["encoder"] / "build_info.json").read_text())
    assert encoder["accuracy"] > 0.9  # docstring vs license sentences, held out; chance is 0.5
    size = sum(f.stat().st_size for f in reference_lm["lm"].iterdir())
    assert size < 8 * 2**20  # a few MB
    assert {p.name for p in reference_lm["lm_eval_tasks"].glob("*.yaml")} >= {"aif_docstring_or_license.yaml"}


def test_loading_is_offline_and_finds_the_task_from_the_config(reference_lm):
    lm = load_model(ModelConfig(path=f"hf:{reference_lm['lm']}"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert (lm.task, lm.context_length, lm.vocab_size) == ("text-generation", 512, 2048)
    assert lm.kv_cache_bytes_per_token("fp32") == 2 * 2 * 4 * 32 * 4  # K+V x layers x heads x head_dim x fp32
    encoder = load_model(ModelConfig(path=str(reference_lm["encoder"])))
    assert encoder.task == "text-classification"
    assert load_model(ModelConfig(path=str(reference_lm["encoder"]), task="feature-extraction")).task == \
        "feature-extraction"


def test_chat_prompts_go_through_the_tokenizer_template(reference_lm):
    lm = load_model(ModelConfig(path=str(reference_lm["lm"])))
    data = load_text_dataset(DataConfig(source=str(reference_lm["chat_prompts"])), lm.task)
    prompts = tokenize(data, lm, GenerationConfig())
    text = lm.tokenizer.decode(prompts.ids[0])
    assert text.startswith("<s><|user|>\nWhat does") and text.endswith("<|assistant|>\n")
    assert text.count("<s>") == 1  # the template's bos, not a second one from the tokenizer
    assert list(prompts.max_new_tokens[:2]) == [32, 32]  # the records' own budgets


def test_saved_datasets_and_parquet_read_like_jsonl(reference_lm, tmp_path):
    import datasets
    import pandas as pd

    lm = load_model(ModelConfig(path=str(reference_lm["lm"])))
    rows = [json.loads(line) for line in reference_lm["prompts"].read_text().splitlines()][:6]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    pd.DataFrame(rows).to_parquet(tmp_path / "prompts.parquet")
    expected = tokenize(load_text_dataset(DataConfig(source=str(reference_lm["prompts"]), limit=6), lm.task), lm,
                        GenerationConfig())
    for source in (tmp_path / "saved", tmp_path / "prompts.parquet"):
        got = tokenize(load_text_dataset(DataConfig(source=str(source)), lm.task), lm, GenerationConfig())
        assert [list(i) for i in got.ids] == [list(i) for i in expected.ids]
        assert list(got.max_new_tokens) == list(expected.max_new_tokens)


# -- bad input: each refused, naming the file or field -------------------------------------------
def test_a_directory_without_config_or_tokenizer_is_refused(reference_lm, tmp_path):
    no_config = _copy(reference_lm["lm"], tmp_path / "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(ModelError, match=r"no-config.*config\.json"):
        load_model(ModelConfig(path=str(no_config)))
    no_tokenizer = _copy(reference_lm["lm"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(ModelError, match=r"no tokenizer files.*model\.tokenizer"):
        load_model(ModelConfig(path=str(no_tokenizer)))


def test_a_tokenizer_that_does_not_match_the_vocabulary_is_refused(reference_lm, tmp_path):
    small = _copy(reference_lm["lm"], tmp_path / "small-vocab")
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 1000
    (small / "config.json").write_text(json.dumps(config))
    model = load_model(ModelConfig(path=str(small)))
    with pytest.raises(ModelError, match=r"model\.tokenizer: .*2048 tokens .*vocab_size 1000"):
        model.tokenizer


def test_remote_code_is_refused_unless_the_operator_allows_it(reference_lm, tmp_path, monkeypatch):
    remote = _copy(reference_lm["lm"], tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    monkeypatch.delenv("AIF_HF_ALLOW_REMOTE_CODE", raising=False)
    with pytest.raises(ModelError, match=r"own Python code.*auto_map.*AIF_HF_ALLOW_REMOTE_CODE"):
        load_model(ModelConfig(path=str(remote), trust_remote_code=True))
    monkeypatch.setenv("AIF_HF_ALLOW_REMOTE_CODE", "1")
    with pytest.raises(ModelError, match=r"model\.trust_remote_code is not set"):
        load_model(ModelConfig(path=str(remote)))
    assert load_model(ModelConfig(path=str(remote), trust_remote_code=True)).trust_remote_code is True


def test_a_model_too_large_for_the_device_is_refused_before_loading(reference_lm, tmp_path):
    huge = _copy(reference_lm["lm"], tmp_path / "huge")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 0]}}).encode()
    (huge / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)  # no data: never read
    model = load_model(ModelConfig(path=str(huge)))
    with pytest.raises(ModelError, match=r"the weights need [\d.]+ GiB at fp32 \(1000\.\d+ B parameters\) but cpu "
                                         r"has [\d.]+ GiB free"):
        model.load_module("fp32", "cpu", "backends[0]")


def test_a_task_that_does_not_fit_the_architecture_is_refused(reference_lm):
    with pytest.raises(ModelError, match=r"model\.task: text-generation does not fit .*BertForSequenceClassification"):
        load_model(ModelConfig(path=str(reference_lm["encoder"]), task="text-generation"))


def test_a_prompt_longer_than_the_context_is_refused_naming_the_record(reference_lm, tmp_path):
    lm = load_model(ModelConfig(path=str(reference_lm["lm"])))
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "word " * 600}) + "\n")
    with pytest.raises(DataError, match=r"long\.jsonl record 1 \(id 1\): \d+ prompt tokens \+ max_new_tokens 64 "
                                        r"exceed the model's context of 512"):
        tokenize(load_text_dataset(DataConfig(source=str(data)), lm.task), lm, GenerationConfig())


def test_a_dataset_without_the_named_column_is_refused(reference_lm):
    with pytest.raises(DataError, match=r"data\.prompt: .*has no column 'question'; columns are .*prompt"):
        load_text_dataset(DataConfig(source=str(reference_lm["prompts"]), prompt="question"), "text-generation")
    with pytest.raises(DataError, match=r"data\.text: .*prompts\.jsonl has no column 'text'"):
        load_text_dataset(DataConfig(source=str(reference_lm["prompts"])), "text-classification")


def test_an_lm_eval_task_that_would_download_is_refused(tmp_path):
    from aifactory.benchmarks.config import LmEvalConfig
    from aifactory.benchmarks.text.lmeval import prepare_tasks

    (tmp_path / "hub.yaml").write_text("task: from_hub\ndataset_path: cais/mmlu\noutput_type: multiple_choice\n")
    (tmp_path / "missing.yaml").write_text("task: missing\ndataset_path: json\n"
                                           "dataset_kwargs: {data_files: {test: nowhere.jsonl}}\n")
    for task, message in (("from_hub", r"would download dataset_path 'cais/mmlu'"),
                          ("missing", r"data file nowhere\.jsonl does not exist"),
                          ("mmlu", r"no local task 'mmlu'")):
        with pytest.raises(ConfigError, match=message):
            prepare_tasks(LmEvalConfig(tasks=[task], include_path=str(tmp_path)), tmp_path)


def test_labels_map_through_the_model_config(reference_lm):
    from aifactory.benchmarks.text.data import label_ids

    encoder = load_model(ModelConfig(path=str(reference_lm["encoder"])))
    assert list(label_ids(["license", "docstring", 1], encoder, "x")) == [1, 0, 1]
    with pytest.raises(DataError, match=r"label 'poem'.*known: docstring, license"):
        label_ids(["poem"], encoder, "x")


def test_mlflow_transformers_models_load_by_uri(reference_lm, mlflow_server, monkeypatch):
    import mlflow
    import transformers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = transformers.AutoModelForCausalLM.from_pretrained(reference_lm["lm"], local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(reference_lm["lm"], local_files_only=True)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("genai-registry")
    with mlflow.start_run():
        mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="lm", task="text-generation",
                                      registered_model_name="reference-lm", pip_requirements=["transformers", "torch"])
    loaded = load_model(ModelConfig(path="models:/reference-lm/1"))
    assert (loaded.task, loaded.name, loaded.source) == ("text-generation", "reference-lm", "models:/reference-lm/1")
    ids = loaded.tokenizer("Return the")["input_ids"]
    assert ids == tokenizer("Return the")["input_ids"]
    module = loaded.load_module("fp32", "cpu", "model")
    assert np.allclose(module(input_ids=__import__("torch").tensor([ids])).logits.detach().numpy(),
                       model(input_ids=__import__("torch").tensor([ids])).logits.detach().numpy(), atol=1e-6)
