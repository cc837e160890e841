"""`make perf`: run every perf/ measurement and gather their JSON into one file.

Each script prints one JSON object (the last JSON value on its stdout is taken). A script that
fails is recorded with its exit code and the tail of its output; the others still run.
Writes perf/results/perf.json and prints a one-line summary per script.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
MEASUREMENTS = [
    ("platform", ["platform_perf.py"]),
    ("spawner", ["spawner_compare.py"]),
    ("bench_overhead", ["bench_overhead.py"]),
    ("bench_fidelity", ["bench_fidelity.py"]),
    ("bench_quick_profile", ["bench_quick_profile.py"]),
    ("bench_gpu", ["bench_gpu.py"]),
    ("compare_runs", ["compare_runs.py"]),
]


def last_json(text):
    decoder = json.JSONDecoder()
    found = None
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text[start:])
        except ValueError:
            continue
        found = value
    return found


def run(name, args):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(PERF / args[0]), *args[1:]], capture_output=True, text=True)
    entry = {"seconds": round(time.monotonic() - t0, 1), "exit_code": proc.returncode}
    result = last_json(proc.stdout) if proc.returncode == 0 else None
    if result is None:
        entry["error"] = (proc.stderr or proc.stdout)[-2000:]
    else:
        entry["result"] = result
    return entry


def main():
    out = PERF / "results" / "perf.json"
    out.parent.mkdir(exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "measurements": {}}
    for name, args in MEASUREMENTS:
        entry = run(name, args)
        report["measurements"][name] = entry
        status = "ok" if "result" in entry else f"FAILED ({entry['exit_code']})"
        print(f"{name:<22} {status:<12} {entry['seconds']:>7.1f} s", flush=True)
        out.write_text(json.dumps(report, indent=1))
    print(f"results: {out}")
    return 0 if all("result" in e for e in report["measurements"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
