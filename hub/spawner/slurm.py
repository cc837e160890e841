"""The AI Factory Slurm spawner: JupyterLab inside a Slurm job on a GPU node.

Built on `batchspawner.SlurmSpawner`, with what a shared supercomputer needs on top:

* resource profiles and per-group limits (profiles.py); the form shows only what the user
  may choose and the REST API goes through the same validation;
* a batch script rendered only from validated values and operator traits: `user_options` never
  reach the template (stock batchspawner merges them in, so a form field could override `cmd`);
* one shared squeue poller per hub (poller.py) instead of one squeue per user per poll;
  a failing squeue is "unknown" and never ends a server;
* readable progress (queue position, pending reason, expected start, node) and, when a job dies
  while starting, Slurm's state and reason plus the tail of the job's output file;
* sessions are never requeued: after a node failure Slurm would otherwise put the job back in
  the queue, the hub would keep showing a server that no longer exists, and the restarted one
  would report a port the hub no longer routes to. The job ends (NODE_FAIL) and the user is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batchspawner import SlurmSpawner
from jinja2 import Environment, FileSystemLoader, Template
from traitlets import Dict, Float, Integer, List, Unicode, default, observe, validate

from ...common import envvars
from ..workshops.record import WorkshopBook
from . import api
from .env import PlatformEnvMixin
from .failures import spawn_failure
from .poller import SlurmPoller
from .profiles import ENV_NAME, IMAGE_PATH, GroupLimit, OptionsError, Profile, allowances, resolve_request

# batchspawner registered its own API handler when imported above; this module is the one place
# that imports it, so the swap for the port-only handler happens here (see api.py)
api.use_port_only_handler()

VENV_BIN = Path(sys.prefix) / "bin"
TEMPLATES = Path(__file__).with_name("templates")
BATCH_SCRIPT = (TEMPLATES / "batch_script.sh").read_text()
SPAWN_FORM = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True).get_template("spawn_form.html")
#: the AIF_* variables the batch script exports, by their registry names (aif.SLURM_JOB_ID, ...)
READY_POLL_S = 0.1  # between TCP connects to a starting server: cheap, and a tenth of the hub's first wait
SESSION_VARS = {var: getattr(envvars, var).name for var in ("SLURM_JOB_ID", "SLURM_NODE", "GPUS", "WALLTIME_END")}


@functools.lru_cache(maxsize=8)
def _compiled(template_text):
    """A batch script template compiled once per text, not once per start."""
    return Template(template_text)


@dataclass(frozen=True)
class WorkshopOffers:
    """What the active workshops add to every user's choice: parsed once per change of their records."""

    workshops: tuple = ()
    profiles: tuple = ()  # Profile objects, pinned to each workshop's reservation
    group_limits: tuple = ()  # (group, {"profiles": [its profile]}) per workshop


_WORKSHOP_OFFERS: dict = {}  # workshops folder -> (WorkshopBook.stamp(), WorkshopOffers), per hub


def workshop_offers(folder):
    """The active workshops of `folder`, re-read only when one of its records changed."""
    if not folder:
        return WorkshopOffers()
    book = WorkshopBook(folder)
    stamp = book.stamp()
    cached = _WORKSHOP_OFFERS.get(folder)
    if cached is None or cached[0] != stamp:
        active = tuple(book.active())
        offers = WorkshopOffers(active, tuple(Profile.from_config(ws.profile()) for ws in active),
                                tuple((ws.group, {"profiles": [ws.profile_name]}) for ws in active))
        cached = _WORKSHOP_OFFERS[folder] = (stamp, offers)
    return cached[1]


async def accepts_connections(host, port, timeout=1.0):
    """Something listens on host:port (a TCP connect, closed at once)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def user_can_execute(username, path):
    """`path` is executable by `username` (every parent directory traversable), tested as that user."""
    probe = await asyncio.create_subprocess_exec("runuser", "-u", username, "--", "test", "-x", str(path))
    return await probe.wait() == 0


DEFAULT_PROFILES = [
    {
        "name": "gpu-1",
        "display_name": "1 GPU (H200), interactive",
        "partition": "gpu",
        "gpu_types": ["h200"],
        "min_gpus": 1,
        "max_gpus": 4,
        "cpus": 2,
        "max_cpus": 16,
        "memory_gb": 4,
        "max_memory_gb": 64,
        "hours": 2,
        "max_hours": 24,
    },
    {
        "name": "cpu",
        "display_name": "CPU only",
        "partition": "cpu",
        "cpus": 1,
        "max_cpus": 8,
        "memory_gb": 2,
        "max_memory_gb": 16,
        "hours": 2,
        "max_hours": 24,
    },
]

class AIFSlurmSpawner(PlatformEnvMixin, SlurmSpawner):
    """Spawns JupyterLab in a Slurm job chosen from operator-defined resource profiles."""

    profiles = List(
        Dict(),
        default_value=DEFAULT_PROFILES,
        help="""Resource profiles users choose from. Each is a dict with `name`, `partition` and
        optionally `display_name`, `description`, `gpu_types` (list), `min_gpus`/`max_gpus`,
        `cpus`/`max_cpus`, `memory_gb`/`max_memory_gb`, `hours`/`max_hours` (defaults / maxima),
        `account`, `qos`, `reservation`, `environment` (dict of variables exported in the job)
        and `image` (an Apptainer image the server runs in). See docs/slurm.md.""",
    ).tag(config=True)

    group_limits = Dict(
        help="""Per-hub-group limits, e.g. {"sme": {"max_gpus": 2, "max_hours": 8}}.
        Keys: `max_gpus`, `max_hours`, `profiles` (names the group may use). A user in several
        limited groups gets the most generous; users in no limited group are not narrowed.""",
    ).tag(config=True)

    environments = Dict(
        help="""Notebook environments profiles may offer (profile key `environments`: a list of
        these names), e.g. {"pytorch-onnx": {"display_name": "PyTorch + ONNX Runtime, CUDA 12",
        "image": "/gpfs/apps/aif/images/pytorch-onnx-2026.11.1.sif"}}. Each entry has either
        `image` (an Apptainer image; the server runs in `apptainer exec --nv IMAGE`) or `venv` (a
        virtual environment on the shared filesystem), and optionally `env` (variables exported
        in the job). `aifactory.images.spawner_environments(folder)` builds this from the
        environments built with `aif images build`. See docs/environments.md.""",
    ).tag(config=True)

    squeue_command = Unicode(
        "squeue",
        help="""squeue executable (and leading arguments) for the shared poller, e.g. to add
        `--clusters=mn5`. It runs as the hub user, once per refresh for all jobs.""",
    ).tag(config=True)

    squeue_timeout = Float(
        20.0, help="Seconds before a squeue call counts as failed (the jobs' state is then 'unknown')."
    ).tag(config=True)

    idle_timeout = Integer(
        3600,
        help="""Seconds without activity after which a session shuts itself down (kernels are
        culled, then the server exits) so its job releases the GPUs. 0 disables it.""",
    ).tag(config=True)

    job_name = Unicode(
        "aif-jupyterlab", help="Slurm job name of sessions (shown in squeue; letters, digits, - and _)."
    ).tag(config=True)

    output_tail_lines = Integer(
        15, help="How many last lines of the job's output file to show when a session fails."
    ).tag(config=True)

    node_addresses = Dict(
        help="""Map Slurm node names to addresses the hub can reach, where node names do not
        resolve from the hub host (e.g. {"gpu0001": "10.1.0.1"}).""",
    ).tag(config=True)

    req_srun = Unicode(
        "",
        help="""Prefix for the server command inside the job (stock batchspawner: 'srun').
        Empty by default: the batch step already holds the job's GPUs, and an extra step
        costs start-up time.""",
    ).tag(config=True)

    batch_script = Unicode(
        BATCH_SCRIPT,
        help="""Jinja2 template of the job script; the default is
        aifactory/hub/spawner/templates/batch_script.sh. It is rendered from operator traits
        and the validated request only, never from `user_options`.""",
    ).tag(config=True)

    workshops_dir = Unicode(
        "",
        help="""Folder of workshop records (`aif workshop create`; the platform sets it). Each
        active workshop adds a profile pinned to its Slurm reservation, offered to its group's
        members only (and only that profile to them), and sends them to its course materials
        (an nbgitpuller link) when their session starts.""",
    ).tag(config=True)

    startup_poll_interval = Float(
        0.25,
        help="""Seconds between Slurm queries while a session starts (stock: 0.5). Cheap here:
        starting spawners share one squeue call per interval.""",
    ).tag(config=True)

    server_ready_timeout = Float(
        60.0,
        help="""Seconds the spawner waits, once the server reported its port, for it to accept
        connections (a TCP connect every 0.1 s) before handing it to the hub. The hub's own wait
        (Spawner.http_timeout) backs off exponentially, up to seconds between probes, so it
        noticed a started JupyterLab up to 3 s late; after this wait its first probe answers.
        Past this time (or close to start_timeout) the hub's wait takes over. 0: hand the
        server over at its port report, as stock batchspawner.""",
    ).tag(config=True)

    @observe("port")
    def _wake_start_on_port(self, change):
        if change["new"] and getattr(self, "_port_reported", None) is not None:
            self._port_reported.set()

    @default("batch_submit_cmd")
    def _batch_submit_cmd_default(self):
        # never requeued (see the module docstring); on the command line, so that a site's own
        # batch_script template cannot lose it
        return "sbatch --parsable --no-requeue"

    @default("exec_prefix")
    def _exec_prefix_default(self):
        # jobs are submitted as the user; sudo is often absent on a minimal login node
        return "sudo -E -u {username}" if shutil.which("sudo") else "runuser -u {username} --"

    @default("batchspawner_singleuser_cmd")
    def _singleuser_wrapper_default(self):
        return str(VENV_BIN / "batchspawner-singleuser")

    @default("cmd")
    def _cmd_default(self):
        return [str(VENV_BIN / "jupyterhub-singleuser")]

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return type(self)._apply_validated_options

    @default("options_form")
    def _options_form_default(self):
        return type(self)._render_form

    @validate("profiles")
    def _check_profiles(self, proposal):
        parsed = [Profile.from_config(entry) for entry in proposal["value"]]
        names = [p.name for p in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"profiles: duplicate names in {names}")
        return proposal["value"]

    @validate("environments")
    def _check_environments(self, proposal):
        for name, entry in proposal["value"].items():
            kinds = [k for k in ("image", "venv") if entry.get(k)] if isinstance(entry, dict) else []
            if len(kinds) != 1 or not all(IMAGE_PATH.match(entry[k]) for k in kinds):
                raise ValueError(f"environments[{name!r}]: expected a dict with exactly one of 'image' or "
                                 f"'venv', an absolute path, got {entry!r}")
            for key, value in (entry.get("env") or {}).items():
                if not ENV_NAME.match(key) or not isinstance(value, str) or "\n" in value:
                    raise ValueError(f"environments[{name!r}].env: {key!r} must be a NAME: single-line string")
        return proposal["value"]

    @validate("group_limits")
    def _check_group_limits(self, proposal):
        for group, entry in proposal["value"].items():
            GroupLimit.from_config(group, entry)
        return proposal["value"]

    @validate("job_name")
    def _check_job_name(self, proposal):
        if not proposal["value"].replace("-", "").replace("_", "").isalnum():
            raise ValueError("job_name: letters, digits, '-' and '_' only")
        return proposal["value"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.session_request = None
        self.node = ""
        self.end_notice = ""
        self.restored_request = None
        self._submitted_at = None
        self._port_reported = None
        self._listening = False
        self._parsed_profiles = None

    # ---- profiles and validation -------------------------------------------------------------
    @observe("profiles")
    def _forget_parsed_profiles(self, change):
        self._parsed_profiles = None

    def all_profiles(self):
        """The configured profiles (parsed once) plus those of the active workshops."""
        if getattr(self, "_parsed_profiles", None) is None:
            self._parsed_profiles = tuple(Profile.from_config(entry) for entry in self.profiles)
        return [*self._parsed_profiles, *workshop_offers(self.workshops_dir).profiles]

    def user_allowances(self):
        group_limits = {**self.group_limits, **dict(workshop_offers(self.workshops_dir).group_limits)}
        limits = {g: GroupLimit.from_config(g, e) for g, e in group_limits.items()}
        return allowances(self.all_profiles(), limits, self._user_groups())

    def _user_groups(self):
        return [g.name for g in getattr(self.user, "groups", [])]

    def _prepare_workshop_materials(self):
        """Pull a workshop's course into the home as the job starts, and open the server there."""
        if not hasattr(self, "_configured_prologue"):
            self._configured_prologue, self._configured_default_url = self.req_prologue, self.default_url
        self.req_prologue, self.default_url = self._configured_prologue, self._configured_default_url
        groups = self._user_groups()
        for ws in workshop_offers(self.workshops_dir).workshops:
            if ws.group in groups and ws.materials:
                self.req_prologue = "\n".join(filter(None, [self._configured_prologue,
                                                             ws.materials_pull(str(VENV_BIN / "gitpuller"))]))
                self.default_url = f"/lab/tree/{ws.materials_dir}"
                return

    def _render_form(self):
        self._reachability_check()  # runs while the user reads the form, done by the time they submit
        return SPAWN_FORM.render(allowed=self.user_allowances(), notice=self.end_notice,
                                    environments=self.environments)

    def options_from_form(self, formdata):
        profile = (formdata.get("profile") or [""])[0]
        options = {"profile": profile}
        for key in ("gpu_type", "gpus", "cpus", "memory_gb", "hours", "notebook_env"):
            values = formdata.get(f"{key}@{profile}")
            if values:
                options[key] = values[0]
        return options

    def _apply_validated_options(self, user_options):
        try:
            request = resolve_request(self.user_allowances(), user_options)
        except OptionsError as err:
            self._forget_refused_options()
            raise spawn_failure(f"Invalid resource request: {err}", "invalid user_options", 400) from err
        self.session_request = request
        self.req_partition = request.partition
        self.req_runtime = request.walltime
        self.req_gres = request.gres
        self.req_nprocs = str(request.cpus)
        self.req_memory = f"{request.memory_gb}G"
        self.req_account = request.account
        self.req_qos = request.qos
        self.req_reservation = request.reservation

    def _forget_refused_options(self):
        """JupyterHub saved the request as the user's options before we saw it: a refused one must
        not come back as the default of the next start (an empty POST would be refused again)."""
        self.user_options = {}
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = {}
            if self.db is not None:
                self.db.commit()

    # ---- environment and batch script --------------------------------------------------------
    def get_env(self):
        env = super().get_env()
        if os.environ.get("SLURM_CONF"):
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # sbatch/scancel must find the same cluster
        return env

    def get_args(self):
        args = list(super().get_args())  # a copy: the parent may hand back self.args itself
        if self.idle_timeout:
            args += [
                f"--ServerApp.shutdown_no_activity_timeout={self.idle_timeout}",
                f"--MappingKernelManager.cull_idle_timeout={self.idle_timeout}",
                "--MappingKernelManager.cull_interval=60",
                "--MappingKernelManager.cull_connected=True",
            ]
        return args

    def output_file(self, job_id="%j"):
        return f"{self.req_homedir}/.aif-slurm-{job_id}.log"

    async def _get_batch_script(self, **_merged_with_user_options):
        # Stock batchspawner passes template vars updated with user_options; ignore them and
        # render from operator traits plus the validated request only.
        subvars = self.get_req_subvars()
        request = self.session_request
        environment = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in request.environment)
        image = next(p.image for p in self.all_profiles() if p.name == request.profile)
        cmd = self.cmd_formatted_for_batch()
        if request.notebook_env:
            image, cmd, env_exports = self._notebook_env_command(request.notebook_env)
            environment = env_exports + environment
        subvars.update(
            cmd=cmd,
            job_name=self.job_name,
            output_file=self.output_file(),
            walltime_seconds=request.walltime_seconds,
            environment=environment,
            image_prefix=f"apptainer exec --nv {shlex.quote(image)} " if image else "",
            aif=SESSION_VARS,
        )
        return _compiled(self.batch_script).render(**subvars)

    def _notebook_env_command(self, name):
        """(image, command, exports) that start the server inside the chosen environment."""
        entry = self.environments.get(name)
        if entry is None:
            raise spawn_failure(f"environment {name!r} is offered by a profile but not defined in "
                                "AIFSlurmSpawner.environments: ask the operator", "config")
        env = dict(entry.get("env") or {})
        args = " ".join([*self.cmd[1:], *self.get_args()])
        if entry.get("venv"):
            bin_dir = f"{entry['venv']}/bin"
            env["PATH"] = f"{bin_dir}:$PATH"  # terminals and %pip in the session use the env too
            command = f"{bin_dir}/batchspawner-singleuser {bin_dir}/jupyterhub-singleuser {args}"
            image = ""
        else:  # inside the image, its own scripts are on PATH
            command = f"batchspawner-singleuser jupyterhub-singleuser {args}"
            image = entry["image"]
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()) if k != "PATH")
        if "PATH" in env:
            exports += f'export PATH="{env["PATH"]}"\n'
        return image, command.strip(), exports

    # ---- Slurm state through the shared poller -----------------------------------------------
    @property
    def poller(self):
        return SlurmPoller.shared(self.squeue_command, self.squeue_timeout)

    async def start(self):
        # validate here too: a site may have replaced apply_user_options with its own hook
        self._apply_validated_options(self.user_options)
        self.port = 0
        self._port_reported = asyncio.Event()
        self.node = ""
        self.end_notice = ""  # shown on the form after the previous session; now outdated
        self._prepare_workshop_materials()
        self._start_began = time.monotonic()
        await self._check_python_reachable()
        try:
            job_id = await self.submit_batch_script()
        except RuntimeError as err:  # batchspawner's run_command: sbatch failed, with its stderr
            raise spawn_failure(f"Slurm refused the session's job: {err}", "sbatch") from err
        # only a squeue call started after sbatch returned is sure to list the job
        submitted = self._submitted_at = time.monotonic()
        if not job_id:
            raise spawn_failure("sbatch printed no job id; see the hub log for its output", "sbatch")
        self.log.info("%s: Slurm job %s submitted", self._log_name, job_id)
        snapshot = await self._wait_until_running(submitted)
        self.node = snapshot.jobs[job_id].node
        self.ip = self.node_addresses.get(self.node, self.node)
        while self.port == 0:
            # woken as soon as the server reports its port; between reports, check it is alive
            try:
                await asyncio.wait_for(self._port_reported.wait(), timeout=2)
            except asyncio.TimeoutError:
                snapshot = await self.poller.get(max_age=2)
                if snapshot.phase(job_id) in ("finished", "gone"):
                    raise spawn_failure(self.failure_message(snapshot), "job ended")
        await self._wait_until_listening(job_id)
        self.db.commit()
        return self.ip, self.port

    async def _wait_until_listening(self, job_id):
        """Return once the server accepts connections, or when its time is up; fail if the job ends."""
        self._listening = False
        if not self.server_ready_timeout:
            return
        # leave the hub the last seconds of start_timeout, so it can still stop a hung server itself
        deadline = min(time.monotonic() + self.server_ready_timeout, self._start_began + self.start_timeout - 5)
        next_check = time.monotonic() + 2
        while time.monotonic() < deadline:
            if await accepts_connections(self.ip, self.port):
                self._listening = True
                return
            if time.monotonic() >= next_check:
                snapshot = await self.poller.get(max_age=2)
                if snapshot.phase(job_id) in ("finished", "gone"):
                    raise spawn_failure(self.failure_message(snapshot), "job ended")
                next_check = time.monotonic() + 2
            await asyncio.sleep(READY_POLL_S)
        self.log.info("%s: server on %s:%s not listening yet; the hub's own wait takes over",
                      self._log_name, self.ip, self.port)

    async def _wait_until_running(self, submitted):
        newer_than = submitted
        while True:
            snapshot = await self.poller.get(newer_than=newer_than)
            phase = snapshot.phase(self.job_id)
            if phase == "running":
                return snapshot
            if phase in ("finished", "gone"):
                message = self.failure_message(snapshot)
                self.clear_state()
                raise spawn_failure(message, "job ended")
            await asyncio.sleep(self.startup_poll_interval)
            newer_than = time.monotonic()

    async def poll(self):
        if not self.job_id:
            # the hub also polls while start() is still submitting: that is not a dead server
            return None if self._spawn_pending else 0
        # a snapshot from before the submission would not list the job yet
        snapshot = await self.poller.get(max_age=max(self.poll_interval, 1), newer_than=self._submitted_at)
        phase = snapshot.phase(self.job_id)
        self.log.debug("%s: Slurm job %s is %s", self._log_name, self.job_id, phase)
        if phase in ("running", "pending", "unknown"):
            if phase == "unknown":
                self.log.warning("%s: Slurm state unknown (%s); keeping the server", self._log_name, snapshot.error)
            return None
        self.end_notice = self.failure_message(snapshot, prefix="Your last session ended")
        self.log.warning("%s: %s", self._log_name, self.end_notice)
        self.clear_state()
        return 1

    async def stop(self, now=False):
        if not self.job_id:
            return
        job_id = self.job_id
        try:
            await self.cancel_batch_job()
        except RuntimeError as err:
            # scancel fails for a job that already ended (walltime, node failure): that is fine
            snapshot = await self.poller.get(newer_than=time.monotonic())
            if snapshot.phase(job_id) not in ("finished", "gone"):
                raise RuntimeError(f"scancel {job_id} failed: {err}") from err
            return
        if now:
            return
        cancelled = time.monotonic()
        for _ in range(20):
            snapshot = await self.poller.get(newer_than=cancelled)
            if snapshot.phase(job_id) in ("finished", "gone"):
                return
            await asyncio.sleep(0.5)
            cancelled = time.monotonic()
        self.log.warning("%s: job %s did not end within 10 s of scancel", self._log_name, job_id)

    async def progress(self):
        last = None
        while True:
            if not self.job_id:
                event = {"progress": 10, "message": "Submitting the job to Slurm..."}
            else:
                snapshot = await self.poller.get(max_age=1)
                event = self.progress_event(snapshot)
            if event != last:
                yield event
                last = event
            if event.get("progress", 0) >= 90 or (event.get("progress", 0) >= 80 and self.port):
                return
            await asyncio.sleep(1)

    def progress_event(self, snapshot):
        phase = snapshot.phase(self.job_id)
        job = snapshot.jobs.get(self.job_id)
        if phase == "pending":
            parts = [f"Queued: Slurm job {self.job_id} in partition {job.partition}"]
            position = snapshot.queue_position(self.job_id)
            if position:
                parts.append(f"position {position} in the queue")
            if job.reason and job.reason != "None":
                parts.append(f"waiting for: {job.reason}")
            if job.start_time and job.start_time not in ("N/A", "Unknown"):
                parts.append(f"expected start {job.start_time}")
            return {"progress": 30, "message": ", ".join(parts)}
        if phase == "running":
            ready = "JupyterLab is up" if self._listening else "JupyterLab is starting"
            return {"progress": 80, "message": f"Job {self.job_id} started on node {job.node}; {ready}"}
        if phase == "unknown":
            return {"progress": 20, "message": f"Slurm is not answering ({snapshot.error}); still waiting"}
        return {"progress": 90, "message": self.failure_message(snapshot)}

    def failure_message(self, snapshot, prefix="The session could not start"):
        job = snapshot.jobs.get(self.job_id)
        if job is not None:
            what = f"Slurm job {self.job_id} is {job.state}"
            if job.reason and job.reason != "None":
                what += f" (reason: {job.reason})"
            if job.node:
                what += f" on node {job.node}"
        else:
            what = f"Slurm job {self.job_id} is no longer known to Slurm"
        tail = self._output_tail()
        return f"{prefix}: {what}." + (f"\nLast lines of {self.output_file(self.job_id)}:\n{tail}" if tail else "")

    def _output_tail(self):
        try:
            lines = Path(self.output_file(self.job_id)).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-self.output_tail_lines:])

    # (user, venv) -> the task checking that the user can run the hub's venv; shared by the hub's
    # spawners, kept when it passed (a failed check runs again: the operator may have fixed it)
    _reachability: dict = {}

    def _reachability_check(self):
        """The (started or finished) check for this user, or None where it does not apply."""
        if os.geteuid() != 0:
            return None  # jobs run as the hub's own user
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None  # a form rendered outside the hub (tests): start() checks
        key = (self.user.name, str(VENV_BIN))
        task = self._reachability.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() or not task.result())):
            task = self._reachability[key] = asyncio.ensure_future(
                user_can_execute(self.user.name, VENV_BIN / "jupyterhub-singleuser"))
        return task

    async def _check_python_reachable(self):
        """Fail before submitting when the user cannot run the hub's venv (root-only home...)."""
        task = self._reachability_check()
        if task is not None and not await asyncio.shield(task):
            raise spawn_failure(
                f"{VENV_BIN / 'jupyterhub-singleuser'} is not executable by user {self.user.name!r}: jobs run "
                "as that user, so the hub's virtual environment must be outside root-only directories "
                "(every parent o+rx)", "config"
            )

    # ---- state across hub restarts -----------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.end_notice:
            # the hub drops a stopped spawner object: keep the notice for the next spawn form
            state["end_notice"] = self.end_notice
        if self.job_id:
            request = self.session_request.to_state() if self.session_request else self.restored_request
            state.update(request=request, node=self.node)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.node = state.get("node", "")
        self.end_notice = state.get("end_notice", self.end_notice)
        self.restored_request = state.get("request")

    def clear_state(self):
        # end_notice deliberately survives: it explains the ended session on the next form
        super().clear_state()
        self.node = ""

