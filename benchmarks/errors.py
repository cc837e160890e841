"""The benchmark suite's errors: one base, `BenchmarkError`, under the platform's `AIFError`.

Every message names the field, file, backend or server that was wrong and what was expected, so
the CLIs (`aif bench`, `aif compare`, `aif report`, through `aifactory.common.errors.cli_errors`)
print it as it is and the notebook panels show it in place. Each error also keeps the built-in
type callers caught before the suite had a base of its own (ValueError, RuntimeError, ...).
"""

from aifactory.common.errors import AIFError


def quoted(err, limit=500):
    """`Type: first line` of a framework's exception, for quoting it inside one of ours."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:limit] if text else ''}"


class BenchmarkError(AIFError):
    """A benchmark, a comparison or a report cannot go on; the message says what to fix."""


class ConfigError(BenchmarkError, ValueError):
    """A configuration value is missing or wrong; the message names the field."""


class DataError(BenchmarkError, ValueError):
    """The dataset cannot be read or does not fit the model; the message names the file or field."""


class ModelError(BenchmarkError, ValueError):
    """The model cannot be loaded or run; the message names the file or field."""


class BackendError(BenchmarkError, ValueError):
    """A backend cannot run as configured; the message names the config field."""


class AccuracyError(BenchmarkError, ValueError):
    """Outputs that cannot be scored (NaN, wrong length); the message names the backend or field."""


class ScenarioError(BenchmarkError, RuntimeError):
    """The model failed while LoadGen was driving it; the message names backend and scenario."""


class ResultsError(BenchmarkError, ValueError):
    """A results directory or results.json cannot be read; the message names the path."""


class ResultsNotFound(ResultsError, FileNotFoundError):
    """No results.json where one was expected (a failed or unfinished benchmark writes none)."""


class MLflowUnavailable(BenchmarkError, RuntimeError):
    """MLflow did not take (or give back) the results; local results are kept and can be uploaded."""


class ServerUnreachable(MLflowUnavailable, ConnectionError):
    """The tracking server did not answer; raised before MLflow's minutes of retries."""

    def __init__(self, uri, reason):
        super().__init__(f"MLflow tracking server {uri} is not reachable: {reason}")
        self.uri, self.reason = uri, reason


class CompareError(BenchmarkError, ValueError):
    """A comparison was asked for something it does not have (a column, a baseline, a tag filter)."""


class EmptySelection(CompareError):
    """Nothing matched the selection; the message says what was asked for."""


class SLOError(CompareError):
    """A service-level target does not parse; the message quotes it and the expected syntax."""


class LaunchError(BenchmarkError, RuntimeError):
    """A benchmark job could not be submitted (no sbatch, or Slurm refused it)."""
