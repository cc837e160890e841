"""Accuracy of text models, each figure with a 95% bootstrap confidence interval.

- text-generation: exact match (the decoded continuation equals the reference, character for
  character) and ROUGE-1/2/L F-measure (Google's `rouge-score`, the implementation lm-eval uses
  too) per prompt; perplexity on a text file: exp(total next-token NLL / scored tokens) over
  non-overlapping blocks, its CI by resampling blocks.
- text-classification: accuracy and macro F1/precision/recall (accuracy.py, scikit-learn).
- agreement with the reference backend: the share of prompts whose generated tokens are identical
  under greedy decoding, and the largest difference of next-token logits after each prompt.
"""

from __future__ import annotations

import numpy as np

from ..accuracy import bootstrap_ci
from ..errors import AccuracyError, DataError
from ..layout import Metrics

ROUGE_TYPES = {"rouge1": Metrics.ROUGE_1, "rouge2": Metrics.ROUGE_2, "rougeL": Metrics.ROUGE_L}


def _mean_with_ci(name, values, cfg):
    values = np.asarray(values, dtype=np.float64)
    out = {name: float(values.mean())}
    if len(values) > 1 and np.ptp(values) > 0:
        out[Metrics.ci_low(name)], out[Metrics.ci_high(name)] = bootstrap_ci(
            (values,), lambda v, axis=-1: v.mean(axis=axis), cfg, paired=False)
    else:  # every sample the same: the bootstrap has nothing to resample
        out[Metrics.ci_low(name)] = out[Metrics.ci_high(name)] = float(values.mean()) if len(values) else 0.0
    return out


def generation_scores(generated, references):
    """Per prompt: exact (0/1) and each ROUGE F-measure."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    exact = np.array([g == r for g, r in zip(generated, references)], dtype=np.float64)
    rouge = {name: [] for name in ROUGE_TYPES.values()}
    for g, r in zip(generated, references):
        scores = scorer.score(r, g)  # (target, prediction)
        for key, name in ROUGE_TYPES.items():
            rouge[name].append(scores[key].fmeasure)
    return exact, {name: np.asarray(v) for name, v in rouge.items()}


def generation_metrics(generated, references, cfg) -> dict:
    if len(generated) != len(references):
        raise AccuracyError(f"data.reference: {len(references)} references but {len(generated)} generations")
    exact, rouge = generation_scores(generated, references)
    out = _mean_with_ci(Metrics.EXACT_MATCH, exact, cfg)
    for name, values in rouge.items():
        out.update(_mean_with_ci(name, values, cfg))
    return out


# -- perplexity --------------------------------------------------------------------------------
def perplexity_blocks(tokenizer, path, block, context):
    """The text file's token ids in non-overlapping rows of `block` tokens (the tail is dropped)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(f"accuracy.perplexity_text: {path} does not exist")
    if context and block > context:
        raise DataError(f"accuracy.perplexity_block: {block} tokens exceed the model's context of {context}")
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    n = len(ids) // block
    if n < 2:
        raise DataError(f"accuracy.perplexity_text: {path} holds {len(ids)} tokens, fewer than two blocks of "
                        f"{block}; give more text or a smaller accuracy.perplexity_block")
    return np.asarray(ids[: n * block], dtype=np.int64).reshape(n, block)


def perplexity(backend, blocks, cfg, batch=16) -> dict:
    """exp(summed NLL / scored tokens) over every block, with a CI from resampling blocks."""
    sums, counts = [], []
    for begin in range(0, len(blocks), batch):
        nll, count = backend.block_nll(blocks[begin:begin + batch])
        sums.append(nll)
        counts.append(count)
    sums, counts = np.concatenate(sums), np.concatenate(counts).astype(np.float64)
    if not np.isfinite(sums).all():
        raise AccuracyError(f"backend {backend.label}: NaN/inf log-likelihoods on the perplexity text")

    def statistic(s, c, axis=-1):
        return np.exp(s.sum(axis=axis) / c.sum(axis=axis))

    value = float(statistic(sums, counts))
    low, high = bootstrap_ci((sums, counts), statistic, cfg, paired=True)
    return {Metrics.PERPLEXITY: value, Metrics.ci_low(Metrics.PERPLEXITY): float(low),
            Metrics.ci_high(Metrics.PERPLEXITY): float(high)}


# -- agreement ---------------------------------------------------------------------------------
def generation_agreement(reference_ids, ids, reference_logits, logits, cfg) -> dict:
    """Share of prompts with identical generated tokens, and the largest next-token logit difference."""
    same = np.array([np.array_equal(a, b) for a, b in zip(reference_ids, ids)], dtype=np.float64)
    out = _mean_with_ci(Metrics.AGREEMENT_TOKENS, same, cfg)
    if reference_logits is None or logits is None:
        return out
    diff = np.abs(reference_logits.astype(np.float64) - logits.astype(np.float64)).max(axis=1)
    out[Metrics.AGREEMENT_MAX_ABS_DIFF] = float(diff.max())
    return out


def embedding_agreement(reference, vectors) -> dict:
    """Feature extraction: the lowest cosine similarity between the backends' embeddings of a text."""
    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return {Metrics.AGREEMENT_COSINE: float((a * b).sum(1).min()),
            Metrics.AGREEMENT_MAX_ABS_DIFF: float(np.abs(reference - vectors).max())}
