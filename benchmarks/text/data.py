"""Text datasets: prompts (with references), classification texts (with labels), chat messages.

Sources: JSONL/JSON lines, CSV, Parquet, a `.txt` file (one prompt per non-empty line) and a
folder written by `datasets`' `save_to_disk` (read with `load_from_disk`). Columns are named by
the config (`data.prompt`, `data.reference`, `data.text`, `data.messages`, `data.label`) or found
under their usual names. Tokenization happens here, before LoadGen's clock starts: every prompt
is checked against the model's context, and the token length distribution is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..layout import FEATURE_EXTRACTION, TEXT_CLASSIFICATION, TEXT_GENERATION, Metrics

DEFAULT_MAX_NEW_TOKENS = 64
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq", ".txt")


@dataclass
class TextDataset:
    """Records of one text task, in file order; `inputs` are strings or chat message lists."""

    name: str
    task: str
    inputs: list  # prompt strings / message lists (generation) or texts (classification, embeddings)
    references: list | None = None  # generation: the expected continuation
    labels: list | None = None  # classification: label names or ids as the file has them
    max_new_tokens: list | None = None  # per record, where the file sets it
    record_ids: list = field(default_factory=list)
    source: str = ""

    def __len__(self):
        return len(self.inputs)

    @property
    def y(self):
        """The suite's 'has labels' flag: references or labels, when present."""
        return self.labels if self.labels is not None else self.references


class TokenizedPrompts:
    """Token ids per record (numpy object array of int64 arrays) and each record's token budget.

    Indexed like a tensor (slices and integer arrays) so the scenario SUTs and accuracy batches
    treat it like any staged dataset; a backend pads what it gets.
    """

    def __init__(self, ids, max_new_tokens, token_type_ids=None):
        self.ids = ids
        self.max_new_tokens = np.asarray(max_new_tokens, dtype=np.int64)
        self.token_type_ids = token_type_ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            key = slice(int(key), int(key) + 1)
        types = self.token_type_ids[key] if self.token_type_ids is not None else None
        return TokenizedPrompts(self.ids[key], self.max_new_tokens[key], types)

    @property
    def lengths(self):
        return np.fromiter((len(i) for i in self.ids), dtype=np.int64, count=len(self.ids))

    @property
    def shape(self):  # what error messages quote for a staged batch
        return (len(self), int(self.lengths.max()) if len(self) else 0)

    dtype = np.dtype(np.int64)


# -- reading -----------------------------------------------------------------------------------
def load_text_dataset(cfg, task) -> TextDataset:
    path = Path(cfg.source)
    if not path.exists():
        raise DataError(f"data.source: {cfg.source} does not exist")
    if path.is_dir():
        rows, columns = _saved_dataset(path, cfg)
    elif path.suffix == ".txt":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows, columns = [{"prompt": line} for line in lines], ["prompt"]
    elif path.suffix in (".jsonl", ".json"):
        rows, columns = _jsonl(path)
    elif path.suffix in (".csv", ".parquet", ".pq"):
        rows, columns = _table(path)
    else:
        raise DataError(f"data.source: {path}: unsupported format for a text model; expected "
                        f"{', '.join(TABLE_SUFFIXES)} or a datasets.save_to_disk folder")
    if not rows:
        raise DataError(f"data.source: {path} has no records")
    if cfg.limit:
        rows = rows[: cfg.limit]
    return _records(rows, columns, cfg, task, path)


def _jsonl(path):
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"data.source: {path} line {number} is not valid JSON: {err}") from None
        if not isinstance(row, dict):
            raise DataError(f"data.source: {path} line {number}: expected a JSON object per line")
        rows.append(row)
    columns = sorted({k for row in rows for k in row})
    return rows, columns


def _table(path):
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"data.source: {path} cannot be read: {err}") from None
    rows = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    return rows, list(frame.columns)


def _plain(value):
    """Parquet lists (chat messages) arrive as numpy arrays of dicts: make them Python lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _saved_dataset(path, cfg):
    import datasets

    from .hf import go_offline

    go_offline()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"data.source: {path} is not a folder written by datasets' save_to_disk: "
                        f"{type(err).__name__}: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = cfg.split or ("test" if "test" in loaded else splits[0] if len(splits) == 1 else None)
        if split not in loaded:
            raise DataError(f"data.split: {path} has splits {', '.join(splits)}; name one"
                            + (f" (not {cfg.split!r})" if cfg.split else ""))
        loaded = loaded[split]
    return [dict(row) for row in loaded], list(loaded.column_names)


def _column(cfg_value, default, columns, path, field_name, required):
    if cfg_value is not None:
        if cfg_value not in columns:
            raise DataError(f"data.{field_name}: {path} has no column {cfg_value!r}; columns are {', '.join(columns)}")
        return cfg_value
    if default in columns:
        return default
    if required:
        raise DataError(f"data.{field_name}: {path} has no column {default!r}; columns are {', '.join(columns)} "
                        f"(name the column with data.{field_name})")
    return None


def _records(rows, columns, cfg, task, path) -> TextDataset:
    if task == TEXT_GENERATION:
        messages = _column(cfg.messages, "messages", columns, path, "messages", required=False)
        prompt = None if messages else _column(cfg.prompt, "prompt", columns, path, "prompt", required=True)
        key = messages or prompt
        reference = _column(cfg.reference, "reference", columns, path, "reference", required=False)
        label = None
    else:
        key = _column(cfg.text, "text", columns, path, "text", required=True)
        reference = None
        label = _column(cfg.label, "label", columns, path, "label", required=False) if task == TEXT_CLASSIFICATION \
            else None
    inputs = []
    for number, row in enumerate(rows):
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value):
            raise DataError(f"data.source: {path} record {number}: empty {key!r}")
        inputs.append(value)
    budgets = [row.get("max_new_tokens") for row in rows] if "max_new_tokens" in columns else None
    return TextDataset(
        name=path.name, task=task, inputs=inputs,
        references=[str(row.get(reference, "")) for row in rows] if reference else None,
        labels=[row.get(label) for row in rows] if label else None,
        max_new_tokens=budgets, record_ids=[row.get("id", i) for i, row in enumerate(rows)], source=str(path))


# -- tokenizing --------------------------------------------------------------------------------
def render_prompt(tokenizer, value, mode, where):
    """Token ids of one prompt: chat messages through the tokenizer's template, text as it is."""
    is_chat = isinstance(value, list)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if is_chat and mode == "never":
        raise DataError(f"{where}: chat messages but generation.chat_template is 'never'")
    if is_chat or (mode == "always"):
        if not has_template:
            raise DataError(f"{where}: chat-formatted prompt but the tokenizer has no chat template "
                            "(tokenizer_config.json chat_template / chat_template.jinja)")
        messages = value if is_chat else [{"role": "user", "content": str(value)}]
        _check_messages(messages, where)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(str(value))["input_ids"]


def _check_messages(messages, where):
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content', got {message!r}")


def tokenize(dataset: TextDataset, model, generation) -> TokenizedPrompts:
    """Every record's token ids, checked against the model's context; done before any clock runs."""
    tokenizer = model.tokenizer
    context = model.context_length
    generating = dataset.task == TEXT_GENERATION
    ids, budgets = [], []
    for i, value in enumerate(dataset.inputs):
        where = f"data.source {dataset.source} record {i} (id {dataset.record_ids[i]})"
        if generating:
            tokens = render_prompt(tokenizer, value, generation.chat_template, where)
            budget = _budget(dataset, i, generation)
        else:
            tokens = tokenizer(str(value))["input_ids"]
            budget = 0
        if not tokens:
            raise DataError(f"{where}: the prompt has no tokens")
        if context and len(tokens) + budget > context:
            extra = f" + max_new_tokens {budget}" if budget else ""
            raise DataError(f"{where}: {len(tokens)} prompt tokens{extra} exceed the model's context of {context} "
                            f"tokens ({model.path}/config.json); shorten the prompt or lower max_new_tokens")
        ids.append(np.asarray(tokens, dtype=np.int64))
        budgets.append(budget)
    types = None
    if dataset.task in (TEXT_CLASSIFICATION, FEATURE_EXTRACTION) and "token_type_ids" in tokenizer.model_input_names:
        types = _object_array([np.zeros(len(t), dtype=np.int64) for t in ids])
    return TokenizedPrompts(_object_array(ids), budgets, types)


def _budget(dataset, i, generation):
    if generation.max_new_tokens:
        return generation.max_new_tokens
    if dataset.max_new_tokens and dataset.max_new_tokens[i]:
        try:
            return int(dataset.max_new_tokens[i])
        except (TypeError, ValueError):
            raise DataError(f"data.source {dataset.source} record {i}: max_new_tokens must be an integer, got "
                            f"{dataset.max_new_tokens[i]!r}") from None
    return DEFAULT_MAX_NEW_TOKENS


def _object_array(items):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def length_statistics(lengths, prefix) -> dict:
    """mean, p50 and max of a token length distribution, as input_tokens_* / output_tokens_* metrics."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if not lengths.size:
        return {}
    names = {"input": (Metrics.INPUT_TOKENS_MEAN, Metrics.INPUT_TOKENS_P50, Metrics.INPUT_TOKENS_MAX),
             "output": (Metrics.OUTPUT_TOKENS_MEAN, Metrics.OUTPUT_TOKENS_P50, Metrics.OUTPUT_TOKENS_MAX)}[prefix]
    return dict(zip(names, (float(lengths.mean()), float(np.median(lengths)), float(lengths.max()))))


def label_ids(labels, model, source):
    """Class ids of the labels: names through the model's label2id, integers as they are."""
    label2id = {str(k): int(v) for k, v in (model.config.get("label2id") or {}).items()}
    out = []
    for i, label in enumerate(labels):
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            out.append(int(label))
        elif str(label) in label2id:
            out.append(label2id[str(label)])
        elif str(label).isdigit():
            out.append(int(label))
        else:
            raise DataError(f"data.label: {source} record {i} has label {label!r}, which {model.path}/config.json "
                            f"label2id does not name (known: {', '.join(label2id) or 'none'})")
    return np.asarray(out, dtype=np.int64)
