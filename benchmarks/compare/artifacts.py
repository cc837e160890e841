"""Run artifacts a comparison reads (raw latencies, predictions, JSON), downloaded once and cached.

Metrics come from the bulk search; artifacts are fetched only when a significance test or a
report needs them, into a temporary directory that lives as long as the comparison.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

# MLflow draws a progress bar per artifact download; a comparison downloads many small ones.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class ArtifactCache:
    def __init__(self, client):
        self.client = client
        self._tmp = None

    @property
    def directory(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aif-compare-")
        return self._tmp.name

    def path(self, run, name):
        """Local path of a run's artifact, or None when the run does not have it."""
        dst = os.path.join(self.directory, run.info.run_id)
        local = os.path.join(dst, name)
        if os.path.exists(local):
            return local
        os.makedirs(dst, exist_ok=True)
        try:
            return self.client.download_artifacts(run.info.run_id, name, dst)
        except Exception:  # MLflow raises several types for "no such artifact"
            return None

    def array(self, run, name):
        """An .npy artifact, or None."""
        local = run is not None and self.path(run, name)
        return np.load(local) if local else None

    def arrays(self, run, name):
        """An .npz artifact as a dict of arrays, or None."""
        local = self.path(run, name)
        if not local:
            return None
        with np.load(local, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def json(self, run, name) -> dict:
        """A JSON artifact, or {} when it is missing or not valid JSON."""
        local = self.path(run, name)
        if not local:
            return {}
        try:
            with open(local, encoding="utf-8") as f:
                return json.load(f)
        except ValueError:
            return {}

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
