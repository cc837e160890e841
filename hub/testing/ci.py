"""What a test needs from the machine, and the CI rule: in CI a missing prerequisite fails.

Outside CI (no CI=true) a test that needs root, a Debian package or a browser skips, with a
reason that says how to enable it; in CI a skip would hide that the test never ran.
"""

import os
import shutil

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition, reason):
    """Skip with `reason` outside CI; in CI a missing prerequisite is a failure, not a skip."""
    import pytest  # only tests call this; perf scripts import the other helpers without pytest

    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root():
    require(os.geteuid() == 0, "needs root for the Slurm mini-cluster: run `sudo make test`")


def require_binary(name, package):
    require(shutil.which(name) is not None, f"{name} not found: install Debian's {package} (make sysdeps)")
