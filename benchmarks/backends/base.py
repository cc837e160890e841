"""The contract between a backend (how a model runs) and the rest of the suite.

Scenarios (the LoadGen SUT), accuracy and trackers only ever talk to a `Backend`; a new way of
running a model (a Hugging Face pipeline, an OpenAI-compatible endpoint, ...) is a subclass in a
module of its own, named once in `registry.BACKENDS`.

Two sides, so that a bad config fails before anything heavy is imported or loaded:
- class methods, called with the `BackendConfig` only (no model, no framework import): the
  `kind:rest` shorthand, the label, kind-specific validation, preflight checks, the device a run
  will use;
- the instance, built on a loaded model: `stage` the dataset once, then `infer` (and its
  pipelined form `launch`/`wait`) on slices of what `stage` returned.

`infer` returns only once the result exists (GPU work synchronized), so a caller's clock measures
finished work. The staged data is indexed by slices (`staged[i:i + 1]`) and integer arrays
(`staged[idx]`, idx from `device_indices`); a backend whose samples are not tensors (prompts,
token ids of different lengths) stages them as a numpy object array.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .devices import resolve_device

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..models import LoadedModel


class Backend(abc.ABC):
    #: the `kind` of the config that selects this backend (registry.BACKENDS maps it here)
    kind: ClassVar[str]
    #: False for a backend that runs no model (null): no output to score, nothing to cross-check
    computes_model: ClassVar[bool] = True
    #: how the `kind[:rest]` shorthand reads, for error messages (`torch[:eager|compile]`)
    shorthand: ClassVar[str]

    # -- from the config alone ------------------------------------------------------------------
    @classmethod
    def from_shorthand(cls, rest: str) -> dict:
        """The config mapping a `kind:rest` string stands for (`rest` is "" without a colon)."""
        return {"kind": cls.kind}

    @classmethod
    def config_label(cls, cfg: BackendConfig) -> str:
        """Short name used in tags and tables before the backend exists (aif.backend)."""
        return cls.kind

    @classmethod
    def validate_config(cls, cfg: BackendConfig, where: str):
        """Checks of the fields only this kind reads; raise ConfigError naming `where.field`."""

    @classmethod
    def preflight(cls, cfg: BackendConfig, model_kind: str, where: str):
        """Cheap checks before any model loads (model format, installed providers, devices)."""
        if cfg.device.startswith("cuda"):
            resolve_device(cfg.device, where)

    @classmethod
    def planned_device(cls, cfg: BackendConfig) -> str:
        """The device this config will run on (for the parent's aif.hardware tag)."""
        try:
            return resolve_device(cfg.device, "backends[0]")
        except ValueError:
            return "cpu"

    # -- on a loaded model ----------------------------------------------------------------------
    def __init__(self, cfg: BackendConfig, model: LoadedModel, where: str):
        self.cfg, self.model, self.where = cfg, model, where
        self.device = "cpu"
        self.precision = cfg.precision
        self.label = self.config_label(cfg)
        #: the dtype this backend wants its inputs in, when it differs from the model's
        self.input_dtype = None
        #: the scored output (signature.OutputChoice) `to_numpy` reads, and every output a query fetches
        self.output = model.output
        self.fetched_outputs = []

    def stage(self, x):
        """The whole dataset placed where the model reads it (host or device memory); `x` is one
        array, or a `signature.Feeds` of named arrays for a model with several inputs."""
        return x

    @abc.abstractmethod
    def infer(self, batch):
        """Run the model on a slice of the staged data; return once the output exists."""

    # Pipelining (Offline): launch batch k+1 before waiting for batch k, so per-sample host work
    # (LoadGen responses) overlaps device compute. Synchronous backends just run in launch().
    def launch(self, batch):
        return self.infer(batch)

    def wait(self, handle):
        return handle

    def device_indices(self, indices: np.ndarray):
        """Sample indices where gathering from the staged data is cheapest."""
        return indices

    def to_numpy(self, out) -> np.ndarray:
        """Host copy of the scored output of `infer`'s result (what accuracy scores): float32
        scores, or labels as the model gives them (signature.output_array)."""
        return np.asarray(out, dtype=np.float32)

    def warmup(self, staged, batch_sizes=(1,), iterations=3):
        for size in batch_sizes:
            for _ in range(iterations):
                self.infer(staged[:size])

    def reset_peak_gpu_memory(self):
        pass

    def peak_gpu_memory_mb(self):
        return None

    def close(self):
        """Undo what the backend changed in the process (threads, temporary files)."""
