#!/usr/bin/env python3
"""The platform's lock: resolve it, check it against pyproject.toml, install from it, verify it.

    lockfile.py compile [UV_ARGS...]   make lock: uv re-resolves lock/requirements.txt, specs follow
    lockfile.py check                  the lock still answers pyproject.toml (exit 1 naming what not)
    lockfile.py install [PIP_ARGS...]  the venv gets exactly the locked versions, hash-checked
    lockfile.py verify                 what is installed equals the lock (the project itself aside)

Runs on the standard library alone (Debian's python3 has no `packaging`), so it can speak before
anything is installed; where pip's vendored `packaging` is importable it also names each
requirement the lock fails. Every failure is one line naming the problem and the command that fixes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "lock" / "requirements.txt"
CONSTRAINTS = ROOT / "lock" / "constraints.txt"
SPECS = ROOT / "images" / "specs"
PROJECT = "aifactory-lab"
#: the extras the platform's own environment installs (`make install`)
EXTRAS = ("torch", "test", "dev")
#: installers the lock pins as well, so that nothing in the venv comes from "whatever is newest"
TOOLING = ("pip", "setuptools", "wheel")
DIGEST_LINE = re.compile(r"^# aif-lock-input: sha256=([0-9a-f]{64})$", re.M)
PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*\\)?$", re.M)
UV_HINT = "uv not found: run `make install` (the lock installs its uv into .venv) or `pip install uv`"


class LockError(SystemExit):
    """One line for the terminal, exit status 1."""

    def __init__(self, message):
        super().__init__(f"lock: {message}")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version):
    """2.13.0+cpu -> 2.13.0: image specs pin the public release, the build tag is the lock's."""
    return version.split("+", 1)[0]


# -- what the lock was made from ------------------------------------------------------------------

def lock_inputs():
    """Everything the resolution depends on, in a canonical form (comments and order aside)."""
    project = tomllib.loads(PYPROJECT.read_text())
    meta = project["project"]
    constraints = [line.split("#", 1)[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return {
        "requires-python": meta.get("requires-python", ""),
        "dependencies": sorted(meta.get("dependencies", [])),
        "extras": {extra: sorted(meta.get("optional-dependencies", {}).get(extra, [])) for extra in EXTRAS},
        "build-system": sorted(project.get("build-system", {}).get("requires", [])),
        "tooling": list(TOOLING),
        "constraints": sorted(line for line in constraints if line),
    }


def input_digest():
    return hashlib.sha256(json.dumps(lock_inputs(), sort_keys=True).encode()).hexdigest()


def read_pins(path=LOCK):
    """{canonical name: version} of a lock file."""
    if not path.is_file():
        raise LockError(f"{path.relative_to(ROOT)} is missing: run `make lock` and commit lock/")
    return {canonical(name): version for name, version in PIN_LINE.findall(path.read_text())}


# -- check ----------------------------------------------------------------------------------------

def unmet_requirements(pins):
    """pyproject requirements the locked versions do not satisfy; None without `packaging`."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement
        except ImportError:
            return None
    inputs = lock_inputs()
    wanted = [(req, "dependencies", "") for req in inputs["dependencies"]]
    wanted += [(req, f"extra {extra!r}", extra) for extra, reqs in inputs["extras"].items() for req in reqs]
    unmet = []
    for text, where, extra in wanted:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        have = pins.get(canonical(req.name))
        if have is None:
            unmet.append(f"{req} ({where}) is not in the lock")
        elif not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} ({where}) but the lock has {req.name}=={have}")
    return unmet


def check():
    pins = read_pins()
    unmet = unmet_requirements(pins)
    if unmet:
        raise LockError(f"lock/requirements.txt does not satisfy pyproject.toml: {'; '.join(unmet)}: "
                        "run `make lock` and commit lock/")
    recorded = DIGEST_LINE.search(LOCK.read_text())
    if not recorded or recorded.group(1) != input_digest():
        raise LockError("lock/requirements.txt is out of date with pyproject.toml (its dependencies, extras, "
                        "build requirements or lock/constraints.txt changed since the lock was written): "
                        "run `make lock` and commit lock/")
    print(f"lock: lock/requirements.txt is up to date with pyproject.toml ({len(pins)} packages)")


# -- compile --------------------------------------------------------------------------------------

def find_uv():
    """uv beside this interpreter or on PATH; else the uv the current lock pins, installed hash-checked."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    uv = shutil.which("uv", path=search)
    if uv is None and LOCK.is_file():
        # a lock that no longer installs (pyproject moved on) must still be able to re-lock itself
        pinned = re.search(r"^uv==\S+(?: \\\n(?:\s+--hash=\S+(?: \\)?\n?)+)?", LOCK.read_text(), re.M)
        if pinned:
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
                req.write(pinned.group(0).rstrip("\\\n ") + "\n")
                req.flush()
                if pip_install("--require-hashes", "--no-deps", "-r", req.name).returncode == 0:
                    uv = shutil.which("uv", path=search)
    if uv is None:
        raise LockError(UV_HINT)
    return uv


def compile_lock(uv_args):
    uv = find_uv()
    with tempfile.TemporaryDirectory() as tmp:
        tooling = Path(tmp) / "tooling.in"
        tooling.write_text("\n".join([*TOOLING, *lock_inputs()["build-system"]]) + "\n")
        output = Path(tmp) / "requirements.txt"
        command = [uv, "pip", "compile", "pyproject.toml", str(tooling), *[f"--extra={e}" for e in EXTRAS],
                   f"--constraint={CONSTRAINTS.relative_to(ROOT)}", "--generate-hashes", "--no-header",
                   "--no-annotate", f"--output-file={output}", *uv_args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise LockError(f"uv could not resolve pyproject.toml: {last_error_line(done.stderr)}")
        header = (f"# The platform's lock: every package of `make install`, exact and hash-checked.\n"
                  f"# Written by `make lock` (uv pip compile; lock/lockfile.py); do not edit by hand.\n"
                  f"# aif-lock-input: sha256={input_digest()}\n")
        LOCK.write_text(header + output.read_text())
    pins = read_pins()
    print(f"lock: wrote lock/requirements.txt ({len(pins)} packages)")
    for spec, changed in sync_specs(pins).items():
        print(f"lock: {spec}: {', '.join(changed) if changed else 'pins already equal the lock'}")


def last_error_line(stderr):
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " ".join(lines[-3:]) if lines else "(no message)"


# -- image specs follow the lock ------------------------------------------------------------------

SPEC_PIN = re.compile(r'^(  )([A-Za-z0-9][A-Za-z0-9._-]*): "?(?:==)?([^"\s#]+)"?(.*)$')


def sync_specs(pins, specs_dir=SPECS):
    """Rewrite each image spec's pins to the lock's public versions; comments and order are kept."""
    changes = {}
    for path in sorted(specs_dir.glob("*.yaml")):
        lines, changed, in_packages = path.read_text().splitlines(keepends=True), [], False
        for i, line in enumerate(lines):
            if not line.startswith((" ", "#")):
                in_packages = line.startswith("packages:")
                continue
            match = SPEC_PIN.match(line.rstrip("\n")) if in_packages else None
            if not match or canonical(match.group(2)) not in pins:
                continue
            locked = public_version(pins[canonical(match.group(2))])
            if locked != match.group(3):
                changed.append(f"{match.group(2)} {match.group(3)} -> {locked}")
                lines[i] = f'{match.group(1)}{match.group(2)}: "{locked}"{match.group(4)}\n'
        if changed:
            bump_version(lines)
            path.write_text("".join(lines))
        changes[path.name] = changed
    return changes


SPEC_VERSION = re.compile(r'^version: "(\d{4})\.(\d{2})\.(\d+)"(.*)$')


def bump_version(lines, today=None):
    """Other pins are another environment: the spec's version moves on (YYYY.MM.N, N from 1 each month)."""
    import datetime

    today = today or datetime.date.today()
    for i, line in enumerate(lines):
        match = SPEC_VERSION.match(line.rstrip("\n"))
        if match:
            year, month, n, rest = match.groups()
            same_month = (int(year), int(month)) == (today.year, today.month)
            lines[i] = f'version: "{today:%Y.%m}.{int(n) + 1 if same_month else 1}"{rest}\n'
            return


# -- install and verify ---------------------------------------------------------------------------

MISSING = re.compile(r"No matching distribution found for (\S+)")
HASH_MISMATCH = re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES")


def pip_install(*args):
    command = [sys.executable, "-m", "pip", "install", "--quiet", *args]
    done = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    noise = re.compile(r"^WARNING: Location '.*' is ignored")
    sys.stderr.write("".join(line for line in done.stderr.splitlines(keepends=True) if not noise.match(line)))
    return done


def install(pip_args):
    done = pip_install("--require-hashes", "--no-deps", "-r", str(LOCK), *pip_args)
    if done.returncode != 0:
        missing = MISSING.search(done.stderr)
        if missing:
            raise LockError(f"lock/requirements.txt names {missing.group(1)}, which the package index does not "
                            "serve (removed or yanked upstream, or the index is unreachable): run `make lock` "
                            "to re-resolve, then commit lock/")
        if HASH_MISMATCH.search(done.stderr):
            raise LockError("a downloaded file does not match its hash in lock/requirements.txt (a re-uploaded "
                            "release or a tampered mirror): run `make lock` only if the change upstream is trusted")
        raise LockError(f"pip could not install lock/requirements.txt: {last_error_line(done.stderr)}")
    # the project itself: no dependencies (the lock has them all), built with the locked setuptools
    done = pip_install("--no-deps", "--no-build-isolation", "-e", str(ROOT))
    if done.returncode != 0:
        raise LockError(f"pip could not install the project: {last_error_line(done.stderr)}")
    remove_unlocked()
    verify()


def remove_unlocked():
    """A venv made before a re-lock keeps packages the lock dropped: take them out (a sync, not a merge)."""
    pins = read_pins()
    extra = sorted(name for name in installed() if name not in pins and name != PROJECT)
    if extra:
        print(f"lock: removing packages the lock no longer names: {', '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)


def installed():
    from importlib import metadata

    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def verify():
    pins, have = read_pins(), installed()
    have.pop(PROJECT, None)
    differ = [f"{name} {have.get(name, 'missing')} (lock: {pins.get(name, 'absent')})"
              for name in sorted(set(pins) | set(have)) if have.get(name) != pins.get(name)]
    if differ:
        raise LockError(f"{sys.prefix} differs from lock/requirements.txt: {'; '.join(differ)}: "
                        f"run `make clean install`")
    print(f"lock: {sys.prefix} holds exactly the {len(pins)} locked packages")


def main(argv):
    commands = {"compile": lambda: compile_lock(argv[1:]), "check": check,
                "install": lambda: install(argv[1:]), "verify": verify}
    if not argv or argv[0] not in commands:
        raise SystemExit(__doc__)
    commands[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
