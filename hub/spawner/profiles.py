"""Resource profiles, per-group limits and the validation of what a user asks for.

A *profile* is what an operator offers (partition, GPU types and counts, CPUs, memory, walltime,
account, QoS, reservation, environment); a *group limit* narrows profiles for members of a hub
group (e.g. `sme`: at most 2 GPUs and 8 h). `resolve_request` turns untrusted `user_options`
(from the spawn form or the REST API) into a `SessionRequest` whose every value is either an int
checked against a range or a string chosen from the operator's own list. Nothing else reaches
the batch script.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, fields

from ...common.errors import AIFError

# Operator-supplied strings end up in #SBATCH lines: keep them to a conservative alphabet.
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INT_TEXT = re.compile(r"^[0-9]{1,6}$")
IMAGE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]+$")

#: the keys a user may send; anything else (cmd, homedir, keepvars, options, ...) is refused
USER_FIELDS = ("profile", "partition", "gpu_type", "gpus", "cpus", "memory_gb", "hours", "notebook_env")


class OptionsError(AIFError, ValueError):
    """A user option was refused; `field` names it and the message says what was expected."""

    def __init__(self, field_name, message):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Profile:
    """One entry of `AIFSlurmSpawner.profiles`; ranges are inclusive."""

    name: str
    partition: str
    display_name: str = ""
    description: str = ""
    gpu_types: tuple = ()
    min_gpus: int = 0
    max_gpus: int = 0
    cpus: int = 2
    max_cpus: int = 0
    memory_gb: int = 4
    max_memory_gb: int = 0
    hours: int = 1
    max_hours: int = 4
    account: str = ""
    qos: str = ""
    reservation: str = ""
    environment: dict = field(default_factory=dict)
    image: str = ""
    # names of notebook environments (AIFSlurmSpawner.environments) offered; first is the default
    environments: tuple = ()
    # hub groups whose members are offered this profile (a workshop's); empty: everyone
    groups: tuple = ()
    # the reservation's window (ISO 8601 with a UTC offset): Slurm ends every job of a reservation
    # at its end, so a session's walltime is cut to the time the window has left
    window_start: str = ""
    window_end: str = ""

    @classmethod
    def from_config(cls, entry):
        if not isinstance(entry, dict):
            raise ValueError(f"profiles: each profile must be a dict, got {entry!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        label = entry.get("name", "?")
        if unknown:
            raise ValueError(f"profile {label!r}: unknown keys {unknown}; expected some of {sorted(known)}")
        try:
            profile = cls(**{**entry, "gpu_types": tuple(entry.get("gpu_types", ())),
                             "environments": tuple(entry.get("environments", ())),
                             "groups": tuple(entry.get("groups", ()))})
        except TypeError as err:
            raise ValueError(f"profile {label!r}: {err}") from err
        profile.check()
        return profile

    def check(self):
        """Fail loudly on an operator mistake, naming the profile and key."""
        where = f"profile {self.name!r}"
        for key in ("name", "partition"):
            if not SAFE_TOKEN.match(getattr(self, key) or ""):
                raise ValueError(f"{where}: {key} must match {SAFE_TOKEN.pattern}")
        for key in ("account", "qos", "reservation"):
            value = getattr(self, key)
            if value and not SAFE_TOKEN.match(value):
                raise ValueError(f"{where}: {key} must match {SAFE_TOKEN.pattern}")
        for gpu_type in self.gpu_types:
            if not SAFE_TOKEN.match(gpu_type):
                raise ValueError(f"{where}: gpu_types entry {gpu_type!r} must match {SAFE_TOKEN.pattern}")
        for key in ("min_gpus", "max_gpus", "cpus", "max_cpus", "memory_gb", "max_memory_gb", "hours", "max_hours"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}: {key} must be a non-negative integer, got {value!r}")
        for env_name in self.environments:
            if not isinstance(env_name, str) or not SAFE_TOKEN.match(env_name):
                raise ValueError(f"{where}: environments entry {env_name!r} must match {SAFE_TOKEN.pattern}")
        if self.image and self.environments:
            raise ValueError(f"{where}: give either image or environments, not both")
        if self.image and not IMAGE_PATH.match(self.image):
            raise ValueError(f"{where}: image must be an absolute path matching {IMAGE_PATH.pattern}")
        if self.max_gpus and not self.gpu_types:
            raise ValueError(f"{where}: max_gpus > 0 needs gpu_types (e.g. ['h200'])")
        if self.min_gpus > self.max_gpus:
            raise ValueError(f"{where}: min_gpus ({self.min_gpus}) > max_gpus ({self.max_gpus})")
        if not 1 <= self.hours <= self.max_hours:
            raise ValueError(f"{where}: hours must be between 1 and max_hours ({self.max_hours})")
        start, end = (_instant(where, key, getattr(self, key)) for key in ("window_start", "window_end"))
        if start and not end:
            raise ValueError(f"{where}: window_start needs window_end")
        if start and start >= end:
            raise ValueError(f"{where}: window_end must be after window_start")
        if self.cpus < 1 or self.memory_gb < 1:
            raise ValueError(f"{where}: cpus and memory_gb must be at least 1")
        for name, value in self.environment.items():
            if not ENV_NAME.match(name) or not isinstance(value, str) or "\n" in value:
                raise ValueError(f"{where}: environment {name!r} must be a NAME: single-line string")

    @property
    def cpu_range(self):
        return self.cpus, max(self.cpus, self.max_cpus)

    @property
    def memory_range(self):
        return self.memory_gb, max(self.memory_gb, self.max_memory_gb)

    def minutes_left(self, now):
        """Whole minutes a session asked for at `now` may run before the window ends (None: no
        window). A job queued before the window opens starts when it opens."""
        if not self.window_end:
            return None
        start = max(now, dt.datetime.fromisoformat(self.window_start)) if self.window_start else now
        return max(0, int((dt.datetime.fromisoformat(self.window_end) - start).total_seconds() // 60))


@dataclass(frozen=True)
class GroupLimit:
    """One value of `AIFSlurmSpawner.group_limits`: caps for members of a hub group."""

    max_gpus: int | None = None
    max_hours: int | None = None
    profiles: tuple | None = None  # names of the profiles the group may use; None: all

    @classmethod
    def from_config(cls, group, entry):
        known = {f.name for f in fields(cls)}
        if not isinstance(entry, dict) or set(entry) - known:
            raise ValueError(f"group_limits[{group!r}]: expected a dict with keys from {sorted(known)}, got {entry!r}")
        profiles = entry.get("profiles")
        return cls(entry.get("max_gpus"), entry.get("max_hours"), tuple(profiles) if profiles is not None else None)


@dataclass(frozen=True)
class Allowance:
    """What one user may choose within one profile, after their groups' limits."""

    profile: Profile
    gpu_range: tuple
    hours_max: int

    @property
    def cpu_range(self):
        return self.profile.cpu_range

    @property
    def memory_range(self):
        return self.profile.memory_range


def allowances(profiles, group_limits, user_groups):
    """The profiles a user may use, with ranges narrowed by the limits of their groups.

    A user in several limited groups gets the most generous of them (groups grant, they do not
    stack restrictions); a user in no limited group gets the profiles as configured.
    """
    limits = [group_limits[g] for g in user_groups if g in group_limits]
    result = []
    for profile in profiles:
        if profile.groups and not set(profile.groups) & set(user_groups):
            continue
        if limits and not any(lim.profiles is None or profile.name in lim.profiles for lim in limits):
            continue
        max_gpus = _most_generous(profile.max_gpus, [lim.max_gpus for lim in limits])
        max_hours = _most_generous(profile.max_hours, [lim.max_hours for lim in limits])
        if max_gpus < profile.min_gpus or max_hours < 1:
            continue
        result.append(Allowance(profile, (profile.min_gpus, max_gpus), max_hours))
    return result


def _most_generous(profile_max, caps):
    if not caps or any(cap is None for cap in caps):
        return profile_max
    return min(profile_max, max(caps))


@dataclass(frozen=True)
class SessionRequest:
    """A validated request: the only values the batch script is rendered from."""

    profile: str
    partition: str
    gpu_type: str
    gpus: int
    cpus: int
    memory_gb: int
    hours: int
    account: str = ""
    qos: str = ""
    reservation: str = ""
    environment: tuple = ()
    notebook_env: str = ""
    # the walltime Slurm gets: `hours`, cut to what the reservation's window has left
    minutes: int = 0

    def __post_init__(self):
        if not self.minutes:
            object.__setattr__(self, "minutes", self.hours * 60)

    @property
    def gres(self):
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpus else ""

    @property
    def walltime(self):
        return f"{self.minutes // 60:02d}:{self.minutes % 60:02d}:00"

    @property
    def walltime_seconds(self):
        return self.minutes * 60

    def to_state(self):
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"environment": dict(self.environment)}


def resolve_request(allowed, user_options, now=None):
    """Validate untrusted `user_options` against the user's allowances; raise OptionsError."""
    if not allowed:
        raise OptionsError("profile", "no resource profile is available to you; ask the operator")
    options = dict(user_options or {})
    unknown = sorted(set(options) - set(USER_FIELDS))
    if unknown:
        raise OptionsError(unknown[0], f"not an accepted option; accepted: {', '.join(USER_FIELDS)}")
    by_name = {a.profile.name: a for a in allowed}
    name = _choice(options, "profile", list(by_name), default=allowed[0].profile.name)
    allowance = by_name[name]
    profile = allowance.profile
    _choice(options, "partition", [profile.partition], default=profile.partition)
    gpus = _integer(options, "gpus", allowance.gpu_range, default=allowance.gpu_range[0])
    gpu_type = ""
    if gpus:
        gpu_type = _choice(options, "gpu_type", list(profile.gpu_types), default=profile.gpu_types[0])
    elif options.get("gpu_type") not in (None, ""):
        raise OptionsError("gpu_type", "set without GPUs: choose gpus >= 1 or leave gpu_type empty")
    notebook_env = ""
    if profile.environments:
        notebook_env = _choice(options, "notebook_env", list(profile.environments), default=profile.environments[0])
    elif options.get("notebook_env") not in (None, ""):
        raise OptionsError("notebook_env", f"profile {name} offers no choice of environment")
    hours = _integer(options, "hours", (1, allowance.hours_max), default=min(profile.hours, allowance.hours_max))
    return SessionRequest(
        profile=name,
        partition=profile.partition,
        gpu_type=gpu_type,
        gpus=gpus,
        cpus=_integer(options, "cpus", profile.cpu_range, default=profile.cpus),
        memory_gb=_integer(options, "memory_gb", profile.memory_range, default=profile.memory_gb),
        hours=hours,
        account=profile.account,
        qos=profile.qos,
        reservation=profile.reservation,
        environment=tuple(sorted(profile.environment.items())),
        notebook_env=notebook_env,
        minutes=_walltime_minutes(profile, hours, now or dt.datetime.now(dt.timezone.utc)),
    )


def _walltime_minutes(profile, hours, now):
    left = profile.minutes_left(now)
    if left is None:
        return hours * 60
    if left < 1:
        raise OptionsError("profile", f"{profile.name}: its reservation ended at {profile.window_end}")
    return min(hours * 60, left)


def _instant(where, key, text):
    """An aware datetime from ISO 8601 text, or None for ""; raises ValueError naming the key."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be an ISO 8601 time, got {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"{where}: {key} needs a UTC offset (e.g. +00:00), got {text!r}")
    return value


def _choice(options, key, allowed, default):
    value = options.get(key, default)
    if value in (None, ""):
        value = default
    if not isinstance(value, str) or value not in allowed:
        raise OptionsError(key, f"{_show(value)} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def _integer(options, key, bounds, default):
    value = options.get(key, default)
    if value in (None, ""):
        value = default
    if isinstance(value, str) and INT_TEXT.match(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionsError(key, f"{_show(value)} is not a whole number")
    low, high = bounds
    if not low <= value <= high:
        raise OptionsError(key, f"{value} is outside the allowed range {low}..{high}")
    return value


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
