"""The default spec's venv, built once and cached between test runs by spec digest."""

import sys
from pathlib import Path

import pytest

from aifactory.images.build import build_venv
from aifactory.images.spec import load_spec

# outside /root and /tmp's per-test dirs: job users must run it, and a later run reuses it
VENV_CACHE = Path("/var/tmp/aif-envs-ci")


@pytest.fixture(scope="session")
def default_venv():
    """(spec, path, build log) of the default spec built as a venv layered on the project's venv."""
    spec = load_spec()
    log = []
    path = build_venv(spec, VENV_CACHE, base=sys.prefix, log=log.append)
    return spec, path, log
