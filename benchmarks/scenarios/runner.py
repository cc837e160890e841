"""Runs the configured LoadGen scenarios of one backend: size each test, run it, measure around it.

A scenario here is (LoadGen settings sized from a calibration pass) + (one LoadGen test, or the
Server search's several) + (trackers around it) -> one `ScenarioRun`. A new scenario (e.g. one
reporting token latencies) adds its settings to settings.py and its metrics to loadgen.py; the
runner picks the batch size and the settings per scenario name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..layout import MULTI_STREAM, OFFLINE, SERVER, SINGLE_STREAM, Metrics
from . import server_search
from . import settings as loadgen_settings
from .loadgen import early_stopping_text, results_only, run_loadgen, scenario_metrics


@dataclass
class ScenarioRun:
    scenario: str
    batch_size: int
    settings: dict
    loadgen: dict  # result_* keys from LoadGen's detail log
    metrics: dict
    validity: str
    early_stopping: str
    latencies_s: np.ndarray
    log_dir: Path
    samples_completed: int
    search: list = field(default_factory=list)  # Server QPS search trials


class ScenarioRunner:
    """Runs the configured scenarios of one backend; settings follow the profile."""

    def __init__(self, backend, staged, n_samples, cfg, log_root):
        self.backend, self.staged, self.n_samples, self.cfg = backend, staged, n_samples, cfg
        self.log_root = Path(log_root)
        self.profile = loadgen_settings.profile_settings(cfg)
        self._single_s = None

    @property
    def single_latency_s(self):
        if self._single_s is None:
            self._single_s = self._calibrate(1)
        return self._single_s

    def _calibrate(self, batch_size):
        return loadgen_settings.calibrate(self.backend, self.staged, batch_size, seconds=self.cfg.warmup_s)

    def run(self, scenario, batch_size=None, name=None):
        if scenario == SERVER:
            return self.run_server(name=name)
        batch_size = batch_size or self._default_batch(scenario)
        settings = self._settings(scenario, batch_size)
        return self._execute(scenario, settings, batch_size, name or scenario)

    def _default_batch(self, scenario):
        if scenario == OFFLINE:
            return self.cfg.offline_batch_size
        if scenario == MULTI_STREAM:
            return self.cfg.multistream_samples_per_query
        return 1

    def _settings(self, scenario, batch_size):
        if scenario == SINGLE_STREAM:
            return loadgen_settings.single_stream(self.profile, self.single_latency_s)
        if scenario == MULTI_STREAM:
            spq = self.cfg.multistream_samples_per_query
            return loadgen_settings.multi_stream(self.profile, spq, self._calibrate(spq))
        return loadgen_settings.offline(self.profile, self._offline_rate(batch_size))

    def _offline_rate(self, batch_size):
        """Samples/s of a short LoadGen Offline probe: the model's batch time alone misses the
        per-sample cost of gathering and completing samples, and LoadGen sizes its one Offline
        query from this rate, so an optimistic guess would make the test run many times too long."""
        probe_ms = max(50, int(self.cfg.warmup_s * 1000))
        settings = loadgen_settings.offline_probe(batch_size, self._calibrate(batch_size), probe_ms)
        _, detail = run_loadgen(self.backend, self.staged, self.n_samples, OFFLINE, settings,
                                self.log_root / "calibration" / f"{OFFLINE}-bs{batch_size}", batch_size)
        # Ask for 1.5x: a probe this short under-estimates, and a query that finishes before the
        # minimum duration makes LoadGen call the whole run INVALID.
        return 1.5 * float(detail["result_samples_per_second"])

    def _execute(self, scenario, settings, batch_size, name, log_name=None):
        from ..trackers import track

        log_dir = self.log_root / (log_name or name)
        self.backend.warmup(self.staged, (min(batch_size, self.n_samples),), iterations=2)
        with track(self.backend) as measured:
            sut, detail = run_loadgen(self.backend, self.staged, self.n_samples, scenario, settings, log_dir,
                                      batch_size)
        metrics = scenario_metrics(scenario, detail, sut)
        metrics.update(measured.metrics(sut.samples_completed))
        return ScenarioRun(
            scenario=scenario, batch_size=batch_size, settings=settings, loadgen=results_only(detail),
            metrics=metrics, validity=detail.get("result_validity", "UNKNOWN"),
            early_stopping=early_stopping_text(detail), latencies_s=np.asarray(sut.latencies_ns) / 1e9,
            log_dir=log_dir, samples_completed=sut.samples_completed,
        )

    # -- Server ----------------------------------------------------------------------------------
    def run_server(self, name=None):
        """Server at a target QPS; with server_search, find the highest QPS that meets the p99 bound."""
        cfg, profile = self.cfg, self.profile
        latency_ns = int(cfg.server_latency_ms * 1e6)
        if cfg.server_target_qps and not cfg.server_search:
            return self._server_trial(cfg.server_target_qps, latency_ns, profile["min_duration_ms"], name, SERVER)

        def short_trial(qps):
            return self._server_trial(qps, latency_ns, profile["server_trial_ms"], SERVER, f"{SERVER}/qps-{qps:.0f}")

        def full_trial(qps):
            return self._server_trial(qps, latency_ns, profile["min_duration_ms"], SERVER,
                                      f"{SERVER}/confirm-{qps:.0f}")

        start_qps = cfg.server_target_qps or 0.25 / self.single_latency_s
        best, trials = server_search.search(short_trial, start_qps, profile["search_bisections"])
        if best is not None and profile["server_confirm"]:
            best = server_search.confirm(full_trial, best, trials)
        if best is None:  # nothing met the bound: report the slowest trial, marked INVALID by LoadGen
            best = min(trials, key=server_search.target_qps)
        else:
            best.metrics[Metrics.SERVER_MAX_VALID_QPS] = best.metrics[Metrics.SERVER_TARGET_QPS]
        best.search = server_search.search_summary(trials)
        return best

    def _server_trial(self, qps, latency_ns, duration_ms, name, log_name):
        settings = loadgen_settings.server(self.profile, qps, latency_ns, duration_ms)
        return self._execute(SERVER, settings, self.cfg.server_batch_size, name or SERVER, log_name)
