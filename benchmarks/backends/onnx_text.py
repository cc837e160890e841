"""ONNX Runtime for Hugging Face text models: a KV-cache decode loop for causal LMs, encoders forward.

Selected by `kind: onnxruntime` when the model is a Hugging Face directory (registry.TEXT_BACKENDS).
The graphs come from text/onnx_export.py: exports shipped beside the checkpoint, else exported
once from the torch original (so agreement with torch is a real check of the export). Inputs are
bound by name: `input_ids`, `attention_mask`, `token_type_ids`, `position_ids` when the graph has
it, and `past_key_values.{i}.key/value` fed back from `present.{i}.key/value` each step; a past of
length 0 is the prefill. Greedy decoding is the same argmax torch takes; sampling is seeded numpy.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, ModelError
from ..layout import TEXT_GENERATION
from .base import Backend
from .devices import cuda_index, resolve_device
from .generation import KVCacheAccount, RowTracker, TokenStream, eos_ids, left_pad, right_pad, sample_numpy
from .onnxruntime import GPU_PROVIDERS, OnnxRuntimeBackend

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


class OnnxTextBackend(KVCacheAccount, OnnxRuntimeBackend):
    """Same kind, label and provider handling as the ONNX Runtime backend; text-model sessions."""

    def __init__(self, cfg, model, where):
        Backend.__init__(self, cfg, model, where)
        import onnxruntime as ort

        from ..text.onnx_export import onnx_exports

        self.ort = ort
        self._tmpdir = None
        self.task = model.task
        self.tokenizer = model.tokenizer
        self.config = model.config
        if cfg.precision != "fp32":
            raise BackendError(f"{where}.precision: ONNX Runtime runs the text model's fp32 export; use "
                               "backend transformers for fp16/bf16")
        self.providers = self._providers()
        self.device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        if self.device == "cuda":
            self.device_id = cuda_index(resolve_device(cfg.device, where))
        self.label = f"onnxruntime:{self.providers[0]}"
        files = onnx_exports(model, where)
        self.path = files.get("with_past") or files.get("encoder")
        self.session = self._session(self.path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_inputs = [n for n in self.input_names if n.startswith(PAST_PREFIX)]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos = eos_ids(self.config.get("eos_token_id"), self.tokenizer.eos_token_id)
        self.generation = None
        self.min_new_tokens = 0  # the token scenarios ask for 2 (LoadGen's TPOT needs n_tokens > 1)
        self.kv_bytes_per_token = model.kv_cache_bytes_per_token("fp32")
        if self.task == TEXT_GENERATION and not self.past_inputs:
            raise ModelError(f"{where}: {self.path} has no {PAST_PREFIX}* inputs: the decode loop needs a graph "
                             "with a KV cache (export with text/onnx_export.py)")

    def _session(self, path):
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        if self.cfg.threads:
            options.intra_op_num_threads = self.cfg.threads
            options.inter_op_num_threads = 1
        try:
            return self.ort.InferenceSession(str(path), options, providers=self._provider_options())
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelError(f"{self.where}: ONNX Runtime cannot load {path}: {err}") from None

    def configure_generation(self, generation):
        self.generation = generation

    def stage(self, x):
        return x

    # -- encoders ----------------------------------------------------------------------------------
    def infer(self, batch):
        if self.task == TEXT_GENERATION:
            return self.generate(batch)
        ids, mask = right_pad(list(batch.ids), self.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        out = self.session.run(None, feeds)[0]
        if out.ndim == 3:  # last_hidden_state: masked mean, as the torch backend pools
            weights = mask[..., None].astype(out.dtype)
            out = (out * weights).sum(1) / np.maximum(weights.sum(1), 1)
        return out

    def to_numpy(self, out):
        if isinstance(out, list):
            return np.zeros((len(out), 1), dtype=np.float32)
        return np.asarray(out, dtype=np.float32)

    # -- causal LMs ----------------------------------------------------------------------------------
    def _empty_past(self, rows):
        text = self.config.get("text_config") or self.config
        heads = text.get("num_key_value_heads") or text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        return {name: np.zeros((rows, heads, 0, head_dim), dtype=np.float32) for name in self.past_inputs}

    def _forward(self, ids, mask, past):
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.clip(mask.cumsum(-1) - 1, 0, None)[:, -ids.shape[1]:]
        outputs = self.session.run(None, feeds)
        named = dict(zip(self.output_names, outputs))
        present = {PAST_PREFIX + n[len(PRESENT_PREFIX):]: v for n, v in named.items() if n.startswith(PRESENT_PREFIX)}
        return named["logits"], present

    def generate(self, batch, stream: TokenStream | None = None):
        cfg = self.generation
        ids, mask = left_pad(list(batch.ids), self.pad_id)
        tracker = RowTracker(batch.max_new_tokens, self.eos, stream, ignore_eos=cfg.ignore_eos,
                             min_tokens=self.min_new_tokens)
        budgets = tracker.budgets
        rng = np.random.default_rng(cfg.seed)
        self.note_kv(len(budgets), ids.shape[1] + max(budgets))
        past, x = self._empty_past(len(ids)), ids
        for step in range(max(budgets)):
            logits, past = self._forward(x, mask, past)
            last = logits[:, -1].copy()
            if (cfg.ignore_eos or step < self.min_new_tokens) and self.eos:
                last[:, self.eos] = -np.inf  # as min_new_tokens does in transformers
            tokens = sample_numpy(last, cfg, rng)
            tracker.step(tokens.tolist())
            if tracker.all_done:
                break
            x = tokens[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
        return tracker.close()

    def last_logits(self, batch):
        ids, mask = left_pad(list(batch.ids), self.pad_id)
        logits, _ = self._forward(ids, mask, self._empty_past(len(ids)))
        return logits[:, -1].astype(np.float32)

    def block_nll(self, blocks):
        blocks = np.ascontiguousarray(blocks, dtype=np.int64)
        logits, _ = self._forward(blocks, np.ones_like(blocks), self._empty_past(len(blocks)))
        logits = logits[:, :-1].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
        picked = np.take_along_axis(logits, blocks[:, 1:, None], -1)[..., 0]
        return (log_z - picked).sum(-1), np.full(len(blocks), blocks.shape[1] - 1, dtype=np.int64)

    def warmup(self, staged, batch_sizes=(1,), iterations=3):
        if self.task != TEXT_GENERATION:
            return super().warmup(staged, batch_sizes, iterations)
        for size in batch_sizes:
            batch = staged[:size]
            self.generate(type(batch)(batch.ids, np.minimum(batch.max_new_tokens, 4), batch.token_type_ids))
