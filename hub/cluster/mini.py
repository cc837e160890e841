"""A real single-node Slurm "mini-cluster" (munged + slurmctld + slurmd) under one state directory.

It is the dev, demo and test backend of the Slurm spawner. Nothing is written to the system's
Slurm or munge configuration: every daemon and command is pointed at files under the state
directory (`SLURM_CONF`, munge `--socket`), so it never clashes with a site install.

GPUs are simulated as character devices (`mknod c 195 N`, the NVIDIA major number) listed in
gres.conf: Slurm then allocates them like real ones and sets CUDA_VISIBLE_DEVICES per job.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ...common import envvars
from ...common.errors import AIFError
from ...common.net import free_port
from ..unix_accounts import AccountError, ensure_unix_user, remove_unix_user

# Environment marker given to the daemons: their job step processes inherit it, which lets
# `down()` find anything a killed slurmd left behind without touching another cluster.
MARKER_VAR = envvars.MINICLUSTER.name


def default_cluster_dir():
    """Where `aif cluster` and `aif up --spawner slurm` keep the mini-cluster.

    Not under the platform's state dir: that defaults to root's home (0700), which munged and
    the jobs' users cannot traverse. AIF_CLUSTER_DIR overrides it.
    """
    return Path(envvars.CLUSTER_DIR.get("/var/tmp/aifactory-lab/cluster"))


class ClusterError(AIFError):
    """The mini-cluster could not be started, queried or stopped; the message says why."""


@dataclass
class ClusterSpec:
    """Shape of the simulated node.

    The node declares more CPUs and memory than a small VM has (SlurmdParameters=config_overrides)
    so that 20+ tiny notebook sessions fit at once: notebook servers are mostly idle, and this is
    a dev/test cluster, not a place to measure compute.
    """

    gpus: int = 4
    gpu_type: str = "h200"
    cpus: int = 64
    memory_mb: int = 128 * 1024
    partitions: tuple = ("gpu", "cpu")
    max_time: str = "1-00:00:00"


def _run(cmd, env=None, check=True, timeout=30, **kwargs):
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError as err:
        raise ClusterError(
            f"{cmd[0]} not found: install Debian's slurmctld slurmd slurm-client munge (make sysdeps)"
        ) from err
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class MiniCluster:
    """A single-node Slurm with simulated GPUs, entirely under `state_dir`."""

    def __init__(self, state_dir, spec: ClusterSpec | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.spec = spec or ClusterSpec()
        self.node_name = socket.gethostname().split(".")[0]

    # ---- paths -------------------------------------------------------------------------------
    @property
    def slurm_conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.state_dir / "run" / "munge" / "munge.sock"

    def _pidfile(self, daemon):
        return self.state_dir / "run" / f"{daemon}.pid"

    def _log(self, daemon):
        return self.state_dir / "log" / f"{daemon}.log"

    def env(self) -> dict:
        """Environment for Slurm commands talking to this cluster (merge into os.environ)."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def _cmd_env(self):
        return {**os.environ, **self.env(), MARKER_VAR: str(self.state_dir)}

    # ---- lifecycle ---------------------------------------------------------------------------
    def up(self, timeout=30):
        """Start munged, slurmctld and slurmd (idempotent) and wait until the node is idle."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise ClusterError("the mini-cluster needs root (munged runs as 'munge', jobs as real users)")
        for binary in ("munged", "slurmctld", "slurmd", "sbatch"):
            if shutil.which(binary) is None:
                raise ClusterError(f"{binary} not found: install Debian's slurmctld slurmd slurm-client munge")
        if self.is_up():
            return self
        self._check_parents_traversable()
        self._stop_daemons()  # a half-up cluster (one daemon died) is restarted cleanly
        self._write_layout()
        self._start_munged()
        self._start_slurm_daemon("slurmctld", ["slurmctld", "-f", str(self.slurm_conf)])
        self._start_slurm_daemon("slurmd", ["slurmd", "-f", str(self.slurm_conf), "-N", self.node_name])
        self._wait_node_ready(timeout)
        return self

    def down(self, timeout=20):
        """Cancel every job, stop the daemons and kill anything they left behind."""
        jobs = self._active_job_ids() if self._alive("slurmctld") else []
        if jobs:
            self.run(["scancel", "--quiet"] + jobs, check=False)
            deadline = time.monotonic() + timeout
            while self._active_job_ids() and time.monotonic() < deadline:
                time.sleep(0.2)
        self._stop_daemons()
        self._kill_marked_leftovers()

    def start_controller(self):
        """(Re)start only slurmctld, e.g. after `stop_controller()` in a fault test."""
        self._start_slurm_daemon("slurmctld", ["slurmctld", "-f", str(self.slurm_conf)])
        _wait_for(lambda: self._ping(), 15, "slurmctld did not answer `scontrol ping`", self._log("slurmctld"))

    def stop_controller(self):
        """Stop only slurmctld: jobs keep running on slurmd, commands fail as on a real outage."""
        self._terminate("slurmctld")

    def is_up(self) -> bool:
        return all(self._alive(d) for d in ("munged", "slurmctld", "slurmd")) and self._ping()

    def status(self) -> dict:
        daemons = {d: self._alive(d) for d in ("munged", "slurmctld", "slurmd")}
        info = {"state_dir": str(self.state_dir), "slurm_conf": str(self.slurm_conf), "daemons": daemons}
        if all(daemons.values()):
            info["nodes"] = self.run(["sinfo", "-h", "-N", "-o", "%N %P %T %G"], check=False).stdout.split("\n")
            info["jobs"] = len(self._active_job_ids())
        return info

    def run(self, cmd, check=True, timeout=30, **kwargs):
        """Run a Slurm command against this cluster."""
        return _run(cmd, env=self._cmd_env(), check=check, timeout=timeout, **kwargs)

    # ---- users -------------------------------------------------------------------------------
    def add_user(self, name, groups=()):
        """Create a real Unix user with a home directory (idempotent); jobs run as this user."""
        try:
            return ensure_unix_user(name, groups)
        except AccountError as err:
            raise ClusterError(str(err)) from None

    @staticmethod
    def remove_user(name):
        """Delete a Unix user created by `add_user`, with its home directory."""
        remove_unix_user(name)

    # ---- internals ---------------------------------------------------------------------------
    def _write_layout(self):
        for sub in ("etc", "log", "spool/ctld", "spool/d", "dev", "run"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        # job output and slurmd spool are reached by the users' jobs: the tree must be traversable
        for path in (self.state_dir, self.state_dir / "run", self.state_dir / "etc"):
            path.chmod(0o755)
        for index in range(self.spec.gpus):
            dev = self.state_dir / "dev" / f"gpu{index}"
            if dev.exists() and not stat.S_ISCHR(dev.stat().st_mode):
                dev.unlink()
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(195, index))
        ports = self._existing_ports() or (free_port(), free_port())
        self.slurm_conf.write_text(self._slurm_conf_text(*ports))
        (self.slurm_conf.parent / "gres.conf").write_text(
            f"NodeName={self.node_name} Name=gpu Type={self.spec.gpu_type} "
            f"File={self.state_dir}/dev/gpu[0-{self.spec.gpus - 1}]\n"
        )
        # every job user's sbatch/srun reads them (no secret: munge's key is separate), whatever
        # umask the creating process has (the platform's own processes run with 077)
        for conf in (self.slurm_conf, self.slurm_conf.parent / "gres.conf"):
            conf.chmod(0o644)
        self._write_munge_key()

    def _check_parents_traversable(self):
        """munged (user munge) and the users' jobs must reach files under the state directory."""
        for parent in self.state_dir.parents:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise ClusterError(
                    f"state directory {self.state_dir}: parent {parent} is not traversable by other users "
                    "(munged and the jobs' users must reach it); choose another place or chmod o+x it"
                )

    def _existing_ports(self):
        """Keep the ports across restarts: a running job's slurmstepd talks back to them."""
        if not self.slurm_conf.exists():
            return None
        text = self.slurm_conf.read_text()
        ctld = re.search(r"^SlurmctldPort=(\d+)", text, re.M)
        slurmd = re.search(r"^SlurmdPort=(\d+)", text, re.M)
        return (int(ctld.group(1)), int(slurmd.group(1))) if ctld and slurmd else None

    def _slurm_conf_text(self, ctld_port, slurmd_port):
        s, spec = self.state_dir, self.spec
        partitions = "\n".join(
            f"PartitionName={name} Nodes={self.node_name} MaxTime={spec.max_time} State=UP"
            f" OverSubscribe=NO{' Default=YES' if i == 0 else ''}"
            for i, name in enumerate(spec.partitions)
        )
        return f"""# Generated by aif cluster: a single-node mini-cluster under {s}
ClusterName=aifmini
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={s}/spool/ctld
SlurmdSpoolDir={s}/spool/d
SlurmctldPidFile={self._pidfile('slurmctld')}
SlurmdPidFile={self._pidfile('slurmd')}
SlurmctldLogFile={self._log('slurmctld')}
SlurmdLogFile={self._log('slurmd')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
MessageTimeout=5
GresTypes=gpu
NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={spec.cpus} RealMemory={spec.memory_mb} Gres=gpu:{spec.gpu_type}:{spec.gpus} State=UNKNOWN
{partitions}
"""

    def _write_munge_key(self):
        munge = pwd.getpwnam("munge")
        munge_dir = self.state_dir / "munge"
        munge_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        sock_dir = self.munge_socket.parent
        sock_dir.mkdir(exist_ok=True)
        sock_dir.chmod(0o755)  # clients (every job user) must reach the socket
        os.chown(sock_dir, munge.pw_uid, munge.pw_gid)
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o600)
        os.chown(key, munge.pw_uid, munge.pw_gid)

    def _start_munged(self):
        munge_dir = self.state_dir / "munge"
        cmd = [
            "runuser", "-u", "munge", "--", "munged",
            f"--socket={self.munge_socket}", f"--key-file={munge_dir / 'munge.key'}",
            f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ]
        _run(cmd, env=self._cmd_env())
        _wait_for(self.munge_socket.exists, 10, "munged did not create its socket", munge_dir / "munged.log")

    def _start_slurm_daemon(self, name, cmd):
        if self._alive(name):
            return
        # the daemons fork into the background; their pid files are the handle for stop()
        _run(cmd, env=self._cmd_env(), stdin=subprocess.DEVNULL)
        _wait_for(lambda: self._alive(name), 15, f"{name} did not start", self._log(name))

    def _wait_node_ready(self, timeout):
        def node_ready():
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
            return bool(out) and all(state.rstrip("*") in ("idle", "mixed", "allocated") for state in out)

        _wait_for(node_ready, timeout, "the node did not become idle", self._log("slurmd"))

    def _ping(self):
        return "is UP" in self.run(["scontrol", "ping"], check=False, timeout=10).stdout

    def _pid(self, daemon):
        path = self.state_dir / "munge" / "munged.pid" if daemon == "munged" else self._pidfile(daemon)
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, daemon):
        pid = self._pid(daemon)
        if pid is None:
            return False
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE and daemon in proc.name()
        except psutil.Error:
            return False

    def _terminate(self, daemon, timeout=10):
        pid = self._pid(daemon)
        if pid is None or not self._alive(daemon):
            return
        proc = psutil.Process(pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _stop_daemons(self):
        for daemon in ("slurmd", "slurmctld", "munged"):
            self._terminate(daemon)

    def _kill_marked_leftovers(self):
        """Kill processes started under this cluster (slurmstepd, job steps) that outlived slurmd."""
        me = os.getpid()
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == me:
                continue
            try:
                if proc.environ().get(MARKER_VAR) == str(self.state_dir):
                    proc.kill()
            except psutil.Error:
                continue

    def _active_job_ids(self):
        proc = self.run(["squeue", "-h", "-o", "%i"], check=False)
        return proc.stdout.split() if proc.returncode == 0 else []


def _wait_for(predicate, timeout, message, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = ""
    if log is not None and Path(log).exists():
        tail = "\n" + "\n".join(Path(log).read_text(errors="replace").splitlines()[-15:])
    raise ClusterError(f"{message} within {timeout}s (log: {log}){tail}")


def check_traversable(path, user):
    """Fail clearly when `user` cannot reach `path` (e.g. a venv inside a root-only home)."""
    result = subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(path)], capture_output=True)
    if result.returncode != 0:
        raise ClusterError(
            f"{path} is not readable by user {user!r}: jobs run as that user, so the checkout and its "
            "virtual environment must be world-readable and every parent directory world-executable "
            "(e.g. keep it outside /root, or chmod o+rx the parents)"
        )


def python_for_jobs():
    """The interpreter sessions run: the hub's own venv (built from the system Python)."""
    return sys.executable

