"""Figures of the fault scenarios: perf/results/faults.json and the "## Faults" table of
docs/RELIABILITY.md, both rewritten from the merged results after every `make faults`.

Entries are kept by scenario id, so running one scenario (`-k`) updates its row and leaves
the others as they were last measured.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "perf" / "results" / "faults.json"
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
COMMAND = "make faults"  # or: .venv/bin/python -m pytest -m faults perf/faults -k <scenario>
HEADINGS = ("## Faults", "## Attack cases")

INTRO = """\
Scripted fault injection against the real stack (`make faults`, i.e. `pytest -m faults perf/faults`):
the platform as `aif up --spawner slurm` runs it (proxy, JupyterHub, the MLflow service) on the
Slurm mini-cluster with real Unix users' sessions; each fault is injected for real (killed
processes, a stopped slurmctld, a drained and a downed node, a full filesystem). Each row is
asserted by a test in perf/faults/ and rewritten from perf/results/faults.json by the last run.
"""

FINDINGS = """\
What these scenarios found, fixed before the figures above were taken:

- node down: Slurm requeued the sessions' jobs (JobRequeue defaults to 1), so the hub saw them
  PENDING, kept ten servers that no longer existed and told nobody (0/10 noticed). Sessions are
  now submitted with `--no-requeue` (hub/spawner/slurm.py): the jobs end NODE_FAIL and users are told.
- 40 users logging at once: with the MLflow server's kept-connection pool at MLflow's default
  overflow (10), 3 of 40 users got "QueuePool limit of size 5 overflow 10 reached" after 30 s
  (1950/2000 points). The overflow now covers a worker's 40 request threads (hub/tracking/server.py).
  No "database is locked" in any run (SQLite in WAL mode).
- disk full: MLflow clients got SQL tracebacks (SQLite cannot even read a WAL database then) or
  a 502 that they retried for about 2 minutes ("too many 502 error responses"); the hub also
  refuses API tokens then (it cannot record their use). The MLflow service now answers 507
  RESOURCE_EXHAUSTED "the platform's MLflow store is out of disk space ..." once the stores'
  filesystem has under 1 MiB free; `aif user add` says which file it could not write instead of
  a traceback. The hub login kept working; no database was damaged.
- MLflow killed mid-benchmark: with the client's default retries the benchmark waits out the
  restart (the hub restarts its managed service) and logs live; without retries it keeps the
  result locally and `aif bench upload` sends it, which now also marks the half-logged run
  FAILED instead of leaving it RUNNING forever (benchmarks/results/mlflow.py).
- stopped in the middle of a hub restart (issue 22, seen once in a workshop create → end cycle):
  the new hub was starting its managed services, and JupyterHub installs its signal handlers only
  once they are all up, so SIGTERM ended it without its cleanup; the MLflow service, in its own
  session, armed its death-of-parent guard only after its imports, so it and its MLflow server ran
  on as orphans holding the database and the port. Every hub service now runs through
  common/guarded.py (guard armed and parent checked before anything else), every process records
  its group in <state>/run/processes.jsonl, the launcher stops what is left on every exit path,
  and `aif up` refuses live leftovers naming their pids (`aif down` stops them).
"""


def machine():
    load1, load5, _ = os.getloadavg()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "mem_gib": round(mem_gib), "load_1m": round(load1, 2), "load_5m": round(load5, 2)}


class Record:
    """What one scenario observed; `figures` are the numbers, `observed` says them in words."""

    def __init__(self, scenario, fault, expected):
        self.scenario, self.fault, self.expected = scenario, fault, expected
        self.figures = {}
        self.observed = ""
        self.machine_start = machine()

    def entry(self, outcome):
        return {
            "scenario": self.scenario,
            "fault": self.fault,
            "expected": self.expected,
            "observed": self.observed or f"stopped early; figures so far: {json.dumps(self.figures)[:400]}",
            "figures": self.figures,
            "outcome": outcome,
            "command": f"{COMMAND}  # -k {self.scenario}",
            "machine": {**machine(), "load_1m_at_start": self.machine_start["load_1m"]},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }


def save(entries):
    """Merge entries into faults.json (by scenario) and rewrite the doc section from it."""
    if RESULTS.exists():
        merged = {e["scenario"]: e for e in json.loads(RESULTS.read_text()).get("scenarios", [])}
    else:  # a fresh checkout (perf/results is not committed): keep the rows the doc has
        merged = {e["scenario"]: e for e in rows_in_doc()}
    merged.update({e["scenario"]: e for e in entries})
    ordered = sorted(merged.values(), key=lambda e: e.get("order", 99))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"scenarios": ordered}, indent=1) + "\n")
    write_section(ordered)


def rows_in_doc():
    """The table's rows as the doc has them, each kept verbatim under its scenario (`-k` id)."""
    if not RELIABILITY.exists():
        return []
    text = RELIABILITY.read_text()
    start = text.find(HEADINGS[0] + "\n")
    if start < 0:
        return []
    end = text.find("\n## ", start + 1)
    rows = []
    for line in text[start:end if end >= 0 else None].splitlines():
        scenario = re.search(r"# -k (\S+?)`", line)
        if line.startswith("| ") and scenario:
            rows.append({"scenario": scenario.group(1), "order": len(rows) + 1, "row": line})
    return rows


def render_section(entries):
    lines = [HEADINGS[0], "", INTRO, "| fault | expected outcome | observed | outcome | command | machine | date |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        if "row" in e:  # kept from the doc, not measured in this checkout
            lines.append(e["row"])
            continue
        m = e["machine"]
        where = f"{m['cpus']} cores, {m['mem_gib']} GiB, load {m['load_1m_at_start']} → {m['load_1m']}"
        cells = [e["fault"], e["expected"], e["observed"], e["outcome"], f"`{e['command']}`", where, e["date"]]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Figures in full (per scenario): perf/results/faults.json.", "", FINDINGS]
    return "\n".join(lines)


def write_section(entries):
    """Replace only the "## Faults" section; create the file with both headings if missing."""
    text = RELIABILITY.read_text() if RELIABILITY.exists() else (
        "# Reliability\n\nHow the platform behaves when things break, and what was measured.\n\n"
        f"{HEADINGS[0]}\n\n{HEADINGS[1]}\n\n"
    )
    section = re.compile(rf"^{re.escape(HEADINGS[0])}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if not section.search(text):
        text = text.rstrip("\n") + f"\n\n{HEADINGS[0]}\n"
    text = section.sub(lambda _m: render_section(entries) + "\n", text, count=1)
    RELIABILITY.write_text(text)
