"""Hugging Face model directories: found, checked and loaded strictly offline.

A model is a directory with `config.json`, weights (`*.safetensors`, or `pytorch_model.bin`) and
tokenizer files; given as a path, as `hf:/path`, or inside an MLflow `transformers` model
(`models:/NAME/VERSION`, resolved by models.py). Compute nodes have no internet, so nothing here
may reach the Hub: `HF_HUB_OFFLINE=1` is set for the process and every `from_pretrained` passes
`local_files_only=True`. Everything that can be refused is refused before any weights load:
missing files, a model that needs remote code (unless the operator allows it), a task that does
not fit the architecture, a tokenizer whose ids run past the model's vocabulary, and a model
whose weights would not fit the device's free memory (estimated from the safetensors headers).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from aifactory.common.envvars import HF_ALLOW_REMOTE_CODE

from ..errors import ModelError
from ..layout import FEATURE_EXTRACTION, TEXT_CLASSIFICATION, TEXT_GENERATION, TEXT_TASKS

HF_PREFIX = "hf:"
CONFIG_FILE = "config.json"
#: a tokenizer directory has one of these (tokenizer.json for fast tokenizers, or a slow vocab)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
#: the environment every load runs in: the Hub is never asked, not even for a version check
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def go_offline():
    """Switch the Hugging Face libraries to offline mode for this process (idempotent); also quiet
    their per-load progress bars and advice, which would fill a Slurm job's log."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def is_text_model_source(source) -> bool:
    """`hf:...`, or a directory: the only models that are directories are Hugging Face ones (an
    incomplete one is then refused by open_model_dir, naming what it lacks)."""
    source = str(source or "")
    if source.startswith(HF_PREFIX):
        return True
    if source.startswith(("models:/", "runs:/")):
        return False  # known only once downloaded (models.py looks at its flavors)
    return Path(source).is_dir()


def strip_prefix(source: str) -> Path:
    return Path(source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source)


@dataclass
class TextModel:
    """A checked Hugging Face model directory; the weights load per backend (precision, device)."""

    name: str
    source: str  # what the user gave (a path, hf:/path, models:/...)
    path: Path  # the model directory
    task: str  # text-generation | text-classification | feature-extraction
    config: dict  # config.json
    tokenizer_path: Path
    trust_remote_code: bool = False
    kind: str = "hf"
    input_shape: tuple | None = None  # the suite's numeric-model fields: text models have none
    input_dtype: str | None = None
    is_torch: bool = True
    is_text: bool = True
    output: None = None  # no scored tensor output: text/run.py reads tokens, logits and embeddings itself
    notes: list = field(default_factory=list)

    # -- what the config says, without loading anything --------------------------------------
    @property
    def architectures(self) -> list:
        return list(self.config.get("architectures") or [])

    @property
    def vocab_size(self) -> int | None:
        return _text_config(self.config).get("vocab_size")

    @property
    def context_length(self) -> int | None:
        """Longest sequence (prompt + generated tokens) the model's positions cover."""
        text = _text_config(self.config)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
            if isinstance(text.get(key), int):
                return text[key]
        return None

    def kv_cache_bytes_per_token(self, precision="fp32") -> int | None:
        """Bytes of KV cache one token occupies: 2 (K, V) x layers x KV heads x head dim x dtype."""
        text = _text_config(self.config)
        layers = text.get("num_hidden_layers") or text.get("n_layer")
        heads = text.get("num_attention_heads") or text.get("n_head")
        hidden = text.get("hidden_size") or text.get("n_embd")
        if not (layers and heads and hidden) or self.task != TEXT_GENERATION:
            return None
        kv_heads = text.get("num_key_value_heads") or heads
        head_dim = text.get("head_dim") or hidden // heads
        return 2 * layers * kv_heads * head_dim * PRECISION_BYTES.get(precision, 4)

    @cached_property
    def weight_bytes_on_disk(self) -> tuple[int, int | None]:
        """(bytes of the weight files, parameter count where the safetensors headers tell it)."""
        return weights_size(self.path)

    def weight_bytes(self, precision) -> int:
        """Bytes the weights take in memory at `precision` (the file's own size if the count is unknown)."""
        on_disk, params = self.weight_bytes_on_disk
        return params * PRECISION_BYTES[precision] if params else on_disk

    # -- loading ---------------------------------------------------------------------------
    @cached_property
    def tokenizer(self):
        """The tokenizer, loaded once and checked against the model's vocabulary."""
        return load_tokenizer(self)

    def check_fits(self, precision, device, where):
        """Refuse, with the numbers, a model whose weights exceed the device's free memory."""
        need = self.weight_bytes(precision)
        free = free_memory_bytes(device)
        if free is not None and need > free:
            raise ModelError(f"{where}: {self.path}: the weights need {need / 2**30:.2f} GiB at {precision} "
                             f"({_param_text(self)}) but {device} has {free / 2**30:.2f} GiB free; use a lower "
                             "precision, a larger device, or a smaller model")

    def load_module(self, precision, device, where):
        """The torch module for this task at `precision` on `device`, from local files only."""
        import torch

        self.check_fits(precision, device, where)
        go_offline()
        cls = auto_class(self.task)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        try:
            module = cls.from_pretrained(self.path, local_files_only=True, dtype=dtype,
                                         trust_remote_code=self.trust_remote_code)
        except Exception as err:  # noqa: BLE001 - transformers raises many types for a bad checkpoint
            raise ModelError(f"{where}: cannot load {self.path} as {cls.__name__}: {_first_line(err)}") from err
        return module.to(device).eval()


def auto_class(task):
    import transformers

    return {TEXT_GENERATION: transformers.AutoModelForCausalLM,
            TEXT_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
            FEATURE_EXTRACTION: transformers.AutoModel}[task]


def _text_config(config: dict) -> dict:
    """Multimodal configs keep the language model's fields under text_config."""
    return config.get("text_config") or config


def _first_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:400] if text else ''}"


def _param_text(model):
    params = model.weight_bytes_on_disk[1]
    return f"{params / 1e9:.2f} B parameters" if params else "size of the weight files"


# -- checks before loading ---------------------------------------------------------------------
def open_model_dir(cfg, source=None, where="model.path", tokenizer_dir=None) -> TextModel:
    """Check a Hugging Face directory and return it as a TextModel; nothing heavy is loaded."""
    source = source or cfg.path
    go_offline()  # before transformers looks at anything: compute nodes have no internet
    path = strip_prefix(source).expanduser()
    if not path.exists():
        raise ModelError(f"{where}: {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"{where}: {path} is a file; a Hugging Face model is a directory with {CONFIG_FILE}, "
                         "weights and tokenizer files")
    config = _read_config(path, where)
    tokenizer_path = Path(tokenizer_dir or cfg.tokenizer or path)
    _check_files(path, tokenizer_path, where)
    trust = _check_remote_code(path, tokenizer_path, config, cfg.trust_remote_code, where)
    task = resolve_task(cfg.task, config, path, where)
    name = cfg.name or path.name
    return TextModel(name=name, source=str(source), path=path, task=task, config=config,
                     tokenizer_path=tokenizer_path, trust_remote_code=trust)


def _read_config(path, where):
    file = path / CONFIG_FILE
    if not file.exists():
        raise ModelError(f"{where}: {path} has no {CONFIG_FILE}: not a Hugging Face model directory "
                         "(save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))")
    try:
        config = json.loads(file.read_text())
    except ValueError as err:
        raise ModelError(f"{where}: {file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: {file}: expected a JSON object")
    return config


def _check_files(path, tokenizer_path, where):
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()):
        raise ModelError(f"{where}: {path} has no weights (*.safetensors or pytorch_model.bin)")
    if not tokenizer_path.is_dir() or not any((tokenizer_path / f).exists() for f in TOKENIZER_FILES):
        field_name = "model.tokenizer" if tokenizer_path != path else where
        raise ModelError(f"{field_name}: {tokenizer_path} has no tokenizer files (expected one of "
                         f"{', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model or set model.tokenizer")


def needs_remote_code(config: dict) -> str | None:
    """Why a config needs the model's own Python code (auto_map, or a model_type transformers lacks)."""
    if config.get("auto_map"):
        return f"auto_map {json.dumps(config['auto_map'])[:200]}"
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type and model_type not in CONFIG_MAPPING_NAMES:
        return f"model_type {model_type!r}, which this transformers does not know"
    return None


def _check_remote_code(path, tokenizer_path, config, requested, where):
    reasons = [f"{path / CONFIG_FILE}: {r}" for r in [needs_remote_code(config)] if r]
    tok_config = tokenizer_path / "tokenizer_config.json"
    if tok_config.exists():
        try:
            if json.loads(tok_config.read_text()).get("auto_map"):
                reasons.append(f"{tok_config}: auto_map")
        except ValueError:
            pass
    if not reasons:
        return False
    allowed = HF_ALLOW_REMOTE_CODE.get() == "1"
    if requested and allowed:
        return True
    why = ("the operator has not allowed it (AIF_HF_ALLOW_REMOTE_CODE=1)" if not allowed
           else "model.trust_remote_code is not set")
    raise ModelError(f"{where}: the model needs its own Python code to load ({'; '.join(reasons)}); refused: "
                     f"{why}. Remote code runs with your account's rights; it is allowed only where the "
                     "operator allows it and the config says model.trust_remote_code: true")


def architecture_task(architectures) -> str | None:
    """The task an architecture class implements (LlamaForCausalLM -> text-generation)."""
    from transformers.models.auto import modeling_auto as auto

    mappings = ((TEXT_GENERATION, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                (TEXT_CLASSIFICATION, auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
                (FEATURE_EXTRACTION, auto.MODEL_MAPPING_NAMES))
    for name in architectures:
        for task, mapping in mappings:
            if name in set(_names(mapping.values())):
                return task
        if name.endswith("ForCausalLM"):
            return TEXT_GENERATION
        if name.endswith("ForSequenceClassification"):
            return TEXT_CLASSIFICATION
    return None


def _names(values):
    for value in values:
        yield from (value if isinstance(value, (list, tuple)) else [value])


def resolve_task(requested, config, path, where):
    """The task from config.json's architectures; a requested task must fit the architecture."""
    found = architecture_task(config.get("architectures") or [])
    field_name = where.rsplit(".", 1)[0] + ".task" if "." in where else "model.task"
    if requested in (None, "auto"):
        if found is None:
            raise ModelError(f"{field_name}: {path / CONFIG_FILE} names no architecture the suite knows "
                             f"({config.get('architectures')}); set model.task to one of {', '.join(TEXT_TASKS)}")
        return found
    if requested == FEATURE_EXTRACTION or requested == found:
        return requested  # any transformer gives hidden states; a head must match its task
    raise ModelError(f"{field_name}: {requested} does not fit {path / CONFIG_FILE}: its architecture "
                     f"{', '.join(config.get('architectures') or ['(none)'])} is a {found or 'unknown'} model")


# -- tokenizer ---------------------------------------------------------------------------------
def load_tokenizer(model: TextModel):
    from transformers import AutoTokenizer

    go_offline()
    try:
        tok = AutoTokenizer.from_pretrained(model.tokenizer_path, local_files_only=True,
                                            trust_remote_code=model.trust_remote_code)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"model.tokenizer: cannot load the tokenizer in {model.tokenizer_path}: "
                         f"{_first_line(err)}") from err
    vocab = model.vocab_size
    if vocab is not None and len(tok) > vocab:
        raise ModelError(f"model.tokenizer: the tokenizer in {model.tokenizer_path} has {len(tok)} tokens but "
                         f"{model.path / CONFIG_FILE} has vocab_size {vocab}: ids past {vocab - 1} have no "
                         "embedding; this tokenizer does not belong to this model")
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token  # batches need a pad id; padded positions are masked out
        model.notes.append("tokenizer has no pad token: eos is used for padding (masked)")
    if model.task == TEXT_GENERATION:
        tok.padding_side = "left"  # batched generation continues every row from its last real token
    return tok


# -- memory ------------------------------------------------------------------------------------
def weights_size(path: Path) -> tuple[int, int | None]:
    """(bytes of the weight files, parameter count from the safetensors headers or None)."""
    on_disk, params, complete = 0, 0, True
    for file in sorted(path.iterdir()):
        if file.suffix not in WEIGHT_SUFFIXES or not file.is_file():
            continue
        on_disk += file.stat().st_size
        count = safetensors_parameters(file) if file.suffix == ".safetensors" else None
        complete = complete and count is not None
        params += count or 0
    return on_disk, (params if complete and params else None)


def safetensors_parameters(file: Path) -> int | None:
    """Parameters declared in a safetensors header (8-byte length, then JSON); None if unreadable."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2**20:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        count = 1
        for dim in entry.get("shape", []):
            count *= int(dim)
        total += count
    return total


def free_memory_bytes(device) -> int | None:
    """Free memory of the device a model would load on: host RAM available, or CUDA's free bytes."""
    if str(device).startswith("cuda"):
        try:
            import torch

            index = int(str(device).split(":")[1]) if ":" in str(device) else 0
            return int(torch.cuda.mem_get_info(index)[0])
        except Exception:  # noqa: BLE001 - no CUDA: the backend's device check reports that
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


# -- MLflow's transformers flavor --------------------------------------------------------------
def mlflow_model_dirs(local: Path, flavor: dict) -> tuple[Path, Path | None]:
    """(model directory, tokenizer directory) inside a downloaded MLflow `transformers` model."""
    model_dir = local / flavor.get("model_binary", "model")
    tokenizer_dir = local / "components" / "tokenizer"
    return model_dir, (tokenizer_dir if tokenizer_dir.is_dir() else None)
