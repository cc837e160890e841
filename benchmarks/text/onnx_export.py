"""ONNX exports of Hugging Face text models (torch.onnx's dynamo exporter), cached per checkpoint.

- causal LMs: `model.onnx` (input_ids, attention_mask -> logits) and `model_with_past.onnx`
  (the same plus `past_key_values.{i}.key/value`, returning `logits` and `present.{i}.key/value`;
  a past of length 0 makes it the prefill step). Positions follow the attention mask, so
  left-padded batches work.
- encoders: `model.onnx` (input_ids, attention_mask[, token_type_ids] -> logits for a
  classification head, last_hidden_state for feature extraction).

The ONNX Runtime text backend uses exports found in the model directory (our reference builder's
names, or optimum's `onnx/` layout) and otherwise exports here once, into a cache keyed by the
checkpoint's files and the library versions, so the export is always checked against the torch
original it came from (agreement metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from aifactory.common.envvars import REFERENCE_CACHE

from ..errors import ModelError
from ..layout import TEXT_CLASSIFICATION, TEXT_GENERATION

EXPORT_FORMAT = 1  # bump when the exported graphs change
NO_CACHE, WITH_PAST, ENCODER = "model.onnx", "model_with_past.onnx", "model.onnx"


def cache_root() -> Path:
    """The suite's cache folder: AIF_REFERENCE_CACHE, else $XDG_CACHE_HOME/aifactory, else ~/.cache/aifactory."""
    explicit = REFERENCE_CACHE.get()
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aifactory"


def past_names(n_layers: int, prefix="past_key_values") -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def strip_onnx_metadata(path: Path) -> Path:
    """Drop per-node stack traces and Python namespaces the dynamo exporter writes: they name the
    caller's module, so the same graph would get different bytes depending on who exported it."""
    import onnx

    model = onnx.load(str(path))
    for graph in [model.graph, *(f for f in model.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
    onnx.save(model, str(path))
    return path


def _dims(**ranges):
    import torch

    return {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in ranges.items()}


def _lm_wrappers(model):
    import torch
    from transformers import DynamicCache

    n_layers = model.config.num_hidden_layers

    class NoCache(torch.nn.Module):
        """(input_ids, attention_mask) -> logits; positions follow the mask, so left padding works."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                           use_cache=False).logits

    class WithPast(torch.nn.Module):
        """Adds per-layer key/value inputs and presents; a past of length 0 makes it the prefill step."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, past):
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n_layers)], config=self.lm.config)
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past[0].shape[2]:]
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                          position_ids=pos, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    return NoCache(model).eval(), WithPast(model).eval()


def export_causal_lm(model, dest: Path) -> dict[str, Path]:
    """model.onnx (no cache) and model_with_past.onnx (KV cache in and out)."""
    import torch

    cfg = model.config
    n_layers = cfg.num_hidden_layers
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    context = cfg.max_position_embeddings
    d = _dims(batch=(1, 256), sequence=(1, context), past=(0, context - 1), total=(1, context))
    no_cache, with_past = _lm_wrappers(model)
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else 0
    ids = torch.full((2, 3), bos, dtype=torch.long)
    past = tuple(torch.zeros(2, kv_heads, 5, head_dim) for _ in range(2 * n_layers))
    paths = {"no_cache": Path(dest) / NO_CACHE, "with_past": Path(dest) / WITH_PAST}
    common = dict(dynamo=True, external_data=False, optimize=True, verbose=False)
    seq = {0: d["batch"], 1: d["sequence"]}
    torch.onnx.export(no_cache, (ids, torch.ones_like(ids)), paths["no_cache"],
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes=(seq, seq), **common)
    torch.onnx.export(with_past, (ids, torch.ones(2, 8, dtype=torch.long), past), paths["with_past"],
                      input_names=["input_ids", "attention_mask", *past_names(n_layers)],
                      output_names=["logits", *past_names(n_layers, "present")],
                      dynamic_shapes=(seq, {0: d["batch"], 1: d["total"]},
                                      tuple({0: d["batch"], 2: d["past"]} for _ in past)), **common)
    for path in paths.values():
        strip_onnx_metadata(path)
    return paths


def encoder_input_names(model) -> list[str]:
    """input_ids, attention_mask, and token_type_ids where the model has segment embeddings."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


def export_encoder(model, dest: Path, task: str) -> Path:
    """model.onnx: the encoder's inputs -> logits (classification) or last_hidden_state (embeddings)."""
    import torch

    names = encoder_input_names(model)
    output = "logits" if task == TEXT_CLASSIFICATION else "last_hidden_state"

    class Encoder(torch.nn.Module):  # explicit arguments: the exporter maps dynamic shapes onto them
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, input_ids, attention_mask):
            return getattr(self.enc(input_ids=input_ids, attention_mask=attention_mask), output)

    class SegmentEncoder(Encoder):
        def forward(self, input_ids, attention_mask, token_type_ids):
            return getattr(self.enc(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids), output)

    seq_len = 16
    ids = torch.ones(2, seq_len, dtype=torch.long)
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(names)]
    context = getattr(model.config, "max_position_embeddings", 512)
    d = _dims(batch=(1, 1024), sequence=(2, context))
    shape = {0: d["batch"], 1: d["sequence"]}
    path = Path(dest) / ENCODER
    wrapper = SegmentEncoder(model) if "token_type_ids" in names else Encoder(model)
    torch.onnx.export(wrapper.eval(), example, path, dynamo=True, input_names=names, output_names=[output],
                      dynamic_shapes=tuple(shape for _ in names), external_data=False, optimize=True, verbose=False)
    return strip_onnx_metadata(path)


# -- finding or making an export ---------------------------------------------------------------
def shipped_exports(model_dir: Path, task: str) -> dict | None:
    """Exports already beside the checkpoint: ours (model_with_past.onnx) or optimum's onnx/ folder."""
    model_dir = Path(model_dir)
    if task == TEXT_GENERATION:
        for folder in (model_dir, model_dir / "onnx"):
            if (folder / WITH_PAST).exists():
                return {"with_past": folder / WITH_PAST}
            if folder.name == "onnx" and (folder / NO_CACHE).exists() and _has_past_inputs(folder / NO_CACHE):
                return {"with_past": folder / NO_CACHE}  # optimum's decoder takes past_key_values inputs
        return None
    for folder in (model_dir, model_dir / "onnx"):
        if (folder / ENCODER).exists():
            return {"encoder": folder / ENCODER}
    return None


def _has_past_inputs(path):
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(i.name.startswith("past_key_values") for i in graph.input)


def export_key(text_model) -> str:
    """Checkpoint files (name, size, mtime), config and library versions: a changed model re-exports."""
    from importlib.metadata import version

    parts = {"format": EXPORT_FORMAT, "task": text_model.task, "config": text_model.config,
             "versions": {n: version(n) for n in ("torch", "transformers", "onnx", "onnxscript")}}
    files = []
    for file in sorted(Path(text_model.path).iterdir()):
        if file.is_file() and file.suffix in (".safetensors", ".bin"):
            stat = file.stat()
            files.append([file.name, stat.st_size, stat.st_mtime_ns])
    parts["files"] = files
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def onnx_exports(text_model, where="backend") -> dict:
    """The ONNX files for a text model: shipped beside it, else exported once into the cache."""
    found = shipped_exports(text_model.path, text_model.task)
    if found:
        return found
    folder = cache_root() / "onnx" / f"{text_model.path.name}-{export_key(text_model)}"
    expected = {"with_past": folder / WITH_PAST} if text_model.task == TEXT_GENERATION else {"encoder": folder / ENCODER}
    if all(p.exists() for p in expected.values()):
        return expected
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        module = text_model.load_module("fp32", "cpu", where)
        if text_model.task == TEXT_GENERATION:
            export_causal_lm(module, tmp)
        else:
            export_encoder(module, tmp, text_model.task)
        if folder.exists():  # another process finished first: keep theirs
            return expected
        tmp.rename(folder)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter's many failure types
        raise ModelError(f"{where}: cannot export {text_model.path} to ONNX: {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:400] if str(err).strip() else ''}") from err
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return expected
