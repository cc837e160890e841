"""The contract of a reporter: where a benchmark's results go besides the local directory.

The runner calls, in order: `start` once the local directory exists (False: the reporter could
not start and says why in `error`; the benchmark goes on locally), `log_child` per finished
child, then `finish` with the written results.json, or `fail` with the error that ended the
benchmark, or `abort` when the user cancelled it. A reporter never raises out of these: a
tracking server that goes away must not cost the user a finished local result.
"""

from __future__ import annotations

import abc


class Reporter(abc.ABC):
    #: why the reporter is not (or no longer) recording, for the user and the marker file
    error: str | None = None

    @abc.abstractmethod
    def start(self, result, params: dict) -> bool:
        """Open the record of this benchmark (result.status is RUNNING)."""

    @abc.abstractmethod
    def log_child(self, result, child, results_dir):
        """Record one finished child (a backend's accuracy, or one scenario) and its artifacts."""

    @abc.abstractmethod
    def finish(self, result, results_json):
        """Close the record of a finished benchmark."""

    @abc.abstractmethod
    def fail(self, error: BaseException):
        """Close the record of a failed benchmark, with the error."""

    @abc.abstractmethod
    def abort(self, reason: str):
        """Close the record of a cancelled benchmark; may be called from a signal handler."""

    def marker(self) -> dict:
        """What the local directory's marker says about this reporter (MLflow: run id, uploaded)."""
        return {"uploaded": False, "reason": self.error}
