"""Reference language models that ship with the suite, built locally in about half a minute on 2 CPU cores.

Nothing is downloaded: the text is what every Debian machine carries, the docstrings of Python's
standard library (read from its ``.py`` files with :mod:`ast`, nothing is imported) and the license
texts in ``/usr/share/common-licenses``. From it this module builds, deterministically:

- ``tokenizer/``: a byte-level BPE tokenizer (vocab 2048, ``<s> </s> <unk> <pad>``, a chat template);
- ``lm/``: a ~0.7M-parameter Llama-style causal LM (``LlamaForCausalLM``) with that tokenizer and a
  greedy ``generation_config.json`` (with ``onnx=True`` also ``model.onnx`` and ``model_with_past.onnx``;
  otherwise the ONNX Runtime backend exports it on first use, text/onnx_export.py);
- ``lm-untrained/``: the same architecture and tokenizer at its seeded initial weights, a second,
  much worse LM that every comparison can rank against;
- ``encoder/``: a small BERT classifier (``docstring`` vs ``license`` sentence);
- ``data/``: ``prompts.jsonl``, ``chat_prompts.jsonl``, ``heldout.txt``, ``classification.jsonl``, and
  ``lm_eval/`` (task YAMLs over local JSONL files for lm-evaluation-harness, ``dataset_path: json``).

Held-out text is chosen by a hash of its source (a stdlib module path, a license file name), so
no sentence the models score was trained on, and the choice does not depend on corpus order.
``build_all(out_dir)`` skips every part whose stamp matches a hash of the build parameters, the
input files and the library versions. ``ensure_built()`` builds into the user's cache folder (or
reuses it); ``aif bench reference-models`` calls it. CLI: ``python -m aifactory.benchmarks.reference.language OUT``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import dataclasses
import hashlib
import json
import math
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..layout import TEXT_CLASSIFICATION, Metrics
from ..text.onnx_export import cache_root, export_causal_lm, export_encoder

log = logging.getLogger(__name__)
FORMAT_VERSION = 4  # bump when the layout or the recipe changes in a way params do not capture
STAMP = ".aif-build.json"
SPECIALS = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
LABELS = ("docstring", "license")

# One user/assistant turn per message, each closed by eos so greedy generation stops at a turn's end.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Stdlib folders with no prose worth learning (codec tables, generated topics) or tests/GUI demos.
STDLIB_SKIP = frozenset({"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "encodings",
                         "pydoc_data", "ensurepip", "site-packages", "dist-packages", "__pycache__"})
LICENSE_DIR = Path("/usr/share/common-licenses")


# --------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class LMParams:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 512
    seq_len: int = 128
    batch: int = 6
    steps: int = 240  # ~20 s on one idle core: perplexity ~2,000 -> ~300 (docs/PERFORMANCE.md)
    lr: float = 8e-3
    warmup: int = 20
    chat_fraction: float = 0.15  # share of function docstrings also shown as chat turns


@dataclass(frozen=True)
class EncoderParams:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 128
    seq_len: int = 48
    batch: int = 16
    steps: int = 120  # ~5 s: held-out accuracy ~96 % (200 steps bought +0.2 points for 4 s more)
    lr: float = 2e-3
    max_per_class: int = 1500


@dataclass(frozen=True)
class BuildParams:
    seed: int = 1234
    threads: int = 1  # 2 threads ran 6x slower per step on a loaded 2-core machine (REPORT.md)
    vocab_size: int = 2048
    heldout_percent: int = 10  # of stdlib modules and of license files
    n_prompts: int = 64
    n_chat_prompts: int = 8
    heldout_chars: int = 60_000
    onnx: bool = False  # the ONNX Runtime backend exports on first use (and checks against torch)
    lm: LMParams = field(default_factory=LMParams)
    encoder: EncoderParams = field(default_factory=EncoderParams)


# --------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class Doc:
    source: str  # "stdlib:json/decoder.py" or "license:GPL-3"; the unit of the held-out split
    name: str  # dotted name of the documented object, or the license name
    kind: str  # one of LABELS
    text: str
    heldout: bool


@dataclass
class Corpus:
    docs: list[Doc]
    sha256: str  # of every input file read, in order: keys the build cache

    def train(self, kind=None):
        return [d for d in self.docs if not d.heldout and kind in (None, d.kind)]

    def heldout(self, kind=None):
        return [d for d in self.docs if d.heldout and kind in (None, d.kind)]


def is_heldout(source: str, percent: int) -> bool:
    """Stable split by source: independent of file order, file count and Python's hash seed."""
    return int(hashlib.sha256(source.encode()).hexdigest(), 16) % 100 < percent


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = (p for p in root.rglob("*.py") if not STDLIB_SKIP.intersection(p.relative_to(root).parts))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST, prefix: str):
    """(dotted name, docstring) for the module and every class and function, in source order."""
    doc = ast.get_docstring(tree) if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                        ast.AsyncFunctionDef)) else None
    if doc:
        yield prefix, doc
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(node, f"{prefix}.{node.name}")


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def license_files(license_dir: Path = LICENSE_DIR) -> list[Path]:
    # Symlinks (GPL -> GPL-3) are skipped so each license text appears once.
    return sorted(p for p in Path(license_dir).iterdir() if p.is_file() and not p.is_symlink())


def input_digest(stdlib_root: Path | None = None, license_dir: Path = LICENSE_DIR) -> str:
    """sha256 over every input file's name and bytes: cheap, so an up-to-date check parses nothing."""
    root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
    digest = hashlib.sha256()
    for path in stdlib_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    for path in license_files(license_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load_corpus(params: BuildParams, stdlib_root: Path | None = None,
                license_dir: Path = LICENSE_DIR) -> Corpus:
    root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in stdlib_files(root):
        rel = path.relative_to(root)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a stray file for another Python version
            continue
        source = f"stdlib:{rel.as_posix()}"
        held = is_heldout(source, params.heldout_percent)
        for name, text in _docstrings(tree, _module_name(rel)):
            docs.append(Doc(source, name, "docstring", text, held))
    for path in license_files(license_dir):
        source = f"license:{path.name}"
        docs.append(Doc(source, path.name, "license", path.read_bytes().decode("utf-8", "replace"),
                        is_heldout(source, params.heldout_percent)))
    if not any(d.kind == "license" and d.heldout for d in docs):
        raise RuntimeError(f"{license_dir}: no license file falls in the held-out split; "
                           f"raise heldout_percent ({params.heldout_percent})")
    return Corpus(docs, input_digest(root, license_dir))


def chat_text(question: str, answer: str) -> str:
    """A rendered chat exchange, the exact string CHAT_TEMPLATE produces (checked in verify)."""
    return (f"{SPECIALS['bos']}<|user|>\n{question}{SPECIALS['eos']}\n"
            f"<|assistant|>\n{answer}{SPECIALS['eos']}\n")


def chat_question(name: str) -> str:
    return f"What does `{name}` do?"


def summary_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def lm_texts(corpus: Corpus, params: BuildParams) -> list[str]:
    """Training documents for the LM: each docstring/license, plus some docstrings as chat turns."""
    texts = [f"{SPECIALS['bos']}{d.text}{SPECIALS['eos']}" for d in corpus.train()]
    for d in corpus.train("docstring"):
        if "." in d.name and is_heldout("chat:" + d.name, int(100 * params.lm.chat_fraction)):
            texts.append(chat_text(chat_question(d.name), summary_line(d.text)))
    return texts


# --------------------------------------------------------------------------- tokenizer

def train_tokenizer(corpus: Corpus, params: BuildParams):
    """Byte-level BPE: every string encodes without <unk> and decodes back byte for byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [SPECIALS[k] for k in ("bos", "eos", "unk", "pad")] + list(ROLE_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=params.vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.text for d in corpus.train()), trainer=trainer)
    bos, eos = SPECIALS["bos"], SPECIALS["eos"]
    tok.post_processor = processors.TemplateProcessing(  # the LM's: <s> text
        single=f"{bos} $A", pair=f"{bos} $A $B:1",
        special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def hf_tokenizer(tok, *, encoder: bool = False, max_length: int = 512):
    """Wrap as PreTrainedTokenizerFast; the encoder's variant also closes each text with </s>."""
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = copy.deepcopy(tok)
    bos, eos = SPECIALS["bos"], SPECIALS["eos"]
    ids = [(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
    if encoder:  # RoBERTa-style framing; the classifier pools the first token
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B:1 {eos}:1", special_tokens=ids)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=SPECIALS["unk"],
        pad_token=SPECIALS["pad"], additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=max_length, padding_side="right" if encoder else "left",
        clean_up_tokenization_spaces=False)
    if encoder:  # BERT takes segment ids; transformers 5 returns them only when asked by name
        fast.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(fast, dest: Path) -> None:
    """save_pretrained, naming the class as transformers 4 knows it (5 writes "TokenizersBackend")."""
    fast.save_pretrained(dest)
    cfg_path = Path(dest) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = list(fast.model_input_names)  # the encoder's token_type_ids survive a reload
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def special_ids(tok) -> dict[str, int]:
    return {k: tok.token_to_id(v) for k, v in SPECIALS.items()}


# --------------------------------------------------------------------------- torch helpers

@contextmanager
def seeded(params: BuildParams):
    """Same seed, one thread count: what makes CPU training bit-reproducible run to run."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    try:
        yield torch.Generator().manual_seed(params.seed)
    finally:
        torch.set_num_threads(old)


def _optimizer(model, lr, warmup, steps):
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))

    def schedule(step):  # linear warm-up, cosine down to 10 %
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def token_blocks(tok, texts: list[str], seq_len: int):
    """Concatenate the texts' ids (their <s>/</s> are written inline) into rows of seq_len tokens."""
    import torch

    ids = [i for enc in tok.encode_batch(texts, add_special_tokens=False) for i in enc.ids]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def perplexity(model, blocks, batch: int = 32) -> float:
    """exp(mean next-token NLL) over fixed, non-overlapping blocks (every block scored the same way)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            x = blocks[i:i + batch]
            logits = model(input_ids=x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total, count = total + nll.item(), count + x[:, 1:].numel()
    return math.exp(total / count)


# --------------------------------------------------------------------------- causal LM

def lm_config(params: BuildParams, tok):
    from transformers import LlamaConfig

    p, ids = params.lm, special_ids(tok)
    return LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=p.hidden, num_hidden_layers=p.layers,
        num_attention_heads=p.heads, num_key_value_heads=p.heads, intermediate_size=p.intermediate,
        max_position_embeddings=p.max_positions, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        initializer_range=0.02, attn_implementation="sdpa")


def train_lm(params: BuildParams, tok, corpus: Corpus):
    """Fixed number of seeded steps over packed blocks: the same weights every run on one machine."""
    import torch
    from transformers import LlamaForCausalLM

    p = params.lm
    with seeded(params) as gen:
        model = LlamaForCausalLM(lm_config(params, tok))
        train = token_blocks(tok, lm_texts(corpus, params), p.seq_len)
        val = heldout_blocks(tok, corpus, params)
        ppl_init = perplexity(model, val)
        opt, sched = _optimizer(model, p.lr, p.warmup, p.steps)
        order = torch.randperm(len(train), generator=gen)
        model.train()
        for step in range(p.steps):
            idx = order[(step * p.batch + torch.arange(p.batch)) % len(order)]
            loss = model(input_ids=train[idx], labels=train[idx]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        ppl = perplexity(model, val)
    model.eval()
    return model, {"perplexity_init": ppl_init, Metrics.PERPLEXITY: ppl, "train_tokens": int(train.numel()),
                   "tokens_seen": p.steps * p.batch * p.seq_len, "heldout_tokens": int(val.numel())}


def heldout_text(corpus: Corpus, params: BuildParams) -> str:
    """The first heldout_chars of held-out docstrings, one per paragraph, for perplexity."""
    out, size = [], 0
    for d in corpus.heldout("docstring"):
        if size >= params.heldout_chars:
            break
        if len(d.text.split()) < 3:  # e.g. the lone "π" of a test helper
            continue
        out.append(d.text.strip())
        size += len(out[-1]) + 2
    return "\n\n".join(out) + "\n"


def heldout_blocks(tok, corpus: Corpus, params: BuildParams):
    return token_blocks(tok, [heldout_text(corpus, params)], params.lm.seq_len)


def generation_config(tok):
    from transformers import GenerationConfig

    ids = special_ids(tok)
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=32, bos_token_id=ids["bos"],
                            eos_token_id=ids["eos"], pad_token_id=ids["pad"])


# --------------------------------------------------------------------------- encoder classifier

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+(?=[A-Z(\"'])")


def sentences(text: str):
    """Prose sentences of 5-60 words; code examples and tables are dropped."""
    for para in re.split(r"\n\s*\n", text):
        if ">>>" in para or para.lstrip().startswith(("$", "|", "+")):
            continue
        for s in _SENTENCE.split(" ".join(para.split())):
            if 5 <= len(s.split()) <= 60 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                yield s


def classification_split(corpus: Corpus, params: BuildParams, heldout: bool, exclude=frozenset()):
    """Balanced (text, label) pairs, deduplicated; held-out pairs never repeat a training sentence."""
    import random

    rows = []
    for label, kind in enumerate(LABELS):
        docs = corpus.heldout(kind) if heldout else corpus.train(kind)
        seen, items = set(exclude), []
        for d in docs:
            for s in sentences(d.text):
                if s not in seen:
                    seen.add(s)
                    items.append((s, label))
        rows.append(items)
    n = min(params.encoder.max_per_class, *(len(r) for r in rows))
    rng = random.Random(params.seed + heldout)
    picked = [x for r in rows for x in rng.sample(r, n)]
    rng.shuffle(picked)
    return picked


def encoder_config(params: BuildParams, tok):
    from transformers import BertConfig

    p, ids = params.encoder, special_ids(tok)
    return BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=p.hidden, num_hidden_layers=p.layers,
        num_attention_heads=p.heads, intermediate_size=p.intermediate, max_position_embeddings=p.max_positions,
        type_vocab_size=2, pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        problem_type="single_label_classification", attn_implementation="sdpa")


def encode_rows(fast_tok, rows, seq_len):
    """Fixed-length batches: every step costs the same, so the step count fixes the build time."""
    import torch

    enc = fast_tok([t for t, _ in rows], padding="max_length", truncation=True, max_length=seq_len,
                   return_tensors="pt")
    return enc, torch.tensor([y for _, y in rows])


def accuracy(model, enc, labels, batch=128) -> float:
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            part = {k: v[i:i + batch] for k, v in enc.items()}
            right += (model(**part).logits.argmax(-1) == labels[i:i + batch]).sum().item()
    return right / len(labels)


def train_encoder(params: BuildParams, tok, corpus: Corpus):
    import torch
    from transformers import BertForSequenceClassification

    p = params.encoder
    fast = hf_tokenizer(tok, encoder=True, max_length=p.max_positions)
    train_rows = classification_split(corpus, params, heldout=False)
    test_rows = classification_split(corpus, params, heldout=True, exclude=frozenset(t for t, _ in train_rows))
    with seeded(params) as gen:
        model = BertForSequenceClassification(encoder_config(params, tok))
        x, y = encode_rows(fast, train_rows, p.seq_len)
        xt, yt = encode_rows(fast, test_rows, p.seq_len)
        opt, sched = _optimizer(model, p.lr, p.steps // 10, p.steps)
        order = torch.randperm(len(y), generator=gen)
        model.train()
        for step in range(p.steps):
            idx = order[(step * p.batch + torch.arange(p.batch)) % len(order)]
            loss = model(**{k: v[idx] for k, v in x.items()}, labels=y[idx]).loss
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        acc = accuracy(model, xt, yt)
    model.eval()
    return model, fast, test_rows, {"accuracy": acc, "train_rows": len(train_rows), "test_rows": len(test_rows),
                                    "chance": 1 / len(LABELS)}


# --------------------------------------------------------------------------- prompts

def summary_lines(corpus: Corpus):
    """(dotted name, summary line) of held-out docstrings whose first line is a 6-30 word sentence."""
    for d in corpus.heldout("docstring"):
        line = summary_line(d.text)
        if 6 <= len(line.split(" ")) <= 30:
            yield d.name, line


def half_split(name, line, tok):
    """Prompt = the line's first half, reference = the rest (the plain, unbiased group)."""
    words = line.split(" ")
    cut = max(3, len(words) // 2)
    prompt, ref = " ".join(words[:cut]), " " + " ".join(words[cut:])
    return {"prompt": prompt, "reference": ref, "source": name, "max_new_tokens": _ref_tokens(tok, prompt, ref)}


def _ref_tokens(tok, prompt, ref):
    # Byte-level pre-tokenization splits before each " word", so the prompt's ids are a prefix.
    return len(tok(prompt + ref)["input_ids"]) - len(tok(prompt)["input_ids"])


def greedy_span(model, tok, name, line, min_prompt_words=3):
    """Longest word-aligned span of the line that greedy decoding after its prefix reproduces.

    One teacher-forced forward finds it: greedy output equals the reference exactly when the argmax
    at every position of the span is the span's next token.
    """
    import torch

    ids = tok(line)["input_ids"]  # <s> first
    with torch.no_grad():
        pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
    pieces = tok.convert_ids_to_tokens(ids)
    starts = [j for j in range(1, len(ids)) if pieces[j].startswith("\u0120")]  # "Ġ" opens a word
    best = None
    for a in starts[min_prompt_words - 1:]:
        b = a
        while b < len(ids) and pred[b - 1] == ids[b]:
            b += 1
        while b > a and b < len(ids) and not pieces[b].startswith("\u0120"):
            b -= 1  # end on a word boundary
        if b > a and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    if best is None:
        return None
    a, b = best
    return {"prompt": tok.decode(ids[1:a]), "reference": tok.decode(ids[a:b]), "source": name, "max_new_tokens": b - a}


def select_prompts(model, tok, corpus: Corpus, params: BuildParams):
    """n_prompts held-out prompts: 3/4 split at half a summary line, 1/4 spans the greedy LM reproduces.

    The second group keeps exact-match above 0 so a broken backend (wrong ids, cache, padding) shows
    as a drop; each record names its group, so the unbiased figure stays readable.
    """
    lines = list(summary_lines(corpus))
    n_plain = params.n_prompts - params.n_prompts // 4
    plain = [dict(half_split(n, l, tok), group="heldout") for n, l in lines[:n_plain]]
    spans = [s for s in (greedy_span(model, tok, n, l) for n, l in lines[n_plain:]) if s]
    spans.sort(key=lambda s: -s["max_new_tokens"])  # stable: longest spans, then corpus order
    picked = plain + [dict(s, group="model_exact") for s in _varied(spans, params.n_prompts - n_plain)]
    for i, rec in enumerate(picked):
        rec["id"] = i
    return picked, {"candidate_lines": len(lines), "model_exact_available": len(spans)}


def _varied(spans, n, per_reference=2):
    """The first n spans, at most per_reference with the same reference text while others remain."""
    seen, first, later = {}, [], []
    for s in spans:
        seen[s["reference"]] = seen.get(s["reference"], 0) + 1
        (first if seen[s["reference"]] <= per_reference else later).append(s)
    return (first + later)[:n]


def greedy_continuations(model, tok, records, batch=32):
    """Greedy text after each prompt, exactly max_new_tokens long (grouped so a batch shares it)."""
    import torch

    out = {}
    order = sorted(range(len(records)), key=lambda i: records[i]["max_new_tokens"])
    with torch.no_grad():
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            n = max(records[i]["max_new_tokens"] for i in idx)
            enc = tok([records[i]["prompt"] for i in idx], return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:]):
                out[i] = tok.decode(row[: records[i]["max_new_tokens"]], skip_special_tokens=True)
    return [out[i] for i in range(len(records))]


def exact_match(generated, references) -> float:
    return sum(g == r for g, r in zip(generated, references)) / max(1, len(references))


def chat_prompts(corpus: Corpus, params: BuildParams):
    """Chat requests about held-out functions; the reference is the docstring's summary line."""
    out = []
    for d in corpus.heldout("docstring"):
        if d.name.count(".") >= 1 and 4 <= len(summary_line(d.text).split()) <= 20:
            out.append({"id": len(out), "messages": [{"role": "user", "content": chat_question(d.name)}],
                        "reference": summary_line(d.text), "max_new_tokens": 32})
        if len(out) == params.n_chat_prompts:
            break
    return out


# --------------------------------------------------------------------------- build orchestration

def versions() -> dict[str, str]:
    """Installed versions from package metadata: no torch import, so an up-to-date check is quick."""
    from importlib.metadata import version

    return {"python": sys.version.split()[0], **{n: version(n) for n in ("torch", "transformers", "tokenizers")}}


def build_key(params: BuildParams, corpus_sha: str, part: str) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "part": part, "params": dataclasses.asdict(params),
                       "corpus": corpus_sha, "versions": versions()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def up_to_date(path: Path, key: str) -> bool:
    try:
        return json.loads((path / STAMP).read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


@contextmanager
def staged(path: Path, key: str, info: dict):
    """Write into a sibling temp dir and swap it in at the end: a failed build leaves no half directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        (tmp / STAMP).write_text(json.dumps({"key": key, **info}, indent=2, sort_keys=True, default=str) + "\n")
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def stamp_info(path: Path) -> dict:
    return json.loads((path / STAMP).read_text())


class Builder:
    """Builds the parts in dependency order, each skipped when its stamp matches (see build_all)."""

    def __init__(self, out_dir, params: BuildParams = BuildParams(), force: bool = False, log=log.info):
        self.out, self.params, self.force, self.log = Path(out_dir), params, force, log
        self.timings: dict[str, float] = {}
        self._corpus = self._tok = self._digest = None

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            with self.timed("corpus"):
                self._corpus = load_corpus(self.params)
        return self._corpus

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = input_digest()
        return self._digest

    @contextmanager
    def timed(self, part):
        t = time.perf_counter()
        yield
        self.timings[part] = time.perf_counter() - t
        self.log(f"[reference.language] {part}: {self.timings[part]:.1f} s")

    def _part(self, name, build, deps=()):
        path = self.out / name
        key = build_key(self.params, self.digest + "".join(stamp_info(self.out / d)["key"] for d in deps), name)
        if not self.force and up_to_date(path, key):
            self.log(f"[reference.language] {name}: up to date")
            return path
        with self.timed(name), staged(path, key, {"versions": versions()}) as tmp:
            info = build(tmp) or {}
            (tmp / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return path

    def tokenizer(self):
        def build(tmp):
            self._tok = train_tokenizer(self.corpus, self.params)
            save_tokenizer(hf_tokenizer(self._tok), tmp)
            return {"vocab_size": self._tok.get_vocab_size(), "corpus_sha256": self.corpus.sha256}
        return self._part("tokenizer", build)

    def raw_tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer
            self._tok = Tokenizer.from_file(str(self.out / "tokenizer" / "tokenizer.json"))
        return self._tok

    def lm(self):
        def build(tmp):
            tok = self.raw_tokenizer()
            t = time.perf_counter()
            model, info = train_lm(self.params, tok, self.corpus)
            info["train_s"] = time.perf_counter() - t
            model.save_pretrained(tmp, safe_serialization=True)
            generation_config(tok).save_pretrained(tmp)
            save_tokenizer(hf_tokenizer(tok, max_length=self.params.lm.max_positions), tmp)
            if self.params.onnx:
                t = time.perf_counter()
                export_causal_lm(model, tmp)
                info["onnx_s"] = time.perf_counter() - t
            return {**info, "parameters": model.num_parameters()}
        return self._part("lm", build, deps=("tokenizer",))

    def encoder(self):
        def build(tmp):
            t = time.perf_counter()
            model, fast, test_rows, info = train_encoder(self.params, self.raw_tokenizer(), self.corpus)
            info["train_s"] = time.perf_counter() - t
            model.save_pretrained(tmp, safe_serialization=True)
            save_tokenizer(fast, tmp)
            write_jsonl(tmp / "classification.jsonl", ({"text": t, "label": LABELS[y]} for t, y in test_rows))
            if self.params.onnx:
                t = time.perf_counter()
                export_encoder(model, tmp, TEXT_CLASSIFICATION)
                info["onnx_s"] = time.perf_counter() - t
            return {**info, "parameters": model.num_parameters()}
        return self._part("encoder", build, deps=("tokenizer",))

    def data(self):
        def build(tmp):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            lm_dir = self.out / "lm"
            model = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True).eval()
            fast = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
            prompts, info = select_prompts(model, fast, self.corpus, self.params)
            write_jsonl(tmp / "prompts.jsonl", prompts)
            write_jsonl(tmp / "chat_prompts.jsonl", chat_prompts(self.corpus, self.params))
            (tmp / "heldout.txt").write_text(heldout_text(self.corpus, self.params), encoding="utf-8")
            shutil.copy(self.out / "encoder" / "classification.jsonl", tmp / "classification.jsonl")
            write_lm_eval_tasks(tmp / "lm_eval", heldout_text(self.corpus, self.params))
            gen = greedy_continuations(model, fast, prompts)
            groups = {g: [i for i, p in enumerate(prompts) if p["group"] == g] for g in ("heldout", "model_exact")}
            em = {f"exact_match_{g}": exact_match([gen[i] for i in ix], [prompts[i]["reference"] for i in ix])
                  for g, ix in groups.items()}
            return {**info, **em, Metrics.EXACT_MATCH: exact_match(gen, [p["reference"] for p in prompts])}
        return self._part("data", build, deps=("lm", "encoder"))

    def lm_untrained(self):
        """The LM's architecture at its seeded initial weights: a real, much worse second model."""
        def build(tmp):
            from transformers import LlamaForCausalLM

            tok = self.raw_tokenizer()
            with seeded(self.params):
                model = LlamaForCausalLM(lm_config(self.params, tok)).eval()
            model.save_pretrained(tmp, safe_serialization=True)
            generation_config(tok).save_pretrained(tmp)
            save_tokenizer(hf_tokenizer(tok, max_length=self.params.lm.max_positions), tmp)
            return {"parameters": model.num_parameters(), "trained": False}
        return self._part("lm-untrained", build, deps=("tokenizer",))


#: lm-evaluation-harness tasks over the reference data (data/lm_eval/); data_files are relative to
#: the YAML, which the suite resolves before lm-eval sees them (text/lmeval.py)
LM_EVAL_TASKS = {
    "aif_docstring_or_license": {
        "task": "aif_docstring_or_license", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "../classification.jsonl"}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{text}}\nThis sentence is from a",
        "doc_to_choice": [" docstring", " license"], "doc_to_target": "{{ ['docstring', 'license'].index(label) }}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    },
    "aif_heldout_rolling": {
        "task": "aif_heldout_rolling", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "heldout_paragraphs.jsonl"}}, "test_split": "test",
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m, "aggregation": agg, "higher_is_better": False}
                        for m, agg in (("word_perplexity", "weighted_perplexity"),
                                       ("byte_perplexity", "weighted_perplexity"), ("bits_per_byte", "bits_per_byte"))],
    },
    "aif_completion": {
        "task": "aif_completion", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "../prompts.jsonl"}}, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{reference}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False},
        "metric_list": [{"metric": Metrics.EXACT_MATCH, "aggregation": "mean", "higher_is_better": True}],
    },
}


def write_lm_eval_tasks(folder: Path, heldout: str):
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [p.strip() for p in heldout.split("\n\n") if p.strip()]
    write_jsonl(folder / "heldout_paragraphs.jsonl", ({"text": p} for p in paragraphs[:64]))
    for name, task in LM_EVAL_TASKS.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))


def build_all(out_dir, params: BuildParams = BuildParams(), force: bool = False, log=log.info) -> dict[str, Path]:
    """Build (or reuse) every reference artifact under out_dir; returns the paths by name."""
    t = time.perf_counter()
    b = Builder(out_dir, params, force, log)
    paths = {"tokenizer": b.tokenizer(), "lm": b.lm(), "lm_untrained": b.lm_untrained(), "encoder": b.encoder(),
             "data": b.data()}
    data = paths["data"]
    paths.update({name: data / f for name, f in [("prompts", "prompts.jsonl"), ("chat_prompts", "chat_prompts.jsonl"),
                                                 ("heldout", "heldout.txt"),
                                                 ("classification", "classification.jsonl"),
                                                 ("lm_eval_tasks", "lm_eval")]})
    log(f"[reference.language] all parts ready in {time.perf_counter() - t:.1f} s under {out_dir}")
    return paths


def default_dir() -> Path:
    """Where the reference language models live unless a directory is given: the user's cache."""
    return cache_root() / "reference-language"


def ensure_built(out_dir=None, params: BuildParams = BuildParams(), log=log.info) -> dict[str, Path]:
    """The reference language models, built on first use (about half a minute) and reused after."""
    return build_all(Path(out_dir) if out_dir else default_dir(), params, log=log)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aifactory.benchmarks.reference.language",
                                 description="Build the suite's reference language models and data files.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--force", action="store_true", help="rebuild even where the stamps match")
    ap.add_argument("--onnx", action="store_true", help="also write the ONNX exports beside the models")
    args = ap.parse_args(argv)
    params = BuildParams(onnx=args.onnx)
    paths = build_all(args.out_dir, params, force=args.force, log=print)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
