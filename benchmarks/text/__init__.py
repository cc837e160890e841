"""Text and generative models in the benchmark suite: Hugging Face checkpoints, text data, LLM metrics.

    hf.py        Hugging Face model directories (a path, hf:/path, an MLflow transformers model):
                 strictly offline, task from the config, tokenizer and memory checks before loading
    data.py      text datasets (JSONL/CSV/Parquet/.txt, datasets.save_to_disk), chat templates,
                 tokenization before LoadGen's clock starts, token length distributions
    metrics.py   exact match, ROUGE, perplexity, text classification, agreement, each with a CI
    lmeval.py    lm-evaluation-harness tasks from local YAMLs over local files, offline
    onnx_export.py  ONNX exports of causal LMs (with and without KV cache) and encoders
    run.py       one text backend's accuracy and scenarios inside a benchmark (runner.py calls it)

Heavy imports (torch, transformers, datasets, lm-eval) happen inside the functions that need them.
"""

from .hf import is_text_model_source

__all__ = ["is_text_model_source"]
