"""GPU figures (H100/H200 class): Offline throughput vs torch's own bf16 matmul peak, and
SingleStream p50 with and without CUDA graphs. Without a CUDA device it prints a JSON line that
says so and exits 0 (there is nothing to measure on a CPU-only machine).

1. Peak: torch.matmul of two N x N bf16 matrices, timed with CUDA events, in this process.
2. Suite: `reference:matmul_mlp` (depth x width^2 GEMMs, bf16, torch eager) through LoadGen's
   Offline scenario at a large batch; achieved FLOP/s = samples/s x 2 x depth x width^2.
   Target: achieved / peak >= 0.9.
3. SingleStream p50 of the digits MLP (torch eager, bf16) with `cuda_graphs` off and on.

    .venv/bin/python perf/bench_gpu.py [--width 16384] [--depth 8] [--batch 4096] [--seconds 5]
"""

import argparse
import json
import tempfile

import numpy as np


def matmul_peak_tflops(torch, n=8192, iterations=50):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        torch.matmul(a, b)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / iterations
    return 2 * n**3 / seconds / 1e12


def offline_tflops(width, depth, batch, seconds, log_root):
    from aifactory.benchmarks.backends.pytorch import TorchBackend
    from aifactory.benchmarks.config import BackendConfig, ModelConfig, ScenarioConfig
    from aifactory.benchmarks.layout import OFFLINE, Metrics
    from aifactory.benchmarks.models import load_model
    from aifactory.benchmarks.reference import matmul_mlp
    from aifactory.benchmarks.scenarios import ScenarioRunner

    model = load_model(ModelConfig(path="aifactory.benchmarks.reference:matmul_mlp"))
    model.module = matmul_mlp(width=width, depth=depth, device="cuda")
    model.input_shape = (width,)
    backend = TorchBackend(BackendConfig(kind="torch", precision="bf16", device="cuda"), model, "backends[0]")
    data = np.random.default_rng(0).standard_normal((2 * batch, width), dtype=np.float32)
    staged = backend.stage(data)
    runner = ScenarioRunner(backend, staged, len(data), ScenarioConfig(min_duration_s=seconds, warmup_s=0.5,
                                                                        offline_batch_size=batch), log_root)
    run = runner.run(OFFLINE)
    backend.close()
    samples_per_s = run.metrics[Metrics.THROUGHPUT]
    return samples_per_s, samples_per_s * 2 * depth * width**2 / 1e12, run


def single_stream_p50_us(cuda_graphs, seconds, log_root):
    from aifactory.benchmarks.backends.pytorch import TorchBackend
    from aifactory.benchmarks.config import BackendConfig, DataConfig, ModelConfig, ScenarioConfig
    from aifactory.benchmarks.data import load_dataset
    from aifactory.benchmarks.layout import SINGLE_STREAM, Metrics
    from aifactory.benchmarks.models import load_model
    from aifactory.benchmarks.scenarios import ScenarioRunner

    model = load_model(ModelConfig(path="aifactory.benchmarks.reference:digits_mlp"))
    backend = TorchBackend(BackendConfig(kind="torch", precision="bf16", device="cuda", cuda_graphs=cuda_graphs),
                           model, "backends[0]")
    data = load_dataset(DataConfig(source="sklearn:digits"))
    staged = backend.stage(data.x)
    runner = ScenarioRunner(backend, staged, len(data), ScenarioConfig(min_duration_s=seconds, warmup_s=0.5), log_root)
    run = runner.run(SINGLE_STREAM, name=f"graphs-{cuda_graphs}")
    backend.close()
    return run.metrics[Metrics.LATENCY_P50] * 1e3, run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"metric": "gpu_benchmarks", "skipped": True,
                          "reason": "no CUDA device visible (torch.cuda.is_available() is False)"}))
        return
    from aifactory.benchmarks.fingerprint import collect

    fingerprint = collect()
    with tempfile.TemporaryDirectory() as tmp:
        peak = matmul_peak_tflops(torch)
        samples_per_s, achieved, offline = offline_tflops(args.width, args.depth, args.batch, args.seconds, f"{tmp}/o")
        plain_us, plain = single_stream_p50_us(False, args.seconds, f"{tmp}/s")
        graphs_us, graphs = single_stream_p50_us(True, args.seconds, f"{tmp}/s")
    print(json.dumps({
        "metric": "gpu_benchmarks", "gpu": fingerprint["gpu_names"], "driver": fingerprint["gpu_driver"],
        "cuda": fingerprint["cuda"], "torch": fingerprint["torch"],
        "matmul_bf16_peak_tflops": peak,
        "offline": {"model": f"matmul_mlp width={args.width} depth={args.depth} bf16", "batch": args.batch,
                    "samples_per_s": samples_per_s, "achieved_tflops": achieved,
                    "fraction_of_matmul_peak": achieved / peak, "target": 0.9,
                    "result_valid": offline.validity, "energy_j_per_inference":
                    offline.metrics.get("energy_j_per_inference"), "peak_gpu_mem_mb": offline.metrics.get("peak_gpu_mem_mb")},
        "single_stream_digits_mlp_bf16": {"p50_us_eager": plain_us, "p50_us_cuda_graphs": graphs_us,
                                          "speedup": plain_us / graphs_us, "valid": [plain.validity, graphs.validity]},
    }, indent=2))


if __name__ == "__main__":
    main()
