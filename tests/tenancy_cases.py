"""The filesystem attack cases run from inside user B's session, shared by the embedded default
(test_tenancy.py) and the Slurm mini-cluster (test_tenancy_slurm.py)."""

import json
import os


def state_paths(platform):
    """What B must not open: the platform's state, by the part it is."""
    state = platform.state
    rt = platform.runtime
    sqlite = rt["mlflow"]["backend_store_uri"].removeprefix("sqlite:///")
    return {
        "read the MLflow database": ("read", sqlite),
        "read MLflow's auth database": ("read", rt["mlflow"]["auth_db_uri"].removeprefix("sqlite:///")),
        "list the MLflow store folder (databases, artifacts)": ("list", os.path.dirname(sqlite)),
        "read the hub database": ("read", str(state / "hub" / "jupyterhub.sqlite")),
        "read the hub log": ("read", str(state / "logs" / "hub.log")),
        "list the logs": ("list", str(state / "logs")),
        "read the cookie secret": ("read", str(state / "secrets" / "cookie_secret")),
        "read the admin password": ("read", str(platform.admin_password_file)),
        "read runtime.json (service token)": ("read", str(state / "runtime.json")),
        "read the users file": ("read", str(state / "users.json")),
        "list the state directory": ("list", str(state)),
        "write into the state directory": ("write", str(state / "planted.txt")),
    }


ATTACK = """
import json, os, signal
results = {}
def attempt(case, action, target):
    try:
        if action == "read":
            open(target, "rb").read(1)
        elif action == "list":
            os.listdir(target)
        elif action == "write":
            open(target, "w").write("planted")
        elif action == "signal":
            os.kill(int(target), signal.SIGTERM)
        results[case] = "ALLOWED"
    except PermissionError as err:
        results[case] = "refused: " + os.strerror(err.errno)
    except OSError as err:
        results[case] = "other: " + repr(err)
for case, (action, target) in CASES.items():
    attempt(case, action, target)
print(json.dumps(results))
"""


def home_cases(home, own_file, server_pid):
    """What B must not do to A's home and A's server process."""
    return {
        "read A's file": ("read", f"{home}/{own_file}"),
        "list A's home": ("list", home),
        "write into A's home": ("write", f"{home}/planted.txt"),
        "signal A's server process": ("signal", str(server_pid)),
    }


def assert_all_refused(in_b_session, cases):
    """Run every case in B's kernel (`in_b_session(code)` -> its stdout); each must be refused by the OS."""
    for action, path in cases.values():  # each target exists: a refusal is not a missing file
        assert action in ("write", "signal") or os.path.exists(path), path
    results = json.loads(in_b_session(f"CASES = {cases!r}\n{ATTACK}"))
    assert set(results) == set(cases)
    allowed = {case: r for case, r in results.items() if not r.startswith("refused")}
    assert not allowed, allowed
    planted = [path for action, path in cases.values() if action == "write" and os.path.exists(path)]
    assert not planted, planted
