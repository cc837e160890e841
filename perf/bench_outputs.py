"""Fetching only the scored output vs every output (issue 17), on a model with a large unused output.

The model (built here with onnx.helper): x [N, 64] -> hidden states [N, L, 64] (x plus a position
table, 64 KiB per sample at L=256) -> mean over L -> logits [N, 10]. Both are graph outputs, as a
transformer returns logits beside its last_hidden_state; only logits is scored. Three sides, each a
SingleStream LoadGen test of the same session settings, interleaved over rounds in one process:

- scored: the suite's ONNX Runtime backend, `fetch_outputs: scored` (the default): fetches logits;
- all: the same backend, `fetch_outputs: all`: fetches logits and hidden;
- bare: LoadGen's cheapest SUT calling `session.run(["logits"], ...)` directly, no suite code:
  scored - bare is what output selection (and the rest of the backend) costs per query.

Figures are LoadGen's own p50 per-query latency (its detail log); the all/scored ratio is the
median of the per-round ratios (paired, so drift cancels). Because a loaded machine moves those by
more than the backend's own per-query cost, that cost is also timed alone: the backend's `infer`
against the bare `session.run` on a model with the logits branch only, in alternating blocks of
calls (the median per-block difference). Prints JSON.

    .venv/bin/python perf/bench_outputs.py [--seconds 0.5] [--rounds 10] [--length 256] [--branch]
"""

import argparse
import json
import statistics
import tempfile
import timeit
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np

from aifactory.benchmarks.backends.onnxruntime import OnnxRuntimeBackend
from aifactory.benchmarks.config import BackendConfig, ModelConfig, ScenarioConfig
from aifactory.benchmarks.layout import SINGLE_STREAM, Artifacts
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.scenarios import ScenarioRunner, read_detail_log
from aifactory.benchmarks.scenarios.loadgen import log_settings, test_settings

N_SAMPLES = 1024
FEATURES, CLASSES = 64, 10


def two_output_model(path, length, branch=False):
    """logits [N, 10] (scored), computed from hidden states [N, length, 64] that are an output too
    (length=0: logits only). The logits need the hidden states, so both fetches compute the same;
    what fetching all adds is handing over an output no metric reads. branch=True: the hidden
    output has a branch of its own instead (x W, W [64, length * 64]) that the logits do not need."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w_logits": rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)}
    if not length:
        nodes = [helper.make_node("MatMul", ["x", "w_logits"], ["logits"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])]
    elif branch:
        weights["w_hidden"] = (rng.standard_normal((FEATURES, length * FEATURES)) / 8).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w_logits"], ["logits"]),
                 helper.make_node("MatMul", ["x", "w_hidden"], ["hidden"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
                   helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", length * FEATURES])]
    else:
        weights["positions"] = rng.standard_normal((1, length, FEATURES)).astype(np.float32)
        weights["axis_1"] = np.array([1], dtype=np.int64)
        nodes = [helper.make_node("Unsqueeze", ["x", "axis_1"], ["tokens"]),
                 helper.make_node("Add", ["tokens", "positions"], ["hidden"]),
                 helper.make_node("ReduceMean", ["hidden"], ["pooled"], axes=[1], keepdims=0),
                 helper.make_node("MatMul", ["pooled", "w_logits"], ["logits"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
                   helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", length, FEATURES])]
    graph = helper.make_graph(
        nodes, "two_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])], outputs,
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def settings(seconds):
    return {"min_duration_ms": int(seconds * 1000), "max_duration_ms": int(seconds * 4000), "min_query_count": 100,
            "single_stream_expected_latency_ns": 20_000}


def through_suite(backend, data, seconds, log_dir):
    cfg = ScenarioConfig(scenarios=[SINGLE_STREAM], warmup_s=0.05)
    runner = ScenarioRunner(backend, backend.stage(data), N_SAMPLES, cfg, log_dir)
    run = runner._execute(SINGLE_STREAM, settings(seconds), 1, SINGLE_STREAM, "run")
    return run.loadgen


def bare_loadgen(session, data, seconds, log_dir):
    """The reference: session.run on the scored output from LoadGen's fast SUT, nothing else."""
    views = [data[i:i + 1] for i in range(N_SAMPLES)]
    response = lg.QuerySampleResponse(0, 0, 0)
    responses, fetch, run = [response], ["logits"], session.run

    def issue(ids, indices):
        run(fetch, {"x": views[indices[0]]})
        response.id = ids[0]
        lg.QuerySamplesComplete(responses)

    Path(log_dir).mkdir(parents=True)
    sut = lg.ConstructFastSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(N_SAMPLES, N_SAMPLES, lambda s: None, lambda s: None)
    lg.StartTestWithLogSettings(sut, qsl, test_settings(SINGLE_STREAM, settings(seconds)), log_settings(log_dir))
    lg.DestroyQSL(qsl)
    lg.DestroyFastSUT(sut)
    return read_detail_log(Path(log_dir) / Artifacts.LOADGEN_DETAIL)


def per_call_us(path, data, blocks=40, number=2000):
    """The backend's infer vs the bare session.run, same session, same view, in alternating blocks
    of calls: the median per-block difference is robust to what else the machine does."""
    model = load_model(ModelConfig(path=str(path)))
    backend = OnnxRuntimeBackend(BackendConfig(threads=1, device="cpu"), model, "backends[0]")
    view, run, fetch = backend.stage(data)[:1], backend.session.run, ["logits"]
    calls = {"suite_infer": lambda: backend.infer(view), "bare_session_run": lambda: run(fetch, {"x": view})}
    times = {name: [] for name in calls}
    for i in range(blocks):
        for name in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
            times[name].append(timeit.timeit(calls[name], number=number) / number * 1e6)
    differences = [a - b for a, b in zip(times["suite_infer"], times["bare_session_run"], strict=True)]
    return {"suite_infer_best_us": min(times["suite_infer"]), "bare_session_run_best_us": min(times["bare_session_run"]),
            "suite_minus_bare_median_us": statistics.median(differences), "blocks": blocks, "calls_per_block": number}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--length", type=int, default=256, help="L of the unused hidden states [N, L, 64]")
    parser.add_argument("--branch", action="store_true", help="the unused output from a branch of its own")
    args = parser.parse_args()
    data = np.random.default_rng(1).random((N_SAMPLES, FEATURES), dtype=np.float32)
    p50 = {"scored": [], "all": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = two_output_model(Path(tmp) / "two_outputs.onnx", args.length, args.branch)
        model = load_model(ModelConfig(path=str(path), output="logits"))  # two float outputs: named, not guessed
        backends = {side: OnnxRuntimeBackend(BackendConfig(threads=1, device="cpu", fetch_outputs=side), model,
                                             "backends[0]") for side in ("scored", "all")}
        sides = {"scored": lambda d, s=backends["scored"]: through_suite(s, data, args.seconds, d),
                 "all": lambda d, s=backends["all"]: through_suite(s, data, args.seconds, d),
                 "bare": lambda d: bare_loadgen(backends["scored"].session, data, args.seconds, d)}
        for i in range(args.rounds):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))  # drift hits every side alike
            for side in order:
                detail = sides[side](Path(tmp) / f"{side}-{i}")
                p50[side].append(detail["result_50.00_percentile_latency_ns"] / 1e3)
        fetched = {side: backend.fetched_outputs for side, backend in backends.items()}
        calls = per_call_us(two_output_model(Path(tmp) / "logits_only.onnx", 0), data)
    median = statistics.median
    ratios = [a / s for a, s in zip(p50["all"], p50["scored"], strict=True)]  # paired within each round
    result = {
        "metric": "singlestream_p50_us_scored_vs_all_outputs",
        "unused_output": f"hidden [N, {args.length}, {FEATURES}] float32 ({args.length * FEATURES * 4 / 1024:.0f} KiB "
                         f"per sample{', a branch of its own' if args.branch else ', the logits computed from it'})",
        "fetched": fetched,
        "scored_p50_us": median(p50["scored"]), "all_p50_us": median(p50["all"]),
        "ratio_all_vs_scored": median(ratios), "bare_session_run_p50_us": median(p50["bare"]),
        "per_call": calls,
        "rounds": args.rounds, "seconds_per_run": args.seconds, "per_round_p50_us": p50,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
