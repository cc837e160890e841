"""Benchmark configuration: dataclasses built from YAML/dicts with errors that name the field.

One `BenchmarkConfig` describes a whole benchmark: which model, which data, which backends,
which LoadGen scenarios, how accuracy is estimated, and where results go.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .layout import SCENARIOS, TEXT_TASKS

PROFILES = ("quick", "full")
TORCH_MODES = ("eager", "compile")
PRECISIONS = ("fp32", "fp16", "bf16")
TASKS = ("auto", "classification", "multilabel", "regression", "none")
#: which outputs a backend fetches per query: the scored one, or every output the model has
FETCH_OUTPUTS = ("scored", "all")
#: the cross-check's tolerance can be loosened this far and no further: it is never off
MAX_CROSSCHECK_TOLERANCE = 0.5
MODEL_TASKS = ("auto", *TEXT_TASKS)  # a Hugging Face model's task; "auto": from its config
CHAT_TEMPLATE_MODES = ("auto", "always", "never")
DEFAULT_EXPERIMENT = "benchmarks"

__all__ = ["AccuracyConfig", "BackendConfig", "BenchmarkConfig", "ConfigError", "DataConfig", "GenerationConfig",
           "LmEvalConfig", "MLflowConfig", "ModelConfig", "ScenarioConfig", "parse_backend_shorthand", "read_yaml"]


@dataclass
class ModelConfig:
    path: str = ""
    name: str | None = None
    # Per-sample input shape (no batch dim) and dtype, for formats that do not carry them.
    input_shape: list[int] | None = None
    input_dtype: str | None = None
    # The output to score, by name; default: chosen by rule (docs/benchmarks.md, "Inputs and outputs").
    output: str | None = None
    # The class of each score column, for models that do not record it (a torch model trained on strings).
    classes: list | None = None
    # Hugging Face models (a directory with config.json, hf:/path, an MLflow transformers model)
    task: str = "auto"  # text-generation | text-classification | feature-extraction; auto: from the config
    tokenizer: str | None = None  # a tokenizer directory other than the model's own
    trust_remote_code: bool = False  # honoured only where the operator allows it (AIF_HF_ALLOW_REMOTE_CODE)

    def validate(self, where="model"):
        if not self.path:
            raise ConfigError(f"{where}.path: required (an .onnx/.pt/.pt2/.joblib/.skops file, "
                              "'package.module:function', a Hugging Face model directory or hf:/DIR, or an MLflow "
                              "URI models:/NAME/VERSION or runs:/RUN_ID/PATH)")
        if self.task not in MODEL_TASKS:
            raise ConfigError(f"{where}.task: expected one of {', '.join(MODEL_TASKS)}, got {self.task!r}")
        if self.output is not None and (not isinstance(self.output, str) or not self.output):
            raise ConfigError(f"{where}.output: expected the name of one of the model's outputs, got {self.output!r}")
        if self.classes is not None and not (
            isinstance(self.classes, list) and self.classes and all(isinstance(c, (str, int)) for c in self.classes)
            and len(set(self.classes)) == len(self.classes)
        ):
            raise ConfigError(f"{where}.classes: expected a list of distinct class labels (strings or integers) in "
                              f"score-column order, got {self.classes!r}")
        if self.input_shape is not None and (
            not isinstance(self.input_shape, list) or not all(isinstance(d, int) and d > 0 for d in self.input_shape)
        ):
            raise ConfigError(f"{where}.input_shape: expected a list of positive integers, got {self.input_shape!r}")


@dataclass
class DataConfig:
    # "sklearn:digits" | file.npz | file.csv | file.parquet | image folder (one sub-folder per class)
    source: str = "sklearn:digits"
    name: str | None = None
    features: str | None = None  # NPZ key with the inputs (default "x")
    label: str | None = None  # NPZ key / CSV column with labels; none -> latency only
    task: str = "auto"
    limit: int | None = None  # use only the first N samples
    image_size: list[int] | None = None  # [H, W] for image folders
    grayscale: bool = False
    # model input name -> NPZ key / table column (or a list of columns, stacked as its features)
    inputs: dict | None = None
    # text data (.jsonl/.csv/.parquet/.txt, or a datasets.save_to_disk folder), by column name;
    # None: the usual name (prompt, reference, text, messages) when the file has it
    prompt: str | None = None
    reference: str | None = None
    text: str | None = None  # the input of text classification / feature extraction
    messages: str | None = None  # chat-formatted prompts: a list of {role, content}
    split: str | None = None  # which split of a saved DatasetDict (default: test, else the only one)

    def validate(self):
        if not self.source:
            raise ConfigError("data.source: required (sklearn:NAME, .npz, .csv, .parquet, or an image folder)")
        if self.inputs is not None:
            if not isinstance(self.inputs, dict) or not self.inputs:
                raise ConfigError(f"data.inputs: expected a mapping of model input names to columns, got {self.inputs!r}")
            for name, source in self.inputs.items():
                if not (isinstance(source, str) and source) and not (
                        isinstance(source, list) and source and all(isinstance(c, str) for c in source)):
                    raise ConfigError(f"data.inputs.{name}: expected a column/key name or a list of column names, "
                                      f"got {source!r}")
        if self.task not in TASKS:
            raise ConfigError(f"data.task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"data.limit: expected a positive integer, got {self.limit!r}")


@dataclass
class BackendConfig:
    kind: str = "onnxruntime"
    mode: str = "eager"  # torch only: eager | compile
    providers: list[str] | None = None  # onnxruntime execution providers, in priority order
    precision: str = "fp32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (indices as the session sees them)
    threads: int | None = None
    cuda_graphs: bool = False  # torch on CUDA: replay captured graphs
    model: str | None = None  # run this backend on another model file (e.g. a quantized export)
    fetch_outputs: str = "scored"  # per query: "scored" (only the output accuracy reads) or "all"
    url: str | None = None  # endpoint only: the OpenAI-compatible base URL (.../v1)
    served_model: str | None = None  # endpoint only: the model name the server knows (default: its only one)
    api_key_file: str | None = None  # endpoint only: file holding the API key (a hub token); else $OPENAI_API_KEY

    def validate(self, where):
        from .backends.registry import BACKENDS, backend_class

        if self.kind not in BACKENDS:
            raise ConfigError(f"{where}.kind: expected one of {', '.join(BACKENDS)}, got {self.kind!r}")
        if self.mode not in TORCH_MODES:
            raise ConfigError(f"{where}.mode: expected one of {', '.join(TORCH_MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"{where}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"{where}.threads: expected a positive integer, got {self.threads!r}")
        if self.fetch_outputs not in FETCH_OUTPUTS:
            raise ConfigError(f"{where}.fetch_outputs: expected one of {', '.join(FETCH_OUTPUTS)}, got {self.fetch_outputs!r}")
        if self.providers is not None and not (
            isinstance(self.providers, list) and all(isinstance(p, str) for p in self.providers)
        ):
            raise ConfigError(f"{where}.providers: expected a list of provider names, got {self.providers!r}")
        backend_class(self.kind).validate_config(self, where)

    @property
    def label(self):
        """Short name used in tags and tables: torch:eager, onnxruntime:CPUExecutionProvider, ..."""
        from .backends.registry import backend_class

        return backend_class(self.kind).config_label(self)


@dataclass
class ScenarioConfig:
    profile: str = "quick"
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    multistream_samples_per_query: int = 8
    offline_batch_size: int = 32
    server_batch_size: int = 8  # largest batch the Server worker forms from queued queries
    server_latency_ms: float = 10.0  # p99 bound
    server_target_qps: float | None = None  # default: estimated from a calibration pass
    server_search: bool = True  # search the highest QPS that meets the bound
    batch_sizes: list[int] | None = None  # Offline batch-size sweep
    min_duration_s: float | None = None  # override the profile
    max_duration_s: float | None = None
    min_query_count: int | None = None
    warmup_s: float = 0.2
    # token latencies (text-generation), Server bounds at p99; a preset names MLPerf's pair
    slo_preset: str | None = None  # e.g. llama3.1-8b = TTFT 2000 ms / TPOT 100 ms
    ttft_ms: float | None = None  # overrides the preset's TTFT bound
    tpot_ms: float | None = None  # overrides the preset's TPOT bound

    def validate(self):
        from .scenarios.settings import SLO_PRESETS

        if self.slo_preset is not None and self.slo_preset not in SLO_PRESETS:
            raise ConfigError(f"scenario.slo_preset: unknown preset {self.slo_preset!r}; expected one of "
                              f"{', '.join(SLO_PRESETS)}")
        for key in ("ttft_ms", "tpot_ms"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"scenario.{key}: expected a positive number of milliseconds, got {value!r}")
        if self.profile not in PROFILES:
            raise ConfigError(f"scenario.profile: expected one of {', '.join(PROFILES)}, got {self.profile!r}")
        for name in self.scenarios:
            if name not in SCENARIOS:
                raise ConfigError(f"scenario.scenarios: {name!r} is not a LoadGen scenario; "
                                  f"expected any of {', '.join(SCENARIOS)}")
        for key in ("multistream_samples_per_query", "offline_batch_size", "server_batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"scenario.{key}: expected a positive integer, got {value!r}")
        if not self.server_latency_ms > 0:
            raise ConfigError(f"scenario.server_latency_ms: expected a positive number, got {self.server_latency_ms!r}")
        if self.server_target_qps is not None and not self.server_target_qps > 0:
            raise ConfigError(f"scenario.server_target_qps: expected a positive number, got {self.server_target_qps!r}")
        if self.batch_sizes is not None and not (
            isinstance(self.batch_sizes, list) and all(isinstance(b, int) and b > 0 for b in self.batch_sizes)
        ):
            raise ConfigError(f"scenario.batch_sizes: expected a list of positive integers, got {self.batch_sizes!r}")


@dataclass
class GenerationConfig:
    """How a text-generation model generates (every backend and scenario alike)."""

    max_new_tokens: int | None = None  # default: each record's max_new_tokens, else 64
    do_sample: bool = False  # greedy by default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int = 0  # sampling: torch/numpy seeded per generate call
    ignore_eos: bool = False  # generate exactly max_new_tokens (fixed-length outputs)
    chat_template: str = "auto"  # auto: messages go through the tokenizer's template when it has one
    max_batch_size: int = 8  # Server and Offline: requests batched together (static batching)
    concurrency: int = 1  # workers taking batches from the queue (an endpoint backend wants more)

    def validate(self):
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"generation.max_new_tokens: expected a positive integer, got {self.max_new_tokens!r}")
        for key in ("max_batch_size", "concurrency"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"generation.{key}: expected a positive integer, got {value!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"generation.top_k: expected an integer >= 0, got {self.top_k!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"generation.temperature: expected a positive number, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"generation.top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ConfigError(f"generation.chat_template: expected one of {', '.join(CHAT_TEMPLATE_MODES)}, "
                              f"got {self.chat_template!r}")


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness tasks, run offline from local task YAMLs over local data files."""

    tasks: list[str] = field(default_factory=list)  # task names (from include_path) or YAML paths
    include_path: str | None = None  # folder of task YAMLs
    limit: int | None = None  # documents per task
    num_fewshot: int | None = None
    batch_size: int = 8

    def validate(self):
        if not isinstance(self.tasks, list) or not all(isinstance(t, str) and t for t in self.tasks):
            raise ConfigError(f"accuracy.lm_eval.tasks: expected a list of task names or YAML paths, got {self.tasks!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"accuracy.lm_eval.limit: expected a positive integer, got {self.limit!r}")


@dataclass
class AccuracyConfig:
    enabled: bool = True
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    batch_size: int = 256
    # Gaussian input noise, std as a fraction of each feature's std (classification only)
    robustness: bool = False
    robustness_levels: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5])
    # The cross-check against the framework's own predictions (always on): probe samples, and the
    # share of them allowed to disagree (default 0.01 at fp32, 0.05 at fp16/bf16).
    crosscheck_samples: int = 256
    crosscheck_tolerance: float | None = None
    # text-generation: perplexity on a plain text file, in non-overlapping blocks of this many tokens
    perplexity_text: str | None = None
    perplexity_block: int = 128
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)

    def validate(self):
        if not isinstance(self.perplexity_block, int) or self.perplexity_block < 2:
            raise ConfigError(f"accuracy.perplexity_block: expected an integer >= 2, got {self.perplexity_block!r}")
        self.lm_eval.validate()
        if not self.robustness_levels or not all(
            isinstance(v, (int, float)) and v > 0 for v in self.robustness_levels
        ):
            raise ConfigError(f"accuracy.robustness_levels: expected positive numbers, got {self.robustness_levels!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"accuracy.confidence: expected a number between 0 and 1, got {self.confidence!r}")
        if not isinstance(self.bootstrap_resamples, int) or self.bootstrap_resamples < 10:
            raise ConfigError(f"accuracy.bootstrap_resamples: expected an integer >= 10, got {self.bootstrap_resamples!r}")
        if not isinstance(self.crosscheck_samples, int) or self.crosscheck_samples < 1:
            raise ConfigError(f"accuracy.crosscheck_samples: expected a positive integer, got {self.crosscheck_samples!r}")
        tolerance = self.crosscheck_tolerance
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= MAX_CROSSCHECK_TOLERANCE):
            raise ConfigError(f"accuracy.crosscheck_tolerance: expected a share between 0 and {MAX_CROSSCHECK_TOLERANCE} "
                              f"of probe samples allowed to disagree (the check cannot be turned off), got {tolerance!r}")


@dataclass
class MLflowConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None


@dataclass
class BenchmarkConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backends: list[BackendConfig] = field(default_factory=lambda: [BackendConfig()])
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    results_dir: str = "aif-results"
    name: str | None = None

    def validate(self):
        self.model.validate()
        self.data.validate()
        if not self.backends:
            raise ConfigError("backends: at least one backend is required")
        for i, backend in enumerate(self.backends):
            backend.validate(f"backends[{i}]")
        self.scenario.validate()
        self.accuracy.validate()
        self.generation.validate()
        return self

    @classmethod
    def from_dict(cls, data, source="config"):
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        return _build(cls, data, "").validate()

    @classmethod
    def from_yaml(cls, path):
        return cls.from_dict(read_yaml(path), source=str(path))

    def to_dict(self):
        return dataclasses.asdict(self)

    def flat_params(self, backend_index=None):
        """Flattened `section.key` params for MLflow; with a backend index, that backend as `backend.*`."""
        data = self.to_dict()
        backends = data.pop("backends")
        params = _flatten(data)
        if backend_index is not None:
            params.update(_flatten({"backend": backends[backend_index]}))
        else:
            params["backends"] = ",".join(b.label for b in self.backends)
        return params


def _build(cls, data, prefix):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{where}: unknown field; expected one of {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        where = f"{prefix}{key}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping, got {value!r}")
            value = _build(hint, value, where + ".")
        elif key == "backends":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: expected a list of backend mappings, got {value!r}")
            items = []
            for i, item in enumerate(value):
                if isinstance(item, str):  # shorthand "torch:eager" / "onnxruntime:CUDAExecutionProvider"
                    item = parse_backend_shorthand(item, f"{where}[{i}]")
                if not isinstance(item, dict):
                    raise ConfigError(f"{where}[{i}]: expected a mapping or a 'kind:mode' string, got {item!r}")
                items.append(_build(BackendConfig, item, f"{where}[{i}]."))
            value = items
        kwargs[key] = value
    return cls(**kwargs)


def parse_backend_shorthand(text, where="backend"):
    """'torch:eager', 'torch:compile', 'onnxruntime', 'onnxruntime:CUDAExecutionProvider' -> dict."""
    from .backends.registry import parse_shorthand

    return parse_shorthand(text, where)


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


def read_yaml(path):
    """A config file as a dict (not yet validated: flags may still complete it)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    _resolve_relative_paths(data, path.parent)
    return data


def _resolve_relative_paths(data, base):
    """Paths in a YAML file are relative to that file, not to where `aif bench run` is typed."""

    def fix(value):
        if not isinstance(value, str) or not value or ":" in value.split("/")[0] or Path(value).is_absolute():
            return value  # sklearn:..., models:/..., package.module:function, absolute
        candidate = base / value
        return str(candidate) if candidate.exists() else value

    for section, key in (("model", "path"), ("model", "tokenizer"), ("data", "source"),
                         ("accuracy", "perplexity_text")):
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section][key] = fix(data[section][key])
    for backend in data.get("backends") or []:
        if isinstance(backend, dict) and "model" in backend:
            backend["model"] = fix(backend["model"])
    lm_eval = (data.get("accuracy") or {}).get("lm_eval") if isinstance(data.get("accuracy"), dict) else None
    if isinstance(lm_eval, dict):
        if "include_path" in lm_eval:
            lm_eval["include_path"] = fix(lm_eval["include_path"])
        if isinstance(lm_eval.get("tasks"), list):
            lm_eval["tasks"] = [fix(t) if str(t).endswith((".yaml", ".yml")) else t for t in lm_eval["tasks"]]
