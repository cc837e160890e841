"""Result objects: what a benchmark produced, readable without torch or LoadGen installed.

`BenchmarkResult.from_json(path)` reads a `results.json` (a local results directory, or the
parent run's MLflow artifact); `.to_frame()` gives one row per (backend, scenario) child.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ResultsError, ResultsNotFound
from .layout import Artifacts, Metrics, Tags

SCHEMA_VERSION = 1


@dataclass
class ChildResult:
    backend: str  # aif.backend tag, e.g. onnxruntime:CPUExecutionProvider
    precision: str
    scenario: str  # SingleStream | MultiStream | Server | Offline | Accuracy
    metrics: dict
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # paths relative to the results directory
    batch_size: int | None = None
    extra: dict = field(default_factory=dict)  # LoadGen results, Server search trials

    @property
    def name(self):
        suffix = f"-bs{self.batch_size}" if self.extra.get("sweep") else ""
        return f"{self.backend}/{self.scenario}{suffix}"


@dataclass
class BenchmarkResult:
    name: str
    model: str
    dataset: str
    task: str
    hardware: str
    environment: str
    config: dict
    fingerprint: dict
    children: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # parent: the reference backend's accuracy
    status: str = "FINISHED"
    started: float | None = None
    finished: float | None = None
    results_dir: str | None = None
    mlflow_run_id: str | None = None
    command: str | None = None  # reproduces the run: aif bench run <results>/config.yaml
    output: str | None = None  # the scored output of the model (aif.output)
    schema_version: int = SCHEMA_VERSION

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def from_json(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / Artifacts.RESULTS
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ResultsNotFound(f"{path}: no {Artifacts.RESULTS} (a failed or unfinished benchmark writes none)") from None
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}: not valid JSON: {err}") from None
        return cls.from_dict(data, results_dir=path.parent)

    @classmethod
    def from_dict(cls, data, results_dir=None):
        data = dict(data)
        children = [ChildResult(**child) for child in data.pop("children", [])]
        result = cls(children=children, **data)
        if results_dir is not None:
            result.results_dir = str(results_dir)
        return result

    def to_dict(self):
        return asdict(self)

    def to_json(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))

    # --- looking at it ---------------------------------------------------------------------
    def child(self, backend=None, scenario=None):
        for child in self.children:
            if (backend is None or child.backend == backend) and (scenario is None or child.scenario == scenario):
                return child
        raise KeyError(f"no result for backend={backend!r} scenario={scenario!r}; "
                       f"have {', '.join(c.name for c in self.children)}")

    def metric(self, name, backend=None, scenario=None):
        return self.child(backend, scenario).metrics[name]

    def artifact(self, child, name):
        """Absolute path of a child's artifact (e.g. 'latencies.npy')."""
        for rel in child.artifacts:
            if rel.endswith(name):
                return Path(self.results_dir) / rel
        raise KeyError(f"{child.name} has no artifact {name!r}")

    def to_frame(self):
        import pandas as pd

        rows = []
        for child in self.children:
            row = {"model": self.model, "dataset": self.dataset, "hardware": self.hardware,
                   "backend": child.backend, "precision": child.precision, "scenario": child.scenario,
                   "batch_size": child.batch_size,
                   "result_valid": child.tags.get(Tags.RESULT_VALID)}
            row.update(child.metrics)
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, metric=Metrics.LATENCY_P90, ax=None):
        """Bar chart of one metric per (backend, scenario); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        frame = self.to_frame()
        if metric not in frame:
            raise KeyError(f"no metric {metric!r}; have {', '.join(c for c in frame.columns if c.endswith(('_ms', '_s', 'accuracy')))}")
        frame = frame.dropna(subset=[metric])
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * max(len(frame), 1)))
        labels = frame["backend"] + " / " + frame["scenario"] + frame["batch_size"].map(
            lambda b: f" bs{int(b)}" if b == b and b is not None else "")
        ax.barh(labels, frame[metric])
        ax.set_xlabel(metric)
        ax.set_title(f"{self.model} on {self.hardware}")
        ax.invert_yaxis()
        return ax

    def _repr_html_(self):
        return self.to_frame()._repr_html_()


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
