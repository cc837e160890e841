#!/usr/bin/env python3
"""Served models (issue 19): engine start-up, and TTFT/TPOT straight to the engine vs through the hub.

One real platform (proxy + hub + the serve service) and one vLLM (CPU build) engine on this host,
registered as an endpoint of a hub user exactly as `aif serve start` records it (minus the Slurm
job, so that the figures are the proxy's and not the scheduler's). In the same run, N streamed
completions at 1 and 16 concurrent streams go straight to the engine (with its secret), to the
serve service's own port (the hop without the proxy) and through /services/serve/<owner>/<name>/v1
(with the user's hub token). Single streams alternate path by path, request by request; the
16-stream batches alternate batch by batch. TTFT is taken at the first non-empty chunk,
TPOT = (E2E - TTFT) / (completion_tokens - 1) from the usage chunk; every request generates
exactly --tokens tokens (min_tokens = max_tokens).

At a site the engine runs on a GPU node and the proxy on the hub's host. Here they share one
machine, so the engine gets CPUs of its own (the first half; CPU 0 on 2 cores) and the platform
and this client the others: otherwise the proxy's work would slow the engine's API server, and
the figures would measure the shared cores rather than the hop.

    CI=true flock /work/locks/system-tests.lock .venv/bin/python perf/serve_overhead.py --out perf/results/serve.json

Prints JSON: p50s per path and concurrency, the milliseconds the hub adds at p50, and the ratios
hub/direct (target: TTFT +5 % at most at p50, TPOT within noise).
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


def split_cpus():
    """(the engine's CPUs, everyone else's): the first half for the engine, as if on its own node."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def start_engine(python, model, port, secret, log, cpus=None):
    env = {**os.environ, "VLLM_API_KEY": secret, "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    if cpus:  # vLLM's CPU build binds its worker itself: give it exactly these, none held back
        env.update(VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, sorted(cpus))), VLLM_CPU_NUM_OF_RESERVED_CPU="0",
                   OMP_WAIT_POLICY="PASSIVE")
    from aifactory.hub.serving.engines import CPU_ARGS, VLLM_MODULE

    started = time.monotonic()
    proc = subprocess.Popen([python, "-m", VLLM_MODULE, "--model", str(model), "--served-model-name", "tiny",
                             "--host", "127.0.0.1", "--port", str(port), *CPU_ARGS], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
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
        return list(pool.map(lambda i: one_stream(client, url, key, tokens, PROMPTS[i % len(PROMPTS)]),
                             range(requests)))


def single_streams(paths, requests, tokens):
    """Request by request, each path in turn, over one kept-alive client per path."""
    samples = {name: [] for name in paths}
    clients = {name: httpx.Client(timeout=120) for name in paths}
    try:
        for i in range(requests):
            for name, (url, key) in paths.items():
                samples[name].append(one_stream(clients[name], url, key, tokens, PROMPTS[i % len(PROMPTS)]))
    finally:
        for client in clients.values():
            client.close()
    return samples


def serve_service_port():
    """The port the hub's serve service listens on (the hop behind the proxy), from its process."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "aifactory.hub.serving.front" in " ".join(proc.info["cmdline"] or []):
            ports = [c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            if ports:
                return ports[0]
    raise SystemExit("the hub's serve service is not running")


def p50s(samples):
    ttft, tpot = [s[0] for s in samples], [s[1] for s in samples]
    return {"ttft_p50_ms": round(statistics.median(ttft), 2), "tpot_p50_ms": round(statistics.median(tpot), 3)}


def cell(samples):
    out = {name: p50s(values) for name, values in samples.items()}
    direct, hub = out["direct"], out["hub"]
    out["ttft_added_ms_hub"] = round(hub["ttft_p50_ms"] - direct["ttft_p50_ms"], 2)
    out["ttft_ratio_hub_vs_direct"] = round(hub["ttft_p50_ms"] / direct["ttft_p50_ms"], 3)
    out["tpot_ratio_hub_vs_direct"] = round(hub["tpot_p50_ms"] / direct["tpot_p50_ms"], 3)
    return out


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

    engine_cpus, other_cpus = split_cpus()
    os.sched_setaffinity(0, other_cpus)  # the platform started below inherits it
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
        engine, startup_s = start_engine(str(ENGINE_PYTHON), endpoint.model, port, endpoint.secret(),
                                         work / "engine.log", engine_cpus if engine_cpus != other_cpus else None)
        (endpoint.folder / ADDRESS_FILE).write_text(json.dumps({"host": "127.0.0.1", "port": port}))
        route = f"/services/serve/{owner}/tiny/v1"
        paths = {"direct": (f"http://127.0.0.1:{port}/v1", endpoint.secret()),
                 "service": (f"http://127.0.0.1:{serve_service_port()}{route}", token),
                 "hub": (f"{platform.url}{route}", token)}
        for url, key in paths.values():  # warm every path (connections, the hub's token cache)
            measure(url, key, 4, 8, args.tokens)
        single = {name: [] for name in paths}
        batched = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, values in single_streams(paths, args.requests, args.tokens).items():
                single[name].extend(values)
            for name, (url, key) in paths.items():
                batched[name].extend(measure(url, key, 16, args.requests, args.tokens))
        report = {"engine": "vllm-cpu 0.32.0 --enforce-eager", "model": "reference LM (2 layers, 128 hidden)",
                  "engine_startup_s": round(startup_s, 1), "tokens": args.tokens,
                  "engine_cpus": sorted(engine_cpus), "platform_and_client_cpus": sorted(other_cpus),
                  "requests_per_cell": args.rounds * args.requests, "load_avg": os.getloadavg()[0],
                  "c1": cell(single), "c16": cell(batched)}
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
