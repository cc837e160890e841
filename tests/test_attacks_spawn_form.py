"""Attack cases: fuzzing the spawn form and `user_options` against the Slurm batch script.

Thousands of hostile inputs (hypothesis) go through the real AIFSlurmSpawner the way the hub
sends them: the form through `run_options_from_form`, both the form's and the REST API's
`user_options` through `_run_apply_user_options` (the hub's hook runner), and an accepted
request through the same composition as batchspawner's `submit_batch_script` (template vars
merged with `user_options`) into the real template, without submitting it. Property: either a
400 whose cause is an OptionsError naming the offending field, or a script whose every
user-derived value parses back to a value this user may choose and whose other lines are
exactly those of the same profile's default script (no injected lines, same submit command).

The oracle below is the test's own copy of what each profile allows, not the code under test.
"""

import asyncio
import logging
import re
import shlex
from collections import Counter
from types import SimpleNamespace

import pytest
from batchspawner.batchspawner import format_template
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado import web

from aifactory.hub.spawner.profiles import USER_FIELDS, OptionsError
from aifactory.hub.spawner.slurm import VENV_BIN, AIFSlurmSpawner

ENVIRONMENTS = {
    "pytorch-onnx": {"image": "/gpfs/apps/aif/images/pytorch-onnx-2026.11.1.sif",
                     "env": {"AIF_ENVIRONMENT": "pytorch-onnx"}},
    "cpu-venv": {"venv": "/gpfs/apps/aif/venvs/cpu-2026.11.1"},
}
PROFILES = [
    {"name": "gpu-1", "partition": "gpu", "gpu_types": ["h200", "a100"], "min_gpus": 1, "max_gpus": 4,
     "cpus": 2, "max_cpus": 16, "memory_gb": 4, "max_memory_gb": 64, "hours": 2, "max_hours": 24,
     "account": "aif-sme", "qos": "interactive"},
    {"name": "cpu", "partition": "cpu", "cpus": 1, "max_cpus": 8, "memory_gb": 2, "max_memory_gb": 16,
     "hours": 2, "max_hours": 24, "environment": {"OMP_NUM_THREADS": "1"}},
    {"name": "envs", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 0, "max_gpus": 2, "cpus": 1,
     "memory_gb": 1, "hours": 1, "max_hours": 4, "environments": ["pytorch-onnx", "cpu-venv"],
     "reservation": "workshop-1"},
]
GROUP_LIMITS = {"sme": {"max_gpus": 2, "max_hours": 8}}
HOME = "/home/nobody"  # req_homedir; the user must exist (get_env reads its passwd entry)

# What each profile lets a user choose, per group membership: the oracle, written out by hand.
ALLOWED = {
    (): {
        "gpu-1": {"partition": "gpu", "gpus": (1, 4), "gpu_types": {"h200", "a100"}, "cpus": (2, 16),
                  "memory": (4, 64), "hours": (1, 24), "envs": ("",)},
        "cpu": {"partition": "cpu", "gpus": (0, 0), "gpu_types": set(), "cpus": (1, 8), "memory": (2, 16),
                "hours": (1, 24), "envs": ("",)},
        # environments: the first is the default
        "envs": {"partition": "gpu", "gpus": (0, 2), "gpu_types": {"h200"}, "cpus": (1, 1), "memory": (1, 1),
                 "hours": (1, 4), "envs": ("pytorch-onnx", "cpu-venv")},
    },
}
ALLOWED[("sme",)] = {
    "gpu-1": {**ALLOWED[()]["gpu-1"], "gpus": (1, 2), "hours": (1, 8)},
    "cpu": {**ALLOWED[()]["cpu"], "hours": (1, 8)},
    "envs": {**ALLOWED[()]["envs"], "gpus": (0, 2), "hours": (1, 4)},
}
SBATCH_FIXED = {"job-name": "aif-jupyterlab", "output": f"{HOME}/.aif-slurm-%j.log", "chdir": HOME}
SBATCH_KEYS = {"job-name", "output", "chdir", "export", "partition", "time", "cpus-per-task", "mem", "gres",
               "account", "qos", "reservation"}

QUIET = logging.getLogger("aif.attacks.spawn-form")
QUIET.setLevel(logging.CRITICAL)  # the hub logs each refused request with a traceback: not needed here
LOOP = asyncio.new_event_loop()
TALLY = Counter()
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}


def make_spawner(groups):
    user = SimpleNamespace(name="nobody", groups=[SimpleNamespace(name=g) for g in groups],
                           url="/user/nobody/", escaped_name="nobody", id=1)
    hub = SimpleNamespace(url="http://127.0.0.1:8081/hub/", base_url="/hub/",
                          api_url="http://127.0.0.1:8081/hub/api", public_host="")
    return AIFSlurmSpawner(user=user, hub=hub, log=QUIET, profiles=PROFILES, environments=ENVIRONMENTS,
                           group_limits=GROUP_LIMITS, req_homedir=HOME)


def submit(spawner, user_options):
    """What the hub and batchspawner do up to sbatch: (submit command, script) or an HTTPError."""
    spawner.user_options = user_options
    LOOP.run_until_complete(spawner._run_apply_user_options(spawner.user_options))
    spawner._apply_validated_options(spawner.user_options)  # start() validates again
    subvars = spawner.get_req_subvars()
    command = " ".join((format_template(spawner.exec_prefix, **subvars),
                        format_template(spawner.batch_submit_cmd, **subvars)))
    subvars["cmd"] = spawner.cmd_formatted_for_batch()
    subvars.update(spawner.user_options)  # batchspawner merges user_options into the template vars
    return command, LOOP.run_until_complete(spawner._get_batch_script(**subvars))


BASELINES = {}


def baseline(groups, profile, notebook_env, with_gpus):
    """The default script of a profile (environment choice, GPUs or not) for this user."""
    key = (groups, profile, notebook_env, with_gpus)
    if key not in BASELINES:
        options = {"profile": profile, "notebook_env": notebook_env, "gpus": 1 if with_gpus else 0}
        BASELINES[key] = submit(make_spawner(groups), options)
    return BASELINES[key]


def sbatch_lines(script):
    lines = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            match = re.fullmatch(r"#SBATCH --([a-z-]+)=(\S+)", line)
            assert match, f"not a single --key=value #SBATCH line: {line!r}"
            key, value = match.groups()
            assert key in SBATCH_KEYS and key not in lines, f"unexpected or repeated #SBATCH line: {line!r}"
            lines[key] = value
    return lines


def in_range(text, bounds, pattern=r"[0-9]+"):
    assert re.fullmatch(pattern, text), text
    number = int(re.match(r"[0-9]+", text).group())
    return bounds[0] <= number <= bounds[1]


def check_script(groups, user_options, command, script):
    """Every user-derived value in the script is one this user may choose; nothing else changed."""
    sbatch = sbatch_lines(script)
    for key, value in SBATCH_FIXED.items():
        assert sbatch[key] == value
    profile = user_options.get("profile") or "gpu-1"  # the first profile is the default
    allowed = ALLOWED[groups][profile]
    assert sbatch["partition"] == allowed["partition"]
    assert in_range(sbatch["cpus-per-task"], allowed["cpus"])
    assert in_range(sbatch["mem"], allowed["memory"], r"[0-9]+G")
    hours = int(re.fullmatch(r"([0-9]{2}):00:00", sbatch["time"]).group(1))
    assert allowed["hours"][0] <= hours <= allowed["hours"][1]
    gres = sbatch.get("gres")
    if gres is None:
        assert allowed["gpus"][0] == 0
    else:
        _, gpu_type, gpus = gres.split(":")
        assert gres.startswith("gpu:") and gpu_type in allowed["gpu_types"] and in_range(gpus, allowed["gpus"])
        assert int(gpus) >= 1
    environment = user_options.get("notebook_env") or allowed["envs"][0]
    assert environment in allowed["envs"]
    base_command, base_script = baseline(groups, profile, environment, gres is not None)
    assert command == base_command, "the submit command depends on user input"
    # every line other than the #SBATCH values and the walltime is the profile's default line
    lines, base_lines = script.splitlines(), base_script.splitlines()
    assert len(lines) == len(base_lines), "lines were added or removed"
    for line, base in zip(lines, base_lines):
        if line.startswith("#SBATCH --") and base.startswith("#SBATCH --"):
            assert line.split("=")[0] == base.split("=")[0]
        elif "AIF_WALLTIME_END" in line:
            assert line == base.replace(f"+ {base_hours(base_script)} ", f"+ {hours * 3600} ")
        else:
            assert line == base, f"user input changed a script line: {line!r}"
    check_command_line(script, allowed)


def base_hours(script):
    return re.search(r"\+ ([0-9]+) \)\)", script).group(1)


def check_command_line(script, allowed):
    words = shlex.split(script.strip().splitlines()[-1])
    offered = [ENVIRONMENTS[name] for name in allowed["envs"] if name]
    bin_dirs = {str(VENV_BIN)} | {f"{e['venv']}/bin" for e in offered if "venv" in e}
    if words[:3] == ["apptainer", "exec", "--nv"]:
        assert words[3] in {e["image"] for e in offered if "image" in e}
        words, bin_dirs = words[4:], {""}  # inside the image its own scripts are on PATH
    assert {w.rpartition("batchspawner-singleuser")[0].rstrip("/") for w in words[:1]} <= bin_dirs, words
    assert {w.rpartition("jupyterhub-singleuser")[0].rstrip("/") for w in words[1:2]} <= bin_dirs, words
    assert words[0].endswith("batchspawner-singleuser") and words[1].endswith("jupyterhub-singleuser")
    assert all(w.startswith("--") for w in words[2:]), words


def attempt(kind, groups, user_options=None, formdata=None):
    spawner = make_spawner(groups)
    if formdata is not None:
        user_options = spawner.run_options_from_form(formdata)
    TALLY[f"{kind}:tried"] += 1
    try:
        command, script = submit(spawner, user_options)
    except web.HTTPError as err:
        cause = err.__cause__
        assert err.status_code == 400 and isinstance(cause, OptionsError), f"unclear refusal: {err!r} from {cause!r}"
        assert cause.field in user_options or cause.field in USER_FIELDS, cause.field
        assert str(cause).startswith(f"{cause.field}: ") and str(cause) in str(err)
        TALLY[f"{kind}:refused"] += 1
        return
    assert set(user_options) <= set(USER_FIELDS)
    check_script(groups, user_options, command, script)
    TALLY[f"{kind}:accepted"] += 1


# --- strategies -------------------------------------------------------------------------------

NASTY = "\n\r\t $`;&|<>()\"'\\{}%#=@*?!~/.:-_0123456789\x00\u2028\u0663\uff11é"
VALID_WORDS = ["gpu-1", "cpu", "envs", "gpu", "h200", "a100", "pytorch-onnx", "cpu-venv", "1", "2", "4", "8", "24"]
INJECTIONS = ["\n#SBATCH --uid=0", "\n#SBATCH --exclusive", "$(id)", "`id`", "; rm -rf ~", " --uid=0",
              "{{cmd}}", "{% if 1 %}x{% endif %}", "{username}", "\x00", "\r\n#SBATCH -p debug", "/../../etc/passwd"]
nasty_text = st.one_of(
    st.text(alphabet=NASTY, max_size=20),
    st.text(max_size=30),
    st.builds(lambda w, i: w + i, st.sampled_from(VALID_WORDS), st.sampled_from(INJECTIONS)),
    st.sampled_from(VALID_WORDS),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10, max_value=30),
                         st.floats(), nasty_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(nasty_text, inner, max_size=3), max_leaves=6)
option_keys = st.one_of(st.sampled_from(USER_FIELDS), st.sampled_from(
    ["cmd", "homedir", "keepvars", "options", "job_name", "output_file", "batch_script", "exec_prefix",
     "req_partition", "environment", "prologue", "srun", "image_prefix", "account", "qos"]), nasty_text)
groups_st = st.sampled_from([(), ("sme",)])


@settings(max_examples=1000, **SETTINGS)
@given(groups=groups_st, user_options=st.dictionaries(option_keys, json_values, max_size=6))
def test_arbitrary_user_options_never_reach_the_script_unvalidated(groups, user_options):
    attempt("api", groups, user_options=user_options)


form_keys = st.one_of(st.builds(lambda f, p: f"{f}@{p}", st.sampled_from(USER_FIELDS),
                                st.sampled_from(["gpu-1", "cpu", "envs"]) | nasty_text),
                      st.just("profile"), nasty_text)


@settings(max_examples=800, **SETTINGS)
@given(groups=groups_st, formdata=st.dictionaries(form_keys, st.lists(nasty_text, max_size=3), max_size=7))
def test_arbitrary_form_posts_never_reach_the_script_unvalidated(groups, formdata):
    attempt("form", groups, formdata=formdata)


@st.composite
def near_valid(draw):
    """A valid request for one profile, then one field bent a little (or not at all)."""
    groups = draw(groups_st)
    name = draw(st.sampled_from(sorted(ALLOWED[groups])))
    allowed = ALLOWED[groups][name]
    options = {"profile": name,
               "cpus": draw(st.integers(*allowed["cpus"])),
               "memory_gb": draw(st.integers(*allowed["memory"])),
               "hours": draw(st.integers(*allowed["hours"]))}
    gpus = draw(st.integers(*allowed["gpus"]))
    if gpus:
        options.update(gpus=gpus, gpu_type=draw(st.sampled_from(sorted(allowed["gpu_types"]))))
    if allowed["envs"] != ("",):
        options["notebook_env"] = draw(st.sampled_from(sorted(allowed["envs"])))
    as_text = draw(st.booleans())  # the form sends strings
    options = {k: str(v) if as_text else v for k, v in options.items()}
    key = draw(st.sampled_from(sorted(options)))
    value = options[key]
    bent = draw(st.sampled_from([
        value, f" {value} ", f"{value}\n", f"{value}\n#SBATCH --uid=0", f"{value};id", f"{value} ", str(value).upper(),
        f"0{value}", f"{value}.0", f"{value}\u0663", [value], {"value": value}, True, None, "",
        -1, 0, 10**6, 10**30, 2.0, "1e3", "0x10", "-0", "+1", str(value) * 3]))
    options[key] = bent
    if draw(st.booleans()) and draw(st.booleans()):
        options[draw(st.sampled_from(["cmd", "options", "keepvars", "homedir", "req_qos"]))] = "/bin/sh -c id"
    return groups, options


@settings(max_examples=1200, **SETTINGS)
@given(case=near_valid())
def test_near_valid_requests_are_accepted_only_with_allowed_values(case):
    groups, options = case
    attempt("near-valid", groups, user_options=options)


def test_counts(capsys):
    """Reports what the fuzz tried (the figures in docs/RELIABILITY.md); checks each was decided."""
    kinds = ("api", "form", "near-valid")
    if not all(TALLY[f"{k}:tried"] for k in kinds):
        pytest.skip("run the whole module to count the attack cases")
    for kind in kinds:
        assert TALLY[f"{kind}:tried"] == TALLY[f"{kind}:refused"] + TALLY[f"{kind}:accepted"]
    assert TALLY["near-valid:accepted"] > 0 and TALLY["near-valid:refused"] > 0
    total = {s: sum(TALLY[f"{k}:{s}"] for k in kinds) for s in ("tried", "refused", "accepted")}
    line = ", ".join(f"{k}: {TALLY[k + ':tried']} tried / {TALLY[k + ':refused']} refused / "
                     f"{TALLY[k + ':accepted']} accepted" for k in kinds)
    with capsys.disabled():
        print(f"\nspawn-form attack cases: {line}; total {total}")
