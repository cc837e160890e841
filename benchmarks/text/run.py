"""One text backend inside a benchmark: its Accuracy child, then its scenarios (runner.py calls this).

text-generation: accuracy = exact match and ROUGE on prompt/reference pairs, perplexity on a text
file, lm-eval tasks (transformers backend), agreement with the first backend (identical greedy
tokens, next-token logits); scenarios = SingleStream, Server and Offline with token latencies
(scenarios/generation.py). Encoders (text-classification, feature-extraction) go through the
suite's classic scenarios and accuracy: their staged data (token ids per text) is indexed like a
tensor, and the backend pads what it receives.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from .. import accuracy as acc
from ..backends import create_backend
from ..errors import ModelError, quoted
from ..layout import (ACCURACY, CLASSIFICATION, FEATURE_EXTRACTION, MULTI_STREAM, OFFLINE, TEXT_CLASSIFICATION,
                      TEXT_GENERATION, TOKEN_SCENARIOS, Artifacts, Metrics, Params, Tags)
from ..result import ChildResult
from . import metrics as text_metrics
from .data import label_ids, length_statistics, load_text_dataset, tokenize

log = logging.getLogger(__name__)


def load_text_data(config, model):
    """The dataset for a text model's task, tokenized once (before any clock runs)."""
    dataset = load_text_dataset(config.data, model.task)
    dataset.tokenized = tokenize(dataset, model, config.generation)
    if model.task == TEXT_CLASSIFICATION and dataset.labels is not None:
        dataset.label_ids = label_ids(dataset.labels, model, dataset.source)
    return dataset


def scenarios_of(config, task):
    """The configured scenarios a task runs: generation has no MultiStream (LoadGen defines no token
    figures for it), so it is left out with a note."""
    names = list(config.scenario.scenarios)
    if task == TEXT_GENERATION:
        dropped = [s for s in names if s not in TOKEN_SCENARIOS]
        if dropped:
            log.warning("text-generation runs %s; %s skipped (no token latencies in LoadGen for it)",
                        ", ".join(TOKEN_SCENARIOS), ", ".join(dropped))
        names = [s for s in names if s in TOKEN_SCENARIOS]
    return names


def batch_sizes(config, scenario):
    if scenario == OFFLINE and config.scenario.batch_sizes:
        return config.scenario.batch_sizes
    return [None]


def with_accuracy(config, dataset):
    lm = config.accuracy
    return lm.enabled and (dataset.y is not None or len(config.backends) > 1 or bool(lm.perplexity_text)
                           or bool(lm.lm_eval.tasks))


def total_steps(config, dataset):
    per_backend = sum(len(batch_sizes(config, s)) for s in scenarios_of(config, dataset.task))
    return len(config.backends) * (per_backend + int(with_accuracy(config, dataset)))


def run_backend(run, index):
    """Accuracy and scenarios of backends[index] on the benchmark's text model."""
    from ..models import load_model

    config = run.config
    cfg = config.backends[index]
    where = f"backends[{index}]"
    model = load_model(config.model, cfg.model, where=f"{where}.model") if cfg.model else run.model
    backend = create_backend(cfg, model, where)
    try:
        if hasattr(backend, "configure_generation"):
            backend.configure_generation(config.generation)
        staged = backend.stage(run.dataset.tokenized)
        _probe(backend, staged, model, run.dataset.task)
        params = config.flat_params(index)
        common = {Tags.BACKEND: backend.label, Tags.PRECISION: cfg.precision,
                  Tags.HARDWARE: _hardware(backend, run)}
        if config.scenario.slo_preset:
            common[Tags.SLO_PRESET] = config.scenario.slo_preset
        if with_accuracy(config, run.dataset):
            _accuracy(run, backend, staged, params, common)
        _scenarios(run, backend, staged, params, common)
    finally:
        backend.close()


def _hardware(backend, run):
    from ..fingerprint import hardware_tag

    return hardware_tag(backend.device, run.result.fingerprint)


def _probe(backend, staged, model, task):
    """One sample before LoadGen starts: a model that fails, fails here, naming backend and model."""
    try:
        if task == TEXT_GENERATION:
            backend.generate(type(staged)(staged.ids[:1], np.minimum(staged.max_new_tokens[:1], 2)))
        else:
            acc.check_finite(backend.to_numpy(backend.infer(staged[:1])), backend.label)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - the framework's own error, quoted in ours
        raise ModelError(f"{backend.where}: model {model.source} failed on one sample: {quoted(err)}") from err


# -- accuracy ------------------------------------------------------------------------------------
def _accuracy(run, backend, staged, params, common):
    run.steps.start(f"{backend.label}: accuracy")
    task = run.dataset.task
    if task == TEXT_GENERATION:
        metrics, files = _generation_accuracy(run, backend, staged)
    else:
        metrics, files = _encoder_accuracy(run, backend, staged)
    child = ChildResult(backend=backend.label, precision=backend.precision, scenario=ACCURACY, metrics=metrics,
                        params=params, tags={**common, Tags.SCENARIO: ACCURACY})
    run.writer.write_files(child, files)
    run._add(child)


def generate_all(backend, staged, batch):
    """Every prompt's generated ids, in dataset order, batched as the scenarios batch them."""
    order = np.lexsort((staged.lengths, staged.max_new_tokens))
    out = [None] * len(staged)
    for begin in range(0, len(order), batch):
        idx = order[begin:begin + batch]
        for i, ids in zip(idx, backend.generate(staged[idx])):
            out[int(i)] = ids
    return out


def _generation_accuracy(run, backend, staged):
    config, dataset = run.config, run.dataset
    cfg = config.accuracy
    ids = generate_all(backend, staged, config.generation.max_batch_size)
    texts = [backend.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    metrics = length_statistics([len(t) for t in ids], "output")
    records = [{"id": dataset.record_ids[i], "prompt": dataset.inputs[i], "generated": texts[i],
                "output_tokens": int(len(ids[i]))} for i in range(len(ids))]
    files = {}
    if dataset.references is not None:
        metrics.update(text_metrics.generation_metrics(texts, dataset.references, cfg))
        exact, rouge = text_metrics.generation_scores(texts, dataset.references)
        for i, record in enumerate(records):
            record.update(reference=dataset.references[i], **{Metrics.EXACT_MATCH: bool(exact[i])},
                          **{Metrics.ROUGE_L: float(rouge[Metrics.ROUGE_L][i])})
        files[Artifacts.PREDICTIONS] = {"correct": exact, Metrics.ROUGE_L: rouge[Metrics.ROUGE_L],
                                        "sample_index": np.arange(len(texts))}
    if cfg.perplexity_text:
        blocks = text_metrics.perplexity_blocks(backend.tokenizer, cfg.perplexity_text, cfg.perplexity_block,
                                                run.model.context_length)
        metrics.update(text_metrics.perplexity(backend, blocks, cfg))
    if cfg.lm_eval.tasks:
        metrics.update(_lm_eval(backend, cfg.lm_eval, files))
    # an endpoint returns text, not logits: its agreement with another backend is on tokens only
    logits = (np.concatenate([backend.last_logits(staged[i:i + 32]) for i in range(0, len(staged), 32)])
              if hasattr(backend, "last_logits") else None)
    if run.text_reference is None:
        run.text_reference = (ids, logits)
        run.result.metrics.update(metrics)
    else:
        metrics.update(text_metrics.generation_agreement(run.text_reference[0], ids, run.text_reference[1], logits,
                                                         cfg))
    files[Artifacts.GENERATIONS] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return metrics, files


def _lm_eval(backend, cfg, files):
    from .lmeval import run_lm_eval

    if not hasattr(backend, "module"):
        log.warning("accuracy.lm_eval: skipped on %s (lm-eval runs on the transformers backend)", backend.label)
        return {}
    metrics, raw = run_lm_eval(backend, cfg)
    files[Artifacts.LM_EVAL] = json.dumps(raw, indent=1)
    return metrics


def _encoder_accuracy(run, backend, staged):
    config, dataset = run.config, run.dataset
    cfg = config.accuracy
    scores = acc.predict_all(backend, staged, len(staged), min(cfg.batch_size, 64))
    metrics, files = {}, {}
    y_true = getattr(dataset, "label_ids", None)
    if dataset.task == TEXT_CLASSIFICATION:
        y_pred = scores.argmax(axis=1)
        if y_true is not None:
            metrics.update(acc.score(y_true, y_pred, CLASSIFICATION, cfg, backend.label))
        arrays = {"y_pred": y_pred, "scores": scores, "sample_index": np.arange(len(scores))}
        if y_true is not None:
            arrays["y_true"] = y_true
        files[Artifacts.PREDICTIONS] = arrays
    if run.reference_scores is None:
        run.reference_scores = scores
        run.result.metrics.update(metrics)
    elif dataset.task == FEATURE_EXTRACTION:
        metrics.update(text_metrics.embedding_agreement(run.reference_scores, scores))
    else:
        metrics.update(acc.agreement(run.reference_scores, scores, CLASSIFICATION, cfg, backend.label))
    return metrics, files


# -- scenarios -----------------------------------------------------------------------------------
def _scenarios(run, backend, staged, params, common):
    from ..scenarios import ScenarioRunner
    from ..scenarios.generation import TokenScenarioRunner

    config, task = run.config, run.dataset.task
    log_root = run.writer.scratch / backend.label.replace(":", "_").replace("/", "_")
    if task == TEXT_GENERATION:
        runner = TokenScenarioRunner(backend, staged, config.scenario, config.generation, log_root)
    else:
        runner = ScenarioRunner(backend, staged, len(staged), config.scenario, log_root)
    for scenario in scenarios_of(config, task):
        if scenario == MULTI_STREAM and task == TEXT_GENERATION:
            continue
        for size in batch_sizes(config, scenario):
            run.steps.start(f"{backend.label}: {scenario}" + (f" bs={size}" if size else ""))
            name = f"{scenario}-bs{size}" if size else scenario
            if task == TEXT_GENERATION:
                result = _token_scenario(runner, scenario, size, name)
            else:
                result = runner.run(scenario, batch_size=size, name=name)
            _add_scenario(run, backend, result, scenario, size, params, common)


def _token_scenario(runner, scenario, size, name):
    if size:  # the Offline sweep varies the static batch
        saved = runner.gcfg.max_batch_size
        runner.gcfg.max_batch_size = size
        try:
            return runner.run(scenario, name=name)
        finally:
            runner.gcfg.max_batch_size = saved
    return runner.run(scenario, name=name)


def _add_scenario(run, backend, result, scenario, size, params, common):
    tags = {**common, Tags.SCENARIO: scenario, Tags.RESULT_VALID: result.validity,
            Tags.EARLY_STOPPING: result.early_stopping[:5000], **getattr(result, "tags", {})}
    extra = {"loadgen": result.loadgen, "settings": result.settings}
    if size:
        tags[Tags.BATCH_SIZE] = str(size)
        extra["sweep"] = True
    if result.search:
        extra["server_search"] = result.search
    child_params = {**params, Params.BATCH_SIZE: result.batch_size}
    child = ChildResult(backend=backend.label, precision=backend.precision, scenario=scenario, metrics=result.metrics,
                        params=child_params, tags=tags, batch_size=result.batch_size, extra=extra)
    run.writer.write_scenario(child, result)
    run._add(child)
