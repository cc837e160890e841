"""GPU figures (H100/H200 class): Offline throughput vs torch's own bf16 matmul peak, and
SingleStream p50 with and without CUDA graphs. Without a CUDA device it prints a JSON line that
says so and exits 0 (there is nothing to measure on a CPU-only machine).

1. Peak: torch.matmul of two N x N bf16 matrices, timed with CUDA events, in this process.
2. Suite: `reference:matmul_mlp` (depth x width^2 GEMMs, bf16, torch eager) through LoadGen's
   Offline scenario at a large batch; achieved FLOP/s = samples/s x 2 x depth x width^2.
   Target: achieved / peak >= 0.9.
3. SingleStream p50 of the digits MLP (torch eager, bf16) with `cuda_graphs` off and on.
4. LLM decode: a Llama-3.1-8B-shaped model with random weights from its config (bf16, built on
   the device, nothing downloaded). Batch-1 decode tokens/s against the memory roofline: HBM
   bandwidth measured here by a device-to-device copy, divided by the bytes read per token (the
   weights, plus the KV cache so far). Then TTFT/TPOT under LoadGen's Server scenario through the
   suite's transformers backend (llama3.1-8b bounds) and NVML energy per output token.

Without a CUDA device the GPU parts are skipped, and part 4 runs on the CPU with a tiny Llama
config (host memcpy bandwidth), in seconds: the script is proven before a device is lent.

    .venv/bin/python perf/bench_gpu.py [--width 16384] [--depth 8] [--batch 4096] [--seconds 5]
    .venv/bin/python perf/bench_gpu.py --llm-only [--llm-tokens 128]
"""

import argparse
import json
import tempfile
import time

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


# -- LLM decode (part 4) --------------------------------------------------------------------------
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024)


def copy_bandwidth_gbs(torch, device, gib=4.0):
    """Read+write bytes per second of a device-to-device copy (the decode roofline's bandwidth)."""
    n = int(gib * 2**30 / 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rounds = 10
    for _ in range(rounds):
        dst.copy_(src)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * src.numel() * src.element_size() * rounds / (time.perf_counter() - start) / 1e9


class _Tokenizer:
    """What the backend reads of a tokenizer when prompts come as token ids (random weights: no text)."""

    pad_token_id, eos_token_id = 0, None


def llm_model(torch, shape, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return model


def decode_tokens_per_s(torch, model, tokens, device):
    """Batch-1 greedy decode, eos ignored: generated tokens / time after the first token."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.randint(3, model.config.vocab_size, (1, 128 if device == "cuda" else 16), device=device)
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
        streamer = Stamps()
        model.generate(input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=streamer)
    decode_s = streamer.times[-1] - streamer.times[1]
    return (tokens - 1) / decode_s


def llm_server(torch, model, device, precision, seconds, log_root):
    """TTFT/TPOT under LoadGen's Server (llama3.1-8b bounds) through the suite's transformers backend."""
    from aifactory.benchmarks.backends.transformers import TransformersBackend
    from aifactory.benchmarks.config import BackendConfig, GenerationConfig, ScenarioConfig
    from aifactory.benchmarks.layout import SERVER, Metrics
    from aifactory.benchmarks.scenarios.generation import TokenScenarioRunner
    from aifactory.benchmarks.text.data import TokenizedPrompts, _object_array
    from aifactory.benchmarks.text.hf import TextModel

    class InMemory(TextModel):
        def load_module(self, precision, device, where):
            return model

    text = InMemory(name="llama-8b-shape", source="config", path=None, task="text-generation",
                    config=model.config.to_dict(), tokenizer_path=None)
    text.__dict__["tokenizer"] = _Tokenizer()
    backend = TransformersBackend(BackendConfig(kind="transformers", device=device, precision=precision), text,
                                  "backends[0]")
    gpu = device == "cuda"
    budget = 64 if gpu else 8  # the CPU proof run: seconds, not minutes
    generation = GenerationConfig(max_new_tokens=budget, ignore_eos=True, max_batch_size=8)
    backend.configure_generation(generation)
    rng = np.random.default_rng(0)
    lengths = rng.integers(64, 256, 64) if gpu else rng.integers(8, 32, 16)
    prompts = TokenizedPrompts(_object_array([rng.integers(3, model.config.vocab_size, int(n)) for n in lengths]),
                               [budget] * len(lengths))
    cfg = ScenarioConfig(min_duration_s=seconds, slo_preset="llama3.1-8b", min_query_count=32 if gpu else 8,
                         server_search=gpu, server_target_qps=None if gpu else 4.0)
    run = TokenScenarioRunner(backend, prompts, cfg, generation, log_root).run(SERVER)
    keep = (Metrics.TTFT_P50, Metrics.TTFT_P99, Metrics.TPOT_P50, Metrics.TPOT_P99, Metrics.OUTPUT_TOKENS_PER_S,
            Metrics.SERVER_MAX_VALID_QPS, Metrics.GOODPUT, Metrics.ENERGY_PER_OUTPUT_TOKEN, Metrics.PEAK_GPU_MEM,
            Metrics.KV_CACHE_PEAK)
    return {**{k: run.metrics.get(k) for k in keep}, "result_valid": run.validity, **run.tags}


def llm_decode(torch, tokens, seconds, log_root):
    gpu = torch.cuda.is_available()
    device, shape, dtype = ("cuda", LLAMA_8B, torch.bfloat16) if gpu else ("cpu", TINY, torch.float32)
    bandwidth = copy_bandwidth_gbs(torch, device, 4.0 if gpu else 0.25)
    model = llm_model(torch, shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = params * (2 if gpu else 4)
    config = model.config
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * (2 if gpu else 4)
    prompt = 128 if gpu else 16
    bytes_per_token = weight_bytes + kv_per_token * (prompt + tokens / 2)  # weights + the average KV cache read
    rate = decode_tokens_per_s(torch, model, tokens, device)
    roofline = bandwidth * 1e9 / bytes_per_token
    return {"device": device if gpu else "cpu (proof run: tiny Llama config, fp32)",
            "model": "Llama-3.1-8B shape, random weights, bf16" if gpu else "tiny Llama config",
            "parameters": params, "weight_gb": weight_bytes / 1e9, "copy_bandwidth_gbs": bandwidth,
            "decode_tokens_per_s_batch1": rate, "roofline_tokens_per_s": roofline, "fraction_of_roofline": rate / roofline,
            "server": llm_server(torch, model, device, "bf16" if gpu else "fp32", seconds, log_root)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--llm-only", action="store_true", help="only part 4 (LLM decode)")
    parser.add_argument("--llm-tokens", type=int, default=128)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        llm = llm_decode(torch, args.llm_tokens if torch.cuda.is_available() else 16,
                         args.seconds if torch.cuda.is_available() else 0.5, f"{tmp}/llm")
    if args.llm_only or not torch.cuda.is_available():
        out = {"metric": "gpu_benchmarks", "llm_decode": llm}
        if not torch.cuda.is_available():
            out.update(skipped=True, reason="no CUDA device visible (torch.cuda.is_available() is False); "
                                            "llm_decode ran on the CPU with a tiny config to prove the script")
        print(json.dumps(out, indent=2, default=float))
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
        "llm_decode": llm,
    }, indent=2, default=float))


if __name__ == "__main__":
    main()
