"""Validation of resource requests (no Slurm needed): every refusal names the field."""

import datetime as dt

import pytest

from aifactory.hub.spawner.profiles import GroupLimit, OptionsError, Profile, allowances, resolve_request
from aifactory.hub.spawner.poller import Snapshot, parse_squeue

PROFILES = [
    Profile.from_config({"name": "gpu-1", "partition": "gpu", "gpu_types": ["h200", "a100"], "min_gpus": 1,
                         "max_gpus": 4, "cpus": 2, "max_cpus": 8, "memory_gb": 4, "max_memory_gb": 32,
                         "hours": 2, "max_hours": 24}),
    Profile.from_config({"name": "cpu", "partition": "cpu", "hours": 1, "max_hours": 12}),
    Profile.from_config({"name": "big", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 4, "max_gpus": 8}),
]
LIMITS = {"sme": GroupLimit.from_config("sme", {"max_gpus": 2, "max_hours": 8})}


def sme():
    return allowances(PROFILES, LIMITS, ["sme"])


def test_defaults_come_from_the_first_allowed_profile():
    request = resolve_request(sme(), {})
    assert (request.profile, request.partition, request.gres, request.walltime) == ("gpu-1", "gpu", "gpu:h200:1",
                                                                                   "02:00:00")


def test_group_limits_narrow_ranges_and_hide_profiles_they_cannot_satisfy():
    allowed = {a.profile.name: a for a in sme()}
    assert "big" not in allowed  # needs 4 GPUs, the group may have 2
    assert allowed["gpu-1"].gpu_range == (1, 2) and allowed["gpu-1"].hours_max == 8
    unlimited = {a.profile.name: a for a in allowances(PROFILES, LIMITS, ["staff"])}
    assert unlimited["gpu-1"].gpu_range == (1, 4) and "big" in unlimited


@pytest.mark.parametrize("options, field, expected", [
    ({"gpus": 3}, "gpus", "1..2"),
    ({"hours": 9}, "hours", "1..8"),
    ({"hours": "0"}, "hours", "1..8"),
    ({"partition": "cpu"}, "partition", "gpu"),
    ({"profile": "big"}, "profile", "gpu-1, cpu"),
    ({"gpu_type": "v100"}, "gpu_type", "h200, a100"),
    ({"cpus": 99}, "cpus", "2..8"),
    ({"gpus": True}, "gpus", "whole number"),
    ({"gpus": 1.5}, "gpus", "whole number"),
    ({"profile": "cpu", "gpu_type": "h200"}, "gpu_type", "without GPUs"),
])
def test_out_of_range_and_foreign_choices_are_refused_naming_the_field(options, field, expected):
    with pytest.raises(OptionsError) as err:
        resolve_request(sme(), options)
    assert err.value.field == field and expected in str(err.value)


@pytest.mark.parametrize("options, field", [
    ({"profile": "gpu-1\n#SBATCH --uid=0"}, "profile"),
    ({"gpus": "1\n#SBATCH --exclusive"}, "gpus"),
    ({"gpus": "$(id)"}, "gpus"),
    ({"gpu_type": "`touch /tmp/pwned`"}, "gpu_type"),
    ({"hours": "1; rm -rf ~"}, "hours"),
    ({"cmd": "/bin/sh -c id"}, "cmd"),
    ({"homedir": "/root"}, "homedir"),
    ({"keepvars": "LD_PRELOAD"}, "keepvars"),
    ({"options": "--uid=0"}, "options"),
])
def test_injection_attempts_are_refused(options, field):
    with pytest.raises(OptionsError) as err:
        resolve_request(sme(), options)
    assert err.value.field == field


def test_form_strings_are_converted_and_checked():
    request = resolve_request(sme(), {"profile": "gpu-1", "gpus": "2", "hours": " 8 ", "gpu_type": "a100"})
    assert (request.gpus, request.hours, request.gres) == (2, 8, "gpu:a100:2")


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "partition": "gpu; id"}, "partition"),
    ({"name": "x", "partition": "gpu", "max_gpus": 2}, "gpu_types"),
    ({"name": "x", "partition": "gpu", "hours": 5, "max_hours": 4}, "hours"),
    ({"name": "x", "partition": "gpu", "qos": "a b"}, "qos"),
    ({"name": "x", "partition": "gpu", "gpus": 2}, "unknown keys"),
    ({"name": "x", "partition": "gpu", "environment": {"A": "1\n#SBATCH"}}, "environment"),
    ({"name": "x", "partition": "gpu", "window_end": "tomorrow"}, "window_end must be an ISO 8601 time"),
    ({"name": "x", "partition": "gpu", "window_end": "2026-11-21T18:00"}, "window_end needs a UTC offset"),
    ({"name": "x", "partition": "gpu", "window_start": "2026-11-21T18:00+00:00"}, "window_start needs window_end"),
    ({"name": "x", "partition": "gpu", "window_start": "2026-11-21T18:00+00:00",
      "window_end": "2026-11-21T17:00+00:00"}, "window_end must be after window_start"),
])
def test_operator_mistakes_in_profiles_fail_loudly(entry, message):
    with pytest.raises(ValueError, match=message):
        Profile.from_config(entry)


WINDOW = {"name": "workshop-ws1", "partition": "gpu", "hours": 3, "max_hours": 3, "reservation": "aif-ws1",
          "window_start": "2026-11-21T09:00:00+00:00", "window_end": "2026-11-21T11:30:00+00:00"}


@pytest.mark.parametrize("now, minutes, walltime", [
    ("2026-11-21T08:20:00+00:00", 150, "02:30:00"),  # queued before the window: it runs all of it
    ("2026-11-21T10:14:30+00:00", 75, "01:15:00"),   # late: what is left, in whole minutes
    ("2026-11-21T11:29:00+00:00", 1, "00:01:00"),
])
def test_a_reservation_window_cuts_the_walltime_to_what_it_has_left(now, minutes, walltime):
    allowed = allowances([Profile.from_config(WINDOW)], {}, [])
    request = resolve_request(allowed, {"hours": "3"}, now=dt.datetime.fromisoformat(now))
    assert (request.hours, request.minutes, request.walltime, request.walltime_seconds) == (
        3, minutes, walltime, minutes * 60)
    unbounded = resolve_request(sme(), {"hours": 3}, now=dt.datetime.fromisoformat(now))
    assert (unbounded.minutes, unbounded.walltime) == (180, "03:00:00")


def test_a_session_asked_for_after_the_window_is_refused_naming_the_end():
    allowed = allowances([Profile.from_config(WINDOW)], {}, [])
    with pytest.raises(OptionsError, match="workshop-ws1: its reservation ended at 2026-11-21T11:30:00"):
        resolve_request(allowed, {}, now=dt.datetime(2026, 11, 21, 11, 30, 20, tzinfo=dt.timezone.utc))


def test_queue_position_follows_priority_within_the_partition():
    text = "\n".join([
        "10|RUNNING|vm|None|gpu|100|2026-01-01T00:00:00|a|x",
        "11|PENDING||Resources|gpu|500|2026-01-01T01:00:00|b|x",
        "12|PENDING||Priority|gpu|300|N/A|c|x",
        "13|PENDING||Priority|cpu|900|N/A|d|x",
        "14|CANCELLED|vm|None|gpu|0|N/A|e|x",
    ])
    snap = Snapshot(started=1.0, ok=True, error="", jobs=parse_squeue(text))
    assert [snap.queue_position(j) for j in ("10", "11", "12", "13")] == [None, 1, 2, 1]
    assert [snap.phase(j) for j in ("10", "11", "14", "99")] == ["running", "pending", "finished", "gone"]
    assert Snapshot(started=1.0, ok=False, error="down").phase("10") == "unknown"
