"""The null backend: returns its input, so a run measures the harness itself (perf/bench_overhead.py)."""

from __future__ import annotations

from .base import Backend


class NullBackend(Backend):
    kind = "null"
    shorthand = "null"
    computes_model = False

    @classmethod
    def preflight(cls, cfg, model_kind, where):
        pass  # runs anywhere: no device to check

    def infer(self, batch):
        return batch
