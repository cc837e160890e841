"""Hugging Face transformers backend: causal LMs through `generate()` with a streamer, encoders forward.

Generation is transformers' own `model.generate`, so what is measured is what users run; a
streamer turns each decoding step into the stream's first_token / token / done calls (the first
`put()` after the prompt is the first generated token, as in MLPerf's llama2-70b SUT), and a
stopping criterion ends each row at its own budget. Every step's tokens are copied to the host
inside `generate` (`.cpu()`), so on a GPU a token is reported only once it exists.

Modes: `eager`, or `compile` (torch.compile of the forward with a static KV cache, the fast path
on GPUs). The model loads at the backend's precision and device from local files only.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import BackendError
from ..layout import TEXT_GENERATION
from .base import Backend
from .devices import resolve_device
from .generation import KVCacheAccount, RowTracker, TokenStream, eos_ids, left_pad, right_pad
from .pytorch import TorchCudaMemory

MODES = ("eager", "compile")


class TransformersBackend(KVCacheAccount, TorchCudaMemory, Backend):
    kind = "transformers"
    shorthand = "transformers[:eager|compile]"

    @classmethod
    def from_shorthand(cls, rest):
        return {"kind": "transformers", "mode": rest or "eager"}

    @classmethod
    def config_label(cls, cfg):
        return f"transformers:{cfg.mode}"

    @classmethod
    def preflight(cls, cfg, model_kind, where):
        if model_kind != "hf":
            raise BackendError(f"{where}.kind: transformers runs Hugging Face models (a directory with config.json, "
                               "hf:/DIR or an MLflow transformers model); use torch or onnxruntime for this model")
        super().preflight(cfg, model_kind, where)

    def __init__(self, cfg, model, where):
        super().__init__(cfg, model, where)
        import torch

        self.torch = torch
        if not getattr(model, "is_text", False):
            raise BackendError(f"{where}.kind: transformers cannot run {model.source}: not a Hugging Face model")
        self.device = resolve_device(cfg.device, where)
        if cfg.precision == "bf16" and self.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise BackendError(f"{where}.precision: bf16 is not supported on {torch.cuda.get_device_name()}")
        self._saved_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.task = model.task
        self.tokenizer = model.tokenizer
        self.module = model.load_module(cfg.precision, self.device, where)
        self.is_cuda = self.device.startswith("cuda")
        self.generation = None  # GenerationConfig, set by configure_generation
        self.min_new_tokens = 0  # the token scenarios ask for 2 (LoadGen's TPOT needs n_tokens > 1)
        self.kv_bytes_per_token = model.kv_cache_bytes_per_token(cfg.precision)
        self._compiled = cfg.mode == "compile"
        if self._compiled:
            self.module.forward = torch.compile(self.module.forward, dynamic=True)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        gen_cfg = getattr(self.module, "generation_config", None)
        self.eos = eos_ids(getattr(gen_cfg, "eos_token_id", None), self.tokenizer.eos_token_id)

    def configure_generation(self, generation):
        self.generation = generation

    # -- encoders: the suite's infer contract ----------------------------------------------------
    def _encoder_inputs(self, batch):
        ids, mask = right_pad(list(batch.ids), self.pad_id)
        torch = self.torch
        inputs = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": torch.from_numpy(mask).to(self.device)}
        if getattr(self.module.config, "type_vocab_size", 0):
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        return inputs

    def infer(self, batch):
        """Encoders: logits (classification) or mean-pooled embeddings (feature extraction)."""
        if self.task == TEXT_GENERATION:
            return self.generate(batch)
        with self.torch.inference_mode():
            inputs = self._encoder_inputs(batch)
            out = self.module(**inputs)
            if hasattr(out, "logits"):
                result = out.logits
            else:  # masked mean of the last hidden state: one vector per text
                mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
                result = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        self._sync()
        return result

    def to_numpy(self, out):
        if isinstance(out, list):  # generated ids: nothing to score as floats
            return np.zeros((len(out), 1), dtype=np.float32)
        return out.detach().float().cpu().numpy()

    def _sync(self):
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    # -- causal LMs ------------------------------------------------------------------------------
    def generate(self, batch, stream: TokenStream | None = None):
        """Generate for every row of `batch` (TokenizedPrompts); returns the generated ids per row."""
        torch = self.torch
        from transformers import StoppingCriteriaList

        cfg = self.generation
        ids, mask = left_pad(list(batch.ids), self.pad_id)
        tracker = RowTracker(batch.max_new_tokens, self.eos, stream, ignore_eos=cfg.ignore_eos,
                             min_tokens=self.min_new_tokens)
        budgets = tracker.budgets
        prompt_len = ids.shape[1]
        # rows of one budget (every SingleStream query) stop at max_new_tokens: no check per step
        stopping = StoppingCriteriaList([] if len(set(budgets)) == 1 else
                                        [_RowBudgets(prompt_len, torch.as_tensor(budgets, device=self.device))])
        self.note_kv(len(budgets), prompt_len + max(budgets))
        kwargs = dict(max_new_tokens=max(budgets), do_sample=cfg.do_sample, pad_token_id=self.pad_id,
                      streamer=_TrackerStreamer(tracker), stopping_criteria=stopping)
        if cfg.do_sample:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
            torch.manual_seed(cfg.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if cfg.ignore_eos:
            kwargs["min_new_tokens"] = max(budgets)
        elif self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self._compiled:
            kwargs["cache_implementation"] = "static"
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # generation-config chatter about unused sampling fields
            self.module.generate(input_ids=torch.from_numpy(ids).to(self.device),
                                 attention_mask=torch.from_numpy(mask).to(self.device), **kwargs)
        return tracker.close()

    def last_logits(self, batch):
        """Logits of the next token after each prompt (float32, rows x vocab): agreement between backends."""
        torch = self.torch
        ids, mask = left_pad(list(batch.ids), self.pad_id)
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        with torch.inference_mode():
            out = self.module(input_ids=torch.from_numpy(ids).to(self.device),
                              attention_mask=torch.from_numpy(mask).to(self.device),
                              position_ids=torch.from_numpy(positions).to(self.device), use_cache=False)
        return out.logits[:, -1].float().cpu().numpy()

    def block_nll(self, blocks):
        """(summed next-token negative log-likelihood, scored tokens) per row of an int64 block array."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(blocks)).to(self.device)
            logits = self.module(input_ids=x, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="none").view(len(x), -1).sum(-1)
        return nll.double().cpu().numpy(), np.full(len(blocks), blocks.shape[1] - 1, dtype=np.int64)

    def warmup(self, staged, batch_sizes=(1,), iterations=3):
        if self.task != TEXT_GENERATION:
            return super().warmup(staged, batch_sizes, iterations)
        for size in batch_sizes:
            batch = staged[:size]
            short = type(batch)(batch.ids, np.minimum(batch.max_new_tokens, 4), batch.token_type_ids)
            for _ in range(min(iterations, 2)):
                self.generate(short)

    def close(self):
        self.torch.set_num_threads(self._saved_threads)


class _TrackerStreamer:
    """transformers' streamer protocol (put/end) feeding a RowTracker; the first put is the prompt."""

    def __init__(self, tracker):
        self.step = tracker.step
        self.prompt_seen = False

    def put(self, value):
        if self.prompt_seen:
            self.step(value.tolist())
        else:
            self.prompt_seen = True

    def end(self):
        pass


class _RowBudgets:
    """A StoppingCriteria: each row stops at its own budget of new tokens (rows of different budgets)."""

    def __init__(self, prompt_len, limits):
        self.prompt_len, self.limits = prompt_len, limits

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.limits
