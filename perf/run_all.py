"""`make perf`: run every perf/ measurement within 20 minutes, gather their JSON into one file,
and regenerate the summary table in docs/PERFORMANCE.md (issue 9).

Each script prints one JSON object (the last JSON value on its stdout is taken) and runs with
arguments that keep it within its share of the budget. A script that fails, or outlives its
timeout (it gets SIGINT so its own clean-up runs, then its process group is killed), is recorded
with its exit code and the tail of its output; the others still run, and the exit status is 1.
Writes perf/results/perf.json (plus each script's log next to it) and prints one line per script.

    .venv/bin/python perf/run_all.py [--only NAME,...] [--no-docs] [--table-only]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import perf_table

PERF = Path(__file__).resolve().parent
ROOT = PERF.parent
RESULTS = PERF / "results"
DOC = ROOT / "docs" / "PERFORMANCE.md"
BUDGET_S = 20 * 60
TABLE_RESERVE_S = 20  # writing JSON and the table at the end
CLEANUP_GRACE_S = 60  # after SIGINT, time for a script to stop its hubs, clusters and servers


@dataclass
class Measurement:
    name: str
    script: str
    args: tuple = ()
    expected_s: int = 60  # typical run on the 2-core CI machine, kept back for it from earlier scripts
    timeout_s: int = 300

    @property
    def command(self):
        return " ".join([".venv/bin/python", f"perf/{self.script}", *self.args])


MEASUREMENTS = [
    Measurement("platform", "platform_perf.py", (), 150, 300),
    Measurement("login_scale", "login_scale.py", ("--users", "1,20,30", "--single-repeats", "3"), 240, 420),
    Measurement("spawner", "spawner_compare.py", ("--quick",), 270, 420),
    Measurement("bench_overhead", "bench_overhead.py", ("--seconds", "1", "--rounds", "4"), 20, 120),
    # issue 17: fetching only the scored output vs all, on a model with a large unused output
    Measurement("bench_outputs", "bench_outputs.py", ("--seconds", "0.5", "--rounds", "10"), 30, 150),
    Measurement("bench_fidelity", "bench_fidelity.py", ("--seconds", "0.02", "--rounds", "61"), 100, 300),
    Measurement("bench_quick_profile", "bench_quick_profile.py", ("--repeat", "2"), 30, 150),
    Measurement("bench_gpu", "bench_gpu.py", (), 15, 300),
    # issue 18: the streamer -> LoadGen path vs generate() timed bare; the tiny LM's quick profile
    Measurement("genai_overhead", "bench_genai_overhead.py", ("--rounds", "10"), 40, 180),
    Measurement("genai_quick_profile", "bench_genai_quick_profile.py", ("--repeat", "2"), 60, 240),
    # issue 9: "`aif compare` over 200 runs": 50 benchmarks are 200 MLflow runs (parent + 3 children each)
    Measurement("compare_runs", "compare_runs.py", ("--benchmarks", "50", "--repeat", "3"), 45, 240),
    Measurement("workshop_start", "workshop_start.py", (), 150, 300),  # the integrator's; run when present
    # issue 19: an endpoint through the hub's proxy and serve service vs straight to the engine
    Measurement("serve_overhead", "serve_overhead.py", ("--rounds", "2", "--requests", "24"), 150, 300),
]


def last_json(text):
    """The last top-level JSON object in `text` (an object's nested objects are skipped over)."""
    decoder = json.JSONDecoder()
    found, start = None, text.find("{")
    while start >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            found = value
        start = text.find("{", end)
    return found


def machine():
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    return {"cpu_model": model, "cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20), "gpu": gpu_text()}


def gpu_text():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU"
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return ", ".join(names) if out.returncode == 0 and names else "no GPU"


def load_1m():
    return round(os.getloadavg()[0], 2)


def run(measurement, timeout):
    """Run one script; its entry for perf.json. Its stdout and stderr are kept in results/NAME.log."""
    entry = {"command": measurement.command, "date": time.strftime("%Y-%m-%d %H:%M"), "timeout_s": round(timeout)}
    load_before, t0 = load_1m(), time.monotonic()
    proc = subprocess.Popen([sys.executable, str(PERF / measurement.script), *measurement.args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        entry["timed_out"] = True
        stdout, stderr = stop(proc)
    entry.update(seconds=round(time.monotonic() - t0, 1), exit_code=proc.returncode, load_avg=[load_before, load_1m()])
    (RESULTS / f"{measurement.name}.log").write_text(f"$ {measurement.command}\n{stdout}\n--- stderr ---\n{stderr}")
    result = last_json(stdout) if proc.returncode == 0 and not entry.get("timed_out") else None
    if result is None:
        entry["error"] = (stderr or stdout)[-2000:]
    else:
        entry["result"] = result
    return entry


def stop(proc):
    """SIGINT first, so the script's `finally` stops what it started; then the whole group dies."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=CLEANUP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()


def selected(only):
    chosen = [m for m in MEASUREMENTS if (PERF / m.script).exists()]
    if only:
        unknown = set(only) - {m.name for m in MEASUREMENTS}
        if unknown:
            raise SystemExit(f"--only: unknown measurement(s) {sorted(unknown)}; known: {[m.name for m in MEASUREMENTS]}")
        chosen = [m for m in chosen if m.name in only]
    return chosen


def run_all(measurements, out):
    machine_info = machine()
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "make perf", "machine": machine_info,
              "budget_s": BUDGET_S, "load_avg_start": load_1m(), "measurements": {}}
    t0 = time.monotonic()
    deadline = t0 + BUDGET_S - TABLE_RESERVE_S
    for i, m in enumerate(measurements):
        later = sum(n.expected_s for n in measurements[i + 1:])
        timeout = min(m.timeout_s, deadline - time.monotonic() - later)
        if timeout < m.expected_s / 2:
            timeout = min(m.timeout_s, deadline - time.monotonic())  # the later ones then get less
        if timeout < 10:
            entry = {"command": m.command, "date": time.strftime("%Y-%m-%d %H:%M"), "exit_code": None, "seconds": 0,
                     "skipped": "the 20-minute budget was spent", "load_avg": [load_1m(), load_1m()]}
        else:
            entry = run(m, timeout)
        report["measurements"][m.name] = entry
        status = "ok" if "result" in entry else perf_table.failure_text(entry)
        print(f"{m.name:<20} {status:<40} {entry['seconds']:>7.1f} s  load {entry['load_avg'][0]} -> "
              f"{entry['load_avg'][1]}", flush=True)
        write(report, out)
    report.update(total_seconds=round(time.monotonic() - t0, 1), load_avg_end=load_1m())
    write(report, out)
    return report


def merged(full, partial):
    """The last full run with some measurements replaced by a later partial run's."""
    report = dict(full, measurements={**full["measurements"], **partial["measurements"]})
    new = set(partial["measurements"])
    earlier = [{**r, "names": [n for n in r["names"] if n not in new]} for r in full.get("remeasured", [])]
    report["remeasured"] = [*(r for r in earlier if r["names"]), {"names": sorted(new), "date": partial["date"]}]
    return report


def write(report, path):
    path.write_text(json.dumps(report, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated measurement names (default: all); leaves the docs alone")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/PERFORMANCE.md")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: put the new figures into the existing perf/results/perf.json and the table "
                             "(the header names what was re-measured, and when)")
    parser.add_argument("--table-only", action="store_true",
                        help="regenerate the table in docs/PERFORMANCE.md from the existing perf/results/perf.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.merge and not args.only:
        parser.error("--merge needs --only: it re-measures some rows of the last full run")
    full = RESULTS / "perf.json"
    previous = None
    if args.merge or args.table_only:
        if not full.exists():
            parser.error(f"{full.relative_to(ROOT)} does not exist yet: run `make perf` once first")
        previous = json.loads(full.read_text())
    if args.table_only:
        report = previous
    else:
        # a re-measurement writes its progress beside the full run's JSON, which it replaces only when done
        report = run_all(selected(args.only.split(",") if args.only else None),
                         RESULTS / "perf-partial.json" if args.merge else full)
        if args.merge:
            report = merged(previous, report)
            write(report, full)
    _, failures = perf_table.table(report)
    if not (args.no_docs or (args.only and not args.merge)):  # a partial run must not replace the full table
        perf_table.update_doc(DOC, report)
        print(f"table: {DOC.relative_to(ROOT)}")
    print(f"results: {(RESULTS / 'perf.json').relative_to(ROOT)} ({report.get('total_seconds', '?')} s)")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
