"""The platform stopped at any moment leaves nothing running: `aif up --spawner slurm` (proxy, hub,
MLflow service and server, trainer page, idle culler) stopped at several moments of a cold start
and of a hub restart (what `aif workshop create/end` trigger), all on one state directory."""

import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from aifactory.common.net import free_port
from aifactory.common.procutil import ProcessRecord
from aifactory.hub.platform import Platform
from aifactory.hub.testing.platform import processes_of_state

AIF = os.path.join(os.path.dirname(sys.executable), "aif")
AFTER_S = 15  # nothing of the state directory may be running this long after the stop


class Launcher:
    """One `aif up` on the state directory, its output in a file next to it."""

    def __init__(self, state, port, slurm_conf, log):
        self.state, self.log = state, log
        self.hub_log = state / "logs" / "hub.log"
        self.since = self.hub_log_size()  # this run's hub log starts here
        self.proc = subprocess.Popen(
            [AIF, "up", "--state-dir", str(state), "--port", str(port), "--spawner", "slurm",
             "--slurm-conf", str(slurm_conf)],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def hub_log_size(self):
        return self.hub_log.stat().st_size if self.hub_log.exists() else 0

    def wait(self, what, condition, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"aif up exited ({self.proc.returncode}) waiting for {what}: {self.output()[-1500:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s: {self.output()[-1500:]}")
            time.sleep(0.05)

    def output(self):
        return self.log.read_text(errors="replace")

    def hub_log_says(self, text, since):
        def check():
            try:
                with open(self.hub_log, "rb") as f:
                    f.seek(since)
                    return text.encode() in f.read()
            except FileNotFoundError:
                return False
        return check

    def recorded(self, name):
        return lambda: any(e["name"] == name for e, _ in ProcessRecord(self.state / "run" / "processes.jsonl").live())

    def up(self):
        self.wait("'is up'", lambda: "is up" in self.output())

    def restart(self):
        """Ask for a hub restart as `aif workshop end` does; returns the old hub's pid."""
        old = Platform.attach(self.state).read_platform_file()["pids"]["hub"]
        os.kill(self.proc.pid, signal.SIGUSR1)
        return old

    def healthy_after_restart(self, old_hub):
        def check():
            platform = Platform.attach(self.state)
            hub = (platform.read_platform_file().get("pids") or {}).get("hub")
            return hub not in (None, old_hub) and all(v == "ok" for v in platform.check_health().values())
        return check


# --- the moments: how to reach each one, then the signal that stops the platform ----------------------

def cold_just_launched(launcher):
    launcher.wait("a recorded hub", launcher.recorded("hub"))  # proxy and hub just spawned


def cold_services_starting(launcher):
    launcher.wait("'Starting managed service'", launcher.hub_log_says("Starting managed service", launcher.since))


def cold_mlflow_server_starting(launcher):
    launcher.wait("a recorded MLflow server", launcher.recorded("mlflow-server"))


def restart_just_begun(launcher):
    launcher.up()
    launcher.restart()
    # the launcher checks for a restart request every second, then says so and stops the hub
    launcher.wait("'Restarting the hub'", lambda: "Restarting the hub" in launcher.output())
    time.sleep(0.1)


def restart_services_starting(launcher):
    launcher.up()
    since = launcher.hub_log_size()
    launcher.restart()
    launcher.wait("the new hub's 'Starting managed service'", launcher.hub_log_says("Starting managed service", since))


def restart_just_healthy(launcher):
    launcher.up()
    old = launcher.restart()
    launcher.wait("health after the restart", launcher.healthy_after_restart(old))


MOMENTS = [
    ("cold start: proxy and hub just spawned", cold_just_launched, signal.SIGINT),
    ("cold start: hub starting its managed services", cold_services_starting, signal.SIGTERM),
    ("cold start: MLflow server starting, not yet healthy", cold_mlflow_server_starting, signal.SIGINT),
    ("hub restart: right after it began", restart_just_begun, signal.SIGINT),
    ("hub restart: new hub starting its managed services", restart_services_starting, signal.SIGINT),
    ("hub restart: new hub starting its managed services", restart_services_starting, signal.SIGKILL),
    ("hub restart: just after everything is healthy again", restart_just_healthy, signal.SIGTERM),
]


def stop_and_watch(launcher, sig):
    """Send `sig` to `aif up`; seconds until nothing of the state dir runs, and what ran at AFTER_S."""
    running = len(processes_of_state(launcher.state))
    stopped = time.monotonic()
    launcher.proc.send_signal(sig)
    empty_after = None
    while time.monotonic() - stopped < AFTER_S:
        if empty_after is None and not processes_of_state(launcher.state):
            empty_after = round(time.monotonic() - stopped, 2)
        time.sleep(0.25)
    left = processes_of_state(launcher.state)
    for pid in left:  # so that the next moment starts clean even after a failure here
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return running, (empty_after if not left else None), left


@pytest.mark.timeout(3600)
def test_stop_at_any_moment_leaves_nothing_running(cluster, tmp_path, fault_record):
    record = fault_record(
        "stop_at_any_moment",
        f"platform stopped at {len(MOMENTS)} moments of a cold start and of a hub restart (Ctrl-C, SIGTERM; "
        "once `aif up` SIGKILLed), one state directory",
        f"nothing of the state directory running {AFTER_S} s after each stop; the next `aif up` on it starts",
        order=8,
    )
    state, port = tmp_path / "state", free_port()
    results = []
    for n, (moment, reach, sig) in enumerate(MOMENTS):
        launcher = Launcher(state, port, cluster.slurm_conf, tmp_path / f"aif-up-{n}.log")
        reach(launcher)
        running, empty_after, left = stop_and_watch(launcher, sig)
        launcher.proc.wait(5)
        results.append({"moment": moment, "signal": signal.Signals(sig).name, "running_at_stop": running,
                        "nothing_left_after_s": empty_after,
                        "left_at_15s": left, "aif_up_exit": launcher.proc.returncode})
        record.figures["stops"] = results
    # one more start: after all of that, the state directory is not blocked and works
    final = Launcher(state, port, cluster.slurm_conf, tmp_path / "aif-up-final.log")
    final.up()
    started = Platform.attach(state).check_health()
    final.proc.send_signal(signal.SIGINT)
    final.proc.wait(60)

    clean = [r for r in results if not r["left_at_15s"]]
    times = [r["nothing_left_after_s"] for r in clean]
    record.figures.update({"clean_stops": len(clean), "stops_total": len(results), "final_start_health": started})
    record.observed = (
        f"{len(clean)}/{len(results)} stops left nothing running at {AFTER_S} s"
        + (f" (nothing left after {min(times)}–{max(times)} s, median {statistics.median(times)} s)" if times else "")
        + "; " + "; ".join(f"{r['moment']} ({r['signal']}, {r['running_at_stop']} processes): " + (
            f"none left after {r['nothing_left_after_s']} s" if not r["left_at_15s"]
            else f"LEFT {sorted(r['left_at_15s'].values())}")
            for r in results)
        + f"; the next `aif up` on the same state directory started every time (final health {started})"
    )
    assert not [r for r in results if r["left_at_15s"]], results
    assert all(v == "ok" for v in started.values()), started
