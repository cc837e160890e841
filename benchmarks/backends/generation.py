"""What every generative backend shares: the token stream it reports to, padding, per-row budgets.

The token-scenario SUT (scenarios/generation.py) and accuracy both drive a generative backend
through one method, `generate(batch, stream)`: `batch` holds token ids per row and each row's
token budget; the backend calls `stream.first_token(row, token)` the moment a row's first
generated token exists, `stream.token(row)` for every later token, and `stream.done(row, ids)`
when the row is complete (its budget reached or eos produced), and returns the ids per row. A
backend of any kind (in-process torch, ONNX Runtime, an OpenAI-compatible endpoint streaming
chunks) fits this: it is the one interface the token metrics depend on.
"""

from __future__ import annotations

import numpy as np


#: tokens every answer has in the token scenarios: LoadGen defines TPOT only for n_tokens > 1 and
#: logs an error for a one-token response (the backends mask eos for the first two tokens there)
MIN_SCENARIO_TOKENS = 2


class KVCacheAccount:
    """The KV cache a generative backend's static batches held at their largest (kv_cache_peak_mb).

    Set `kv_bytes_per_token` from the model's config; call `note_kv(rows, tokens_per_row)` per batch."""

    kv_bytes_per_token = 0
    peak_kv_tokens = 0

    def note_kv(self, rows, tokens_per_row):
        self.peak_kv_tokens = max(self.peak_kv_tokens, rows * tokens_per_row)

    def kv_cache_peak_mb(self):
        if not self.kv_bytes_per_token:
            return None
        return self.peak_kv_tokens * self.kv_bytes_per_token / 2**20

    def reset_peak_kv(self):
        self.peak_kv_tokens = 0


class TokenStream:
    """Receives a batch's tokens as they are generated; this one records nothing (accuracy)."""

    def first_token(self, row, token):
        pass

    def token(self, row):
        pass

    def done(self, row, token_ids):
        pass


class RowTracker:
    """Per-row bookkeeping of one generate call: counts, eos, budgets; reports to a TokenStream.

    A row ends at its own budget or at its first eos (kept as its last token: it was generated)
    and ignores whatever the batch produces for it after that (padding), so a static batch
    completes each request when that request, not the longest one, is done.
    """

    def __init__(self, budgets, eos_ids, stream: TokenStream | None, ignore_eos=False, min_tokens=0):
        self.budgets = [max(int(b), min_tokens) for b in budgets]
        self.eos = set() if ignore_eos else set(eos_ids)
        self.min_tokens = min_tokens  # eos does not end a row before this many tokens
        self.stream = stream or TokenStream()
        self.tokens = [[] for _ in self.budgets]
        self.finished = [False] * len(self.budgets)
        self.open = len(self.budgets)

    def step(self, tokens):
        """One decoding step's token per row (a list of ints, padding for finished rows)."""
        stream = self.stream
        for row, token in enumerate(tokens):
            if self.finished[row]:
                continue
            kept = self.tokens[row]
            kept.append(token)
            if len(kept) == 1:
                stream.first_token(row, token)
            else:
                stream.token(row)
            if (token in self.eos and len(kept) >= self.min_tokens) or len(kept) >= self.budgets[row]:
                self._finish(row)

    def _finish(self, row):
        self.finished[row] = True
        self.open -= 1
        self.stream.done(row, self.tokens[row])

    @property
    def all_done(self):
        return self.open == 0

    def close(self):
        """End rows the generator stopped early (a max_length cap); each is completed exactly once."""
        for row, finished in enumerate(self.finished):
            if not finished:
                self._finish(row)
        return [np.asarray(t, dtype=np.int64) for t in self.tokens]


def left_pad(rows, pad_id):
    """(ids, attention_mask) int64 arrays, rows right-aligned: every row continues from its last token."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


def right_pad(rows, pad_id):
    """(ids, attention_mask) for encoders, rows left-aligned as they were trained."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def eos_ids(*candidates):
    """Every eos id named by a generation config / tokenizer (an int, a list, or None)."""
    out = []
    for value in candidates:
        if value is None:
            continue
        out.extend(value if isinstance(value, (list, tuple)) else [value])
    return sorted({int(v) for v in out})


def sample_numpy(logits, cfg, rng):
    """Next token per row from float logits (rows, vocab): greedy, or seeded temperature/top-k/top-p."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    scaled = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k:
        kth = np.partition(scaled, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if cfg.top_p < 1:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        keep = np.cumsum(sorted_probs, -1) - sorted_probs < cfg.top_p
        mask = np.zeros_like(keep)
        np.put_along_axis(mask, order, keep, -1)
        probs = np.where(mask, probs, 0)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])
