"""Notebook environments: how long `aif images build --format venv` takes for the default spec.

Reference, measured in the same run: a bare `/usr/bin/python3 -m venv` (with pip) in the same
folder tree: the floor of any venv build. Figures: the layered build of the default spec on the
project venv (what CI does), a repeat build of the unchanged spec (cache hit), and the pip
dry-run resolution alone (`aif images check`). Prints JSON.

    .venv/bin/python perf/images_build.py [--rounds 2]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aifactory.images.build import SYSTEM_PYTHON, build_venv, resolve
from aifactory.images.spec import load_spec


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(rounds):
    spec = load_spec()
    bare, layered, cached, resolution = [], [], [], []
    for _ in range(rounds):
        root = Path(tempfile.mkdtemp(prefix="aif-perf-envs-", dir="/var/tmp"))
        try:
            bare.append(timed(lambda: subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(root / "bare")], check=True)))
            resolution.append(timed(lambda: resolve(spec, base=sys.prefix)))
            layered.append(timed(lambda: build_venv(spec, root, base=sys.prefix, log=lambda _: None)))
            cached.append(timed(lambda: build_venv(spec, root, base=sys.prefix, log=lambda _: None)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    reference = statistics.median(bare)
    figures = {"bare_venv_s": reference, "resolve_s": statistics.median(resolution),
               "layered_build_s": statistics.median(layered), "cached_build_s": statistics.median(cached)}
    print(json.dumps({
        "spec": spec.tag, "rounds": rounds, **{k: round(v, 4) for k, v in figures.items()},
        "layered_build_vs_bare_venv": round(figures["layered_build_s"] / reference, 2),
        "cached_build_vs_bare_venv": round(figures["cached_build_s"] / reference, 5),
    }, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    main(parser.parse_args().rounds)
