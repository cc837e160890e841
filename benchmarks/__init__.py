"""The model benchmark suite: backends, LoadGen scenarios, trackers, reporters.

For notebooks::

    from aifactory.benchmarks import run
    result = run(model="digits_mlp.onnx", data="sklearn:digits", backends=["onnxruntime", "torch:eager"])
    result.to_frame(); result.plot("latency_p90_ms")

Reading results (no torch needed): ``BenchmarkResult.from_json("aif-results/<run>/results.json")``.
Heavy modules (torch, LoadGen) are imported only when a benchmark actually runs.
"""

from .result import BenchmarkResult, ChildResult

__all__ = ["BenchmarkConfig", "BenchmarkResult", "ChildResult", "run", "run_benchmark", "upload"]


def run(config=None, *, model=None, data=None, backends=None, scenarios=None, profile=None, progress=True,
        **sections):
    """Run a benchmark from a config (path, dict or BenchmarkConfig) and/or keyword shortcuts."""
    from .config import BenchmarkConfig
    from .runner import run_benchmark

    if config is None:
        raw = {}
    elif isinstance(config, BenchmarkConfig):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = dict(config)
    else:
        loaded = BenchmarkConfig.from_yaml(config)
        raw = loaded.to_dict()
    raw = {**raw, **sections}
    if model is not None:
        raw["model"] = {**raw.get("model", {}), "path": str(model)}
    if data is not None:
        raw["data"] = {**raw.get("data", {}), "source": str(data)}
    if backends is not None:
        raw["backends"] = list(backends)
    scenario = dict(raw.get("scenario", {}))
    if scenarios is not None:
        scenario["scenarios"] = list(scenarios)
    if profile is not None:
        scenario["profile"] = profile
    raw["scenario"] = scenario
    return run_benchmark(BenchmarkConfig.from_dict(raw), progress=progress)


def __getattr__(name):
    if name == "BenchmarkConfig":
        from .config import BenchmarkConfig

        return BenchmarkConfig
    if name == "run_benchmark":
        from .runner import run_benchmark

        return run_benchmark
    if name == "upload":
        from .results.mlflow import upload

        return upload
    raise AttributeError(name)
