"""Kernel responsiveness while a BenchmarkPanel benchmark runs, vs the same kernel idle.

Prints JSON: median/p90 round trip of a trivial execute request idle and during a benchmark
(the panel's worker process), and their ratio. Usage: .venv/bin/python perf/extensions_responsiveness.py
"""

import json
import statistics
import sys
import time

from jupyter_client.manager import start_new_kernel

PROBES = 30
START_BENCH = """
from aifactory.extensions import BenchmarkPanel
from aifactory.benchmarks.layout import OFFLINE, SINGLE_STREAM
from aifactory.benchmarks.reference import MODELS_DIR
import tempfile
panel = BenchmarkPanel(model=str(MODELS_DIR / "digits_mlp.onnx"), scenarios=[SINGLE_STREAM, OFFLINE],
                       home=tempfile.mkdtemp(), tracking_uri="", scenario={"min_duration_s": 5})
job = panel.run()
"""


def round_trips(client, n, keep_going=lambda: True):
    times = []
    for _ in range(n):
        if not keep_going():
            break
        start = time.perf_counter()
        client.execute_interactive("1 + 1", store_history=False, timeout=60, output_hook=lambda msg: None)
        times.append((time.perf_counter() - start) * 1e3)
        time.sleep(0.1)
    return times


def running(client):
    reply = client.execute_interactive("job.running", user_expressions={"r": "job.running"}, timeout=60,
                                       output_hook=lambda msg: None)
    return reply["content"]["user_expressions"]["r"]["data"]["text/plain"] == "True"


def summary(times):
    ordered = sorted(times)
    return {"n": len(times), "median_ms": round(statistics.median(times), 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2)}


def main():
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        client.execute_interactive("import aifactory.extensions.panels", timeout=120, output_hook=lambda msg: None)
        idle = round_trips(client, PROBES)
        client.execute_interactive(START_BENCH, timeout=120, output_hook=lambda msg: None)
        time.sleep(2)  # the worker is importing and running by now
        busy = round_trips(client, PROBES, keep_going=lambda: running(client))
        client.execute_interactive("job.wait(600)", timeout=660, output_hook=lambda msg: None)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    report = {"metric": "kernel execute round trip while a panel benchmark runs",
              "idle": summary(idle), "during_benchmark": summary(busy),
              "ratio_median": round(statistics.median(busy) / statistics.median(idle), 2)}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
