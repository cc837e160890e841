"""The Server scenario's QPS search: the highest arrival rate whose p99 latency meets the bound.

Every trial is a complete LoadGen Server test; LoadGen alone judges whether the bound held. The
search brackets exponentially from a calibrated estimate, then bisects (geometrically); the
"full" profile confirms the QPS it found with one full-length run, which is the run reported.
"""

from __future__ import annotations

import math

from ..layout import Metrics


def meets_bound(run):
    """LoadGen's own judgement that the p99 latency bound held at this QPS ("performance
    constraints satisfied"). The overall verdict also needs the profile's minimum duration and
    query count, which quick trials do not aim for; it is reported separately, never hidden."""
    return bool(run.loadgen.get("result_perf_constraints_met"))


def target_qps(run):
    return run.metrics[Metrics.SERVER_TARGET_QPS]


def search(trial, qps, bisections, max_steps=8):
    """(best run meeting the bound or None, every trial). `trial(qps)` runs one test at that QPS."""
    trials = []

    def passes(q):
        run = trial(q)
        trials.append(run)
        return meets_bound(run)

    low = high = None
    for _ in range(max_steps):
        if passes(qps):
            low = qps
            if high is not None:
                break
            qps *= 2
        else:
            high = qps
            if low is not None:
                break
            qps /= 2
    if low is not None and high is not None:
        for _ in range(bisections):
            middle = math.sqrt(low * high)
            if passes(middle):
                low = middle
            else:
                high = middle
    meeting = [t for t in trials if meets_bound(t)]
    return (max(meeting, key=target_qps) if meeting else None), trials


def confirm(trial, best, trials, attempts=3, step_down=0.95):
    """A full-length run at the found QPS; step down 5% (up to 3 times) if it breaks the bound."""
    qps = target_qps(best)
    for _ in range(attempts):
        run = trial(qps)
        trials.append(run)
        if meets_bound(run):
            return run
        qps *= step_down
    return None


def search_summary(trials):
    """What results.json keeps of each trial (`server_search`)."""
    return [{"target_qps": target_qps(t), "meets_bound": meets_bound(t), "result_valid": t.validity,
             Metrics.LATENCY_P99: t.metrics.get(Metrics.LATENCY_P99), "log_dir": t.log_dir.name} for t in trials]
