"""An OpenAI-compatible endpoint as a backend: the token scenarios measure a served model over HTTP.

Each row of a batch is one streamed `/v1/completions` request, sent concurrently (the server
batches them, as it would its users' requests). The prompt goes as the token ids the suite
tokenized (the model directory's tokenizer, chat template applied), so every backend sees the
same tokens. Timing follows the stream (server-sent events):

- the first token is the first chunk with non-empty text (a chat stream's first chunk carries only
  the role, and a byte-level token can end inside a UTF-8 character and arrive empty);
- later non-empty chunks are the inter-token stamps (ITL is between non-empty chunks);
- the token count is the server's `usage.completion_tokens` (`stream_options.include_usage`),
  never the number of chunks; the generated ids come from the server (`return_token_ids`) or,
  where it does not send them, from the local tokenizer on the text (logged once).

Temperature is always sent: vLLM samples at temperature 1 when a request omits it.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import BackendError, ConfigError
from .base import Backend
from .generation import TokenStream

log = logging.getLogger(__name__)
API_KEY_ENV = "OPENAI_API_KEY"


class EndpointBackend(Backend):
    kind = "endpoint"
    shorthand = "endpoint:URL"

    @classmethod
    def from_shorthand(cls, rest):
        return {"kind": "endpoint", "url": rest or None}

    @classmethod
    def config_label(cls, cfg):
        return "endpoint"

    @classmethod
    def validate_config(cls, cfg, where):
        url = urlparse(cfg.url or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"{where}.url: the endpoint's OpenAI base URL (http(s)://HOST/.../v1), got {cfg.url!r}")
        if cfg.api_key_file and not Path(cfg.api_key_file).expanduser().is_file():
            raise ConfigError(f"{where}.api_key_file: {cfg.api_key_file} is not a file")

    @classmethod
    def preflight(cls, cfg, model_kind, where):
        if model_kind != "hf":
            raise BackendError(f"{where}.kind: endpoint needs the served model's Hugging Face directory as "
                               "model.path (its tokenizer encodes the prompts and decodes the answers)")

    @classmethod
    def planned_device(cls, cfg):
        return "remote"

    def __init__(self, cfg, model, where):
        super().__init__(cfg, model, where)
        import httpx

        self.device = "remote"
        self.tokenizer = model.tokenizer
        self.url = cfg.url.rstrip("/")
        self.served_model = cfg.served_model
        key = Path(cfg.api_key_file).expanduser().read_text().strip() if cfg.api_key_file else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(600, connect=30),
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="aif-endpoint")
        self.generation = None
        self.min_new_tokens = 0
        self._told_tokenizer = False
        if not self.served_model:
            self.served_model = self._only_model(where)

    def _only_model(self, where):
        response = self.client.get(f"{self.url}/models")
        self._raise_for(response, "GET /models")
        ids = [m["id"] for m in response.json().get("data", [])]
        if len(ids) != 1:
            raise BackendError(f"{where}.served_model: {self.url} serves {ids or 'no models'}; name one")
        return ids[0]

    def configure_generation(self, generation):
        self.generation = generation

    def infer(self, batch):
        return self.generate(batch)

    def to_numpy(self, out):
        return np.zeros((len(out), 1), dtype=np.float32)

    def generate(self, batch, stream: TokenStream | None = None):
        """One streamed request per row, all at once; returns the generated ids per row."""
        stream = stream or TokenStream()
        rows = list(range(len(batch.ids)))
        futures = [self.pool.submit(self._one, batch.ids[r], int(batch.max_new_tokens[r]), r, stream) for r in rows]
        return [f.result() for f in futures]

    def _body(self, ids, budget):
        cfg = self.generation
        budget = max(budget, self.min_new_tokens)
        body = {"model": self.served_model, "prompt": [int(i) for i in ids], "max_tokens": budget, "stream": True,
                "stream_options": {"include_usage": True}, "return_token_ids": True,
                "temperature": cfg.temperature if cfg and cfg.do_sample else 0.0}
        if cfg and cfg.do_sample:
            body.update(top_p=cfg.top_p, seed=cfg.seed, **({"top_k": cfg.top_k} if cfg.top_k else {}))
        if cfg and cfg.ignore_eos:
            body["ignore_eos"] = True
        if self.min_new_tokens:
            body["min_tokens"] = min(self.min_new_tokens, budget)
        return body

    def _one(self, ids, budget, row, stream):
        text, token_ids, usage, first = [], [], None, True
        with self.client.stream("POST", f"{self.url}/completions", json=self._body(ids, budget)) as response:
            if response.status_code != 200:
                response.read()
                self._raise_for(response, "POST /completions")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    token_ids += choice.get("token_ids") or []
                    piece = choice.get("text") or ""
                    if not piece:
                        continue
                    text.append(piece)
                    if first:
                        stream.first_token(row, token_ids[0] if token_ids else 0)
                        first = False
                    else:
                        stream.token(row)
        out = self._generated_ids(token_ids, "".join(text), usage)
        if first:  # nothing visible came back (e.g. only special tokens): the first token is the end
            stream.first_token(row, int(out[0]) if len(out) else 0)
        stream.done(row, out)
        return out

    def _generated_ids(self, token_ids, text, usage):
        count = (usage or {}).get("completion_tokens")
        if not token_ids:
            if not self._told_tokenizer:
                log.warning("%s sends no token ids: generated ids are the local tokenizer's encoding of the text",
                            self.url)
                self._told_tokenizer = True
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = np.asarray(token_ids, dtype=np.int64)
        if count is not None and count != len(ids):  # the server's count is the truth for token metrics
            ids = np.resize(ids, count) if len(ids) else np.zeros(count, dtype=np.int64)
        return ids

    @staticmethod
    def _raise_for(response, what):
        if response.status_code == 200:
            return
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except ValueError:
            message = response.text
        raise BackendError(f"endpoint {what}: HTTP {response.status_code}: {str(message)[:300]}")

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
