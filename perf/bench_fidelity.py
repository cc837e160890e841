"""Fidelity: the suite's SingleStream median latency vs torch.utils.benchmark, same model, same run.

For three reference models (`aifactory.benchmarks.reference:image_cnn`, `mlp_512`, `mlp_1024`,
torch eager, one thread), LoadGen's p50 through the suite is compared with the median of single-call
torch.utils.benchmark.Timer measurements on the same model and input. Rounds alternate the
two so drift hits both; the figure is the median of the per-pair ratios. Target: within
1 +- 0.03. Prints JSON.

    .venv/bin/python perf/bench_fidelity.py [--seconds 2] [--rounds 3]
"""

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.utils.benchmark as tbench

from aifactory.benchmarks.backends import TorchBackend
from aifactory.benchmarks.config import BackendConfig, ModelConfig, ScenarioConfig
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.scenarios import ScenarioRunner

MODELS = ["image_cnn", "mlp_512", "mlp_1024"]


def reference_median_us(module, sample, seconds):
    """Median of single-call timings from torch.utils.benchmark (like LoadGen's per-query p50;
    blocked_autorange's block means would fold preemptions on a shared machine into every block)."""
    timer = tbench.Timer(stmt="with torch.inference_mode(): module(x)", globals={"module": module, "x": sample,
                                                                                 "torch": torch}, num_threads=1)
    timer.timeit(10)  # warm-up
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        times.append(timer.timeit(1).times[0])
    return statistics.median(times) * 1e6


def suite_p50_us(backend, staged, seconds, log_root, tag):
    cfg = ScenarioConfig(scenarios=["SingleStream"], min_duration_s=seconds, warmup_s=0.1)
    runner = ScenarioRunner(backend, staged, len(staged), cfg, log_root)
    run = runner.run("SingleStream", name=tag)
    return run.metrics["latency_p50_ms"] * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"metric": "latency_fidelity_ratio_suite_vs_torch_utils_benchmark", "target": "1 +- 0.03",
           "threads": 1, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = load_model(ModelConfig(path=f"aifactory.benchmarks.reference:{name}"))
            backend = TorchBackend(BackendConfig(kind="torch", threads=1), model, "backends[0]")
            data = np.random.default_rng(0).random((256, *model.input_shape), dtype=np.float32)
            staged = backend.stage(data)
            suite, reference = [], []
            for i in range(args.rounds):
                # back-to-back pairs, alternating who goes first, so each pair sees the same load
                for side in ("reference", "suite") if i % 2 == 0 else ("suite", "reference"):
                    if side == "reference":
                        reference.append(reference_median_us(backend.module, staged[:1], args.seconds))
                    else:
                        suite.append(suite_p50_us(backend, staged, args.seconds, f"{tmp}/{name}", f"r{i}"))
            backend.close()
            ratio = statistics.median(s / r for s, r in zip(suite, reference, strict=True))
            out["models"][name] = {"suite_p50_us": statistics.median(suite),
                                   "torch_utils_benchmark_median_us": statistics.median(reference),
                                   "ratio": ratio, "ratio_of_medians": statistics.median(suite) / statistics.median(reference),
                                   "within_3_percent": abs(ratio - 1) <= 0.03,
                                   "rounds": {"suite": suite, "reference": reference}}
    out["all_within_3_percent"] = all(m["within_3_percent"] for m in out["models"].values())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
