"""Service-level targets an evaluator sets ("p99 <= 15 ms at 200 QPS") and a model's readiness.

A target applies to one scenario (or Accuracy); its verdict is pass, fail, or unknown when the
data is not there or LoadGen marked the run INVALID (a pass on a rejected run is not established).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import SLOError
from ..layout import ACCURACY, OFFLINE, SCENARIOS, SERVER, Metrics, Params, Tags

SLO_SYNTAX = ("'<p50|p90|p95|p99|mean|max|throughput|accuracy> <op> <value> [unit] "
              "[at <N> QPS | in <Scenario>]', e.g. 'p99 <= 15 ms at 200 QPS'; token latencies with their kind "
              "first, 'ttft p99 <= 2000 ms', 'tpot p99 <= 100 ms' (ttft, tpot, itl, e2el); text scores "
              "'exact_match >= 20%', 'rouge_l >= 0.3', 'perplexity <= 300'; 'goodput >= 2 /s', 'tokens/s >= 100'")
#: token latency kinds a target may name; e2el is the end-to-end latency (latency_*_ms)
TOKEN_KINDS = ("ttft", "tpot", "itl", "e2el")
#: score-like targets: the metric, its scenario (None: the scenarios that logged it), its unit kind
SCORES = {"throughput": (Metrics.THROUGHPUT, None, "rate"), "accuracy": (Metrics.ACCURACY, ACCURACY, "fraction"),
          Metrics.EXACT_MATCH: (Metrics.EXACT_MATCH, ACCURACY, "fraction"),
          Metrics.ROUGE_L: (Metrics.ROUGE_L, ACCURACY, "fraction"), Metrics.PERPLEXITY: (Metrics.PERPLEXITY, ACCURACY, "number"),
          "goodput": (Metrics.GOODPUT, SERVER, "rate"), "tokens/s": (Metrics.OUTPUT_TOKENS_PER_S, None, "rate"),
          Metrics.OUTPUT_TOKENS_PER_S: (Metrics.OUTPUT_TOKENS_PER_S, None, "rate")}
_SLO_RE = re.compile(
    r"^\s*(?:(?P<kind>ttft|tpot|itl|e2el)\s+)?"
    r"(?P<metric>p\d{1,2}(?:\.\d+)?|mean|max|throughput|accuracy|exact_match|rouge_l|perplexity|goodput|"
    r"output_tokens_per_s|tokens/s)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|us|µs|s|%|qps|samples/s|/s)?"
    r"(?:\s+(?:at\s+(?P<qps>\d+(?:\.\d+)?)\s*qps|in\s+(?P<scenario>[A-Za-z]+)))?\s*$",
    re.IGNORECASE,
)
_LATENCY_UNITS = {None: 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}
_OPS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater}


@dataclass(frozen=True)
class SLO:
    """A service-level target the evaluator sets, e.g. p99 <= 15 ms at 200 QPS."""

    text: str
    metric: str  # latency_p99_ms, latency_mean_ms, throughput_samples_per_s, accuracy
    op: str
    value: float  # in the metric's unit (ms, samples/s, fraction)
    scenario: str | None = None
    qps: float | None = None


@dataclass
class SLOResult:
    slo: SLO
    scenario: str
    measured: float | None
    status: str  # pass / fail / unknown
    note: str = ""


def parse_slo(text: str) -> SLO:
    """Parse one target; ValueError naming the text and the expected syntax on bad input."""
    match = _SLO_RE.match(text or "")
    if not match:
        raise SLOError(f"SLO {text!r}: expected {SLO_SYNTAX}")
    metric, op, unit = match["metric"].lower(), match["op"], (match["unit"] or "").lower() or None
    kind = (match["kind"] or "").lower() or None
    value = float(match["value"])
    scenario = match["scenario"]
    if scenario:
        canonical = {s.lower(): s for s in SCENARIOS}.get(scenario.lower())
        if canonical is None:
            raise SLOError(f"SLO {text!r}: unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
        scenario = canonical
    if kind and metric in SCORES:
        raise SLOError(f"SLO {text!r}: {kind} takes a percentile (p50, p90, p99), mean or max, not {metric!r}")
    if metric in SCORES:
        name, home, unit_kind = SCORES[metric]
        if unit_kind == "fraction":
            if unit not in (None, "%"):
                raise SLOError(f"SLO {text!r}: {metric} takes a fraction or a percentage, not {unit!r}")
            value = value / 100 if unit == "%" else value
        elif unit_kind == "rate" and unit not in (None, "qps", "samples/s", "/s"):
            raise SLOError(f"SLO {text!r}: {metric} is a rate per second, not {unit!r}")
        elif unit_kind == "number" and unit is not None:
            raise SLOError(f"SLO {text!r}: {metric} takes a plain number, not {unit!r}")
        scenario = scenario or (home if home != ACCURACY else None)  # accuracy-like: found by metric
    elif kind in ("ttft", "tpot", "itl"):
        if unit not in _LATENCY_UNITS:
            raise SLOError(f"SLO {text!r}: latency takes ms, s or us, not {unit!r}")
        value *= _LATENCY_UNITS[unit]
        if metric not in ("mean", "p50", "p90", "p99") or (kind == "itl" and metric == "mean"):
            raise SLOError(f"SLO {text!r}: {kind} {metric} is not logged; use p50, p90 or p99"
                           + (" or mean" if kind != "itl" else ""))
        name = Metrics.token_latency(kind, metric)
    else:
        if unit not in _LATENCY_UNITS:
            raise SLOError(f"SLO {text!r}: latency takes ms, s or us, not {unit!r}")
        value *= _LATENCY_UNITS[unit]
        name = Metrics.latency(metric)
        if metric not in ("mean", "max") and metric not in ("p50", "p90", "p95", "p99"):
            raise SLOError(f"SLO {text!r}: percentile {metric!r} is not logged; use p50, p90, p95 or p99")
    qps = float(match["qps"]) if match["qps"] else None
    if qps is not None:
        scenario = SERVER
    return SLO(text=text.strip(), metric=name, op=op, value=value, scenario=scenario, qps=qps)


def _slo_scenarios(slo: SLO, entry) -> list:
    if slo.metric in (Metrics.ACCURACY, *Metrics.GENERATION):
        return [ACCURACY]
    if slo.scenario:
        return [slo.scenario]
    if slo.metric not in (Metrics.THROUGHPUT, *(Metrics.latency(p) for p in ("p50", "p90", "p95", "p99", "mean",
                                                                            "max"))):
        logged = [s for s in SCENARIOS if s in entry.scenario_runs and slo.metric in entry.scenario_runs[s].data.metrics]
        if logged:  # token figures: only where they exist (Offline has no TTFT)
            return logged
    if slo.metric == Metrics.THROUGHPUT and OFFLINE in entry.scenario_runs:
        return [OFFLINE]
    return [s for s in SCENARIOS if s in entry.scenario_runs] or ["any scenario"]


def evaluate_slo(slo: SLO, entry) -> list:
    """One result per scenario the target applies to; 'unknown' when the data is not there."""
    results = []
    for scenario in _slo_scenarios(slo, entry):
        if scenario == ACCURACY:
            metrics = entry.accuracy_metrics()
        else:
            run = entry.scenario_runs.get(scenario)
            if run is None:
                results.append(SLOResult(slo, scenario, None, "unknown", f"no {scenario} run"))
                continue
            metrics = run.data.metrics
            if slo.qps is not None:
                target = metrics.get(Metrics.SERVER_TARGET_QPS,
                                     _float(run.data.params.get(Params.SERVER_TARGET_QPS)))
                if target is None or target < slo.qps:
                    shown = "not recorded" if target is None else f"{target:g} QPS"
                    results.append(SLOResult(slo, scenario, None, "unknown",
                                             f"Server ran at {shown}, the target needs {slo.qps:g} QPS"))
                    continue
        measured = metrics.get(slo.metric)
        if measured is None:
            results.append(SLOResult(slo, scenario, None, "unknown", f"metric {slo.metric} not logged"))
            continue
        ok = bool(_OPS[slo.op](measured, slo.value))
        verdict = "" if scenario == ACCURACY else run.data.tags.get(Tags.RESULT_VALID, "")
        if ok and verdict == "INVALID":
            # A failure stands regardless; a pass on a run LoadGen rejected (too few queries,
            # target QPS not sustained) is not established.
            results.append(SLOResult(slo, scenario, float(measured), "unknown",
                                     "LoadGen marked this run INVALID: the figure is not established"))
            continue
        results.append(SLOResult(slo, scenario, float(measured), "pass" if ok else "fail"))
    return results


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def readiness(slo_results) -> str:
    """'ready' when every target passes, 'not ready' on any failure, 'incomplete' otherwise."""
    statuses = {r.status for r in slo_results}
    if not statuses:
        return "no targets set"
    if "fail" in statuses:
        return "not ready"
    return "ready" if statuses == {"pass"} else "incomplete"
