"""The local results directory: always written, first, and complete on its own.

`<results_dir>/<stamp>-<model>/` holds results.json, config.yaml and one folder per child; it
appears under its final name only when the benchmark finished, so a failed one leaves nothing.
The marker file `.mlflow.json` says which MLflow run the directory went to, or why it did not
(`aif bench upload` replays the directories whose marker says "not uploaded").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np

from ..layout import Artifacts
from ..result import BenchmarkResult, ChildResult

MARKER = ".mlflow.json"  # which MLflow run a results directory went to, or why it did not


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")


class LocalWriter:
    """Builds `<results_dir>/<stamp>-<model>/`; visible under its final name only when complete."""

    def __init__(self, results_dir, model_name):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(results_dir)
        root.mkdir(parents=True, exist_ok=True)
        base = f"{stamp}-{slug(model_name)}"
        for n in range(1, 10_000):  # job-array tasks may start in the same second: mkdir decides
            final = root / (base if n == 1 else f"{base}-{n}")
            partial = final.with_name(final.name + ".partial")
            if final.exists():
                continue
            try:
                partial.mkdir()
                break
            except FileExistsError:
                continue
        self.final, self.path = final, partial
        self._count = 0

    @property
    def scratch(self):
        return self.path / ".scratch"

    def child_dir(self, child: ChildResult):
        self._count += 1
        suffix = f"-bs{child.batch_size}" if child.extra.get("sweep") else ""
        directory = self.path / "children" / f"{self._count:02d}-{slug(child.backend)}-{child.scenario}{suffix}"
        directory.mkdir(parents=True)
        return directory

    def write_scenario(self, child: ChildResult, run):
        directory = self.child_dir(child)
        np.save(directory / Artifacts.LATENCIES, np.asarray(run.latencies_s, dtype=np.float64))
        (directory / Artifacts.LOADGEN_DIR).mkdir()
        for name in (Artifacts.LOADGEN_SUMMARY, Artifacts.LOADGEN_DETAIL):
            shutil.copy2(run.log_dir / name, directory / Artifacts.LOADGEN_DIR / name)
        latency_histogram(run.latencies_s, f"{child.backend} {child.scenario}", directory / Artifacts.LATENCY_HISTOGRAM)
        if getattr(run, "token_records", None):  # token scenarios: per-query TTFT, TPOT, tokens, gaps
            np.savez(directory / Artifacts.TOKEN_LATENCIES, **run.token_records)
        child.artifacts = self._relative(directory)

    def write_files(self, child: ChildResult, files: dict):
        """A child's artifacts by name: dicts of arrays (.npz), text, or bytes."""
        directory = self.child_dir(child)
        for name, content in files.items():
            if isinstance(content, dict):
                np.savez(directory / name, **content)
            elif isinstance(content, bytes):
                (directory / name).write_bytes(content)
            else:
                (directory / name).write_text(content, encoding="utf-8")
        child.artifacts = self._relative(directory)

    def write_accuracy(self, child: ChildResult, scores, y_pred, y_true, robustness=None):
        directory = self.child_dir(child)
        arrays = {"y_pred": y_pred, "sample_index": np.arange(len(scores))}
        if scores.dtype.kind in "fiub":  # a label output of text has no scores
            arrays["scores"] = scores.astype(np.float32)
        if y_true is not None:
            arrays["y_true"] = y_true
        np.savez(directory / Artifacts.PREDICTIONS, **arrays)
        if robustness is not None:
            (directory / Artifacts.ROBUSTNESS).write_text(json.dumps(robustness, indent=2))
        child.artifacts = self._relative(directory)

    def write_config(self, config):
        """The exact config, next to the results: `aif bench run <dir>/config.yaml` reproduces the run."""
        import yaml

        (self.path / Artifacts.CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return f"aif bench run {shlex.quote(str(self.final.resolve() / Artifacts.CONFIG))}"

    def _relative(self, directory):
        return sorted(str(p.relative_to(self.path)) for p in directory.rglob("*") if p.is_file())

    def finish(self, result: BenchmarkResult):
        shutil.rmtree(self.scratch, ignore_errors=True)
        result.results_dir = str(self.final)
        result.to_json(self.path / f"{Artifacts.RESULTS}.tmp")
        os.replace(self.path / f"{Artifacts.RESULTS}.tmp", self.path / Artifacts.RESULTS)
        os.replace(self.path, self.final)
        return self.final

    def discard(self):
        shutil.rmtree(self.path, ignore_errors=True)


def latency_histogram(latencies_s, title, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = np.asarray(latencies_s) * 1e3
    ax.hist(values, bins=min(60, max(5, len(values) // 10)))
    if len(values):
        for q in (50, 90, 99):
            ax.axvline(np.percentile(values, q), linestyle="--", linewidth=1, color="k")
    ax.set_xlabel("latency per query (ms), harness clock")
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the marker: did this directory reach MLflow? ---------------------------------------------------
def write_marker(results_dir, marker: dict):
    (Path(results_dir) / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def read_marker(results_dir):
    path = Path(results_dir) / MARKER
    return json.loads(path.read_text()) if path.exists() else {"uploaded": False}


def pending_uploads(root):
    """Result directories under `root` that never reached MLflow."""
    root = Path(root)
    found = [p.parent for p in sorted(root.glob(f"*/{Artifacts.RESULTS}"))]
    return [p for p in found if not read_marker(p).get("uploaded")]
