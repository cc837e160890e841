"""An endpoint's Slurm job: the notebook sessions' validated resource request, an engine inside.

The resources come from the same profiles and group limits as notebook sessions (the operator's
AIFSlurmSpawner.profiles / group_limits in the site config, hub/spawner/profiles.py); only
validated values reach the batch script. The job picks a free port on its node, writes
address.json, reads the endpoint's secret into the engine's environment and execs the engine,
so that scancel (stop, walltime) ends the engine with the job.
"""

from __future__ import annotations

import grp
import os
import shlex
import subprocess
from dataclasses import dataclass

from ...common import envvars
from .endpoints import ADDRESS_FILE, LOG_FILE, SECRET_FILE, ServeError

SCRIPT = """#!/bin/bash
#SBATCH --job-name=aif-serve-{name}
#SBATCH --output={log}
#SBATCH --chdir={folder}
#SBATCH --partition={request.partition}
#SBATCH --time={request.walltime}
#SBATCH --cpus-per-task={request.cpus}
#SBATCH --mem={request.memory_gb}G
{optional}set -euo pipefail
umask 077
chmod 600 {log} 2>/dev/null || true  # Slurm created it with the submitter's umask
# the engine binds the node's own address: the hub's serve service reaches it there
AIF_HOST="${{{host_var}:-$({python} -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')}}"
AIF_PORT="$({python} -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$AIF_HOST")"
printf '{{"host": "%s", "port": %s, "job_id": "%s", "node": "%s", "started": %s}}\\n' "$AIF_HOST" "$AIF_PORT" \\
  "$SLURM_JOB_ID" "$SLURMD_NODENAME" "$(date +%s)" > {address}.tmp
mv {address}.tmp {address}
echo "aif serve: {engine} for {name} on $SLURMD_NODENAME ($AIF_HOST:$AIF_PORT), job $SLURM_JOB_ID"
# the per-endpoint key: other users' jobs on this node cannot call the engine without it
VLLM_API_KEY="$(cat {secret})"
export VLLM_API_KEY VLLM_HOST_IP="$AIF_HOST" {env}
exec {command}
"""


def job_script(endpoint, request, command, env, python):
    folder = endpoint.folder
    optional = "".join(f"#SBATCH --{key}={value}\n" for key, value in
                       (("gres", request.gres), ("account", request.account), ("qos", request.qos),
                        ("reservation", request.reservation)) if value)
    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in [*sorted(env.items()), *request.environment])
    return SCRIPT.format(name=endpoint.name, log=folder / LOG_FILE, folder=folder, request=request,
                         optional=optional, host_var=envvars.SERVE_HOST.name, python=shlex.quote(python),
                         address=ADDRESS_FILE, secret=SECRET_FILE, engine=endpoint.engine, env=environment,
                         command=command)


def site_resources():
    """(profiles, group_limits) the operator configured for sessions, from the site config file."""
    from ..spawner.slurm import DEFAULT_PROFILES

    path = envvars.CONFIG_FILE.get()
    if not path:
        return DEFAULT_PROFILES, {}
    from traitlets.config import PyFileConfigLoader

    config = PyFileConfigLoader(os.path.basename(path), os.path.dirname(os.path.abspath(path))).load_config()
    spawner = config.get("AIFSlurmSpawner", {})
    return list(spawner.get("profiles", DEFAULT_PROFILES)), dict(spawner.get("group_limits", {}))


def unix_groups(user):
    """The user's group names: hub groups follow the site's Unix groups where limits apply on the CLI."""
    import pwd

    entry = pwd.getpwnam(user)
    return sorted({grp.getgrgid(gid).gr_name for gid in os.getgrouplist(user, entry.pw_gid)})


def resolve_resources(user, options):
    """A validated SessionRequest for `user` (same rules as the spawn form); raises ServeError."""
    from ..spawner.profiles import GroupLimit, OptionsError, Profile, allowances, resolve_request

    profiles, limits = site_resources()
    allowed = allowances([Profile.from_config(p) for p in profiles],
                         {g: GroupLimit.from_config(g, e) for g, e in limits.items()}, unix_groups(user))
    try:
        return resolve_request(allowed, {k: v for k, v in options.items() if v is not None})
    except OptionsError as err:
        raise ServeError(f"resource request refused: {err}") from None


def _slurm(argv, what):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ServeError(f"{argv[0]} not found: `aif serve` needs the Slurm client (and SLURM_CONF)") from None
    if done.returncode != 0:
        raise ServeError(f"{what}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def submit(script_path):
    return _slurm(["sbatch", "--parsable", "--no-requeue", str(script_path)], "Slurm refused the job").strip().split(";")[0]


def cancel(job_id):
    _slurm(["scancel", job_id], f"scancel {job_id} failed")


@dataclass
class JobState:
    state: str  # PENDING, RUNNING, ... or "" when Slurm no longer lists the job
    reason: str = ""
    node: str = ""
    partition: str = ""
    position: int = 0


def job_state(job_id):
    out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%N|%P"], "squeue failed") if job_id else ""
    line = next((l for l in out.splitlines() if l.strip()), "")
    if not line:
        return JobState("")
    state, reason, node, partition = (line.split("|") + ["", "", "", ""])[:4]
    position = 0
    if state == "PENDING":
        queue = _slurm(["squeue", "-h", "-t", "PENDING", "-p", partition, "-o", "%i", "--sort=-p,i"], "squeue failed")
        ids = [l.strip() for l in queue.splitlines() if l.strip()]
        position = ids.index(job_id) + 1 if job_id in ids else 0
    return JobState(state, reason, node, partition, position)
