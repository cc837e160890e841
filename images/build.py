"""Build an environment from its spec: a venv (any machine), or a Docker / Apptainer image.

Before anything is built, pip's resolver checks the spec against the configured indexes
(`pip install --dry-run --report`), so an unknown package or conflicting pins fail with pip's
explanation and nothing is left on disk.

A venv can be *layered* on a base venv of the same Python (`base=`): the base's site-packages are
added after the env's own, and pip installs into the env only what the base does not already
satisfy at the pinned version. That keeps a CI build of the default spec to seconds instead of
reinstalling torch; a site build without a base installs everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .render import MANIFEST, manifest_text, write_rendered
from .spec import EnvironmentSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
LAYER_PTH = "_aif_base_layer.pth"


class BuildError(RuntimeError):
    """A build could not be done; the message says which step and why."""


class EngineMissing(BuildError):
    """The Docker or Apptainer engine this format needs is not available here."""


# ---- resolution (before anything is built) -------------------------------------------------------
def resolve(spec: EnvironmentSpec, base=None, timeout=900):
    """What pip would install for the spec (on top of `base`, a venv path, if given).

    Returns {canonical name: version} of the packages to install; raises BuildError with pip's
    own explanation when the spec cannot be satisfied.
    """
    python = str(Path(base) / "bin" / "python") if base else sys.executable
    _check_python(spec, python)
    with tempfile.TemporaryDirectory(prefix="aif-resolve-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(line + "\n" for line in spec.requirements()))
        report_file = Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--report", str(report_file),
                   "--disable-pip-version-check", "--no-input", "-r", str(requirements)]
        if not base:
            command.append("--ignore-installed")
        done = _run(command, timeout, "resolving the spec's packages with pip")
        if done.returncode != 0:
            raise BuildError(f"{spec.source}: packages: {_resolution_failure(done)}")
        report = json.loads(report_file.read_text())
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report.get("install", [])}


def _resolution_failure(done):
    reason = _pip_reason(done.stderr)
    if "No matching distribution found" in reason:
        return f"a package or pinned version is not on the configured indexes:\n{reason}"
    if "ResolutionImpossible" in reason or "conflict" in reason:
        # pip explains which pins clash on stdout ("The conflict is caused by: ...")
        lines = done.stdout.splitlines()
        start = next((i for i, line in enumerate(lines) if "conflict is caused by" in line), None)
        why = ""
        if start is not None:
            end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
            why = "\n".join(lines[start:end])
        return f"conflicting pins, they cannot be installed together:\n{reason}" + (f"\n{why}" if why else "")
    return f"pip cannot resolve them:\n{reason}"


def _pip_reason(stderr):
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING:")]
    return "\n".join(lines[-25:])


def _check_python(spec, python):
    done = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], 30, f"running {python}")
    found = done.stdout.strip()
    if done.returncode != 0 or found != spec.python:
        raise BuildError(f"{spec.source}: python: the spec wants Python {spec.python} but {python} is "
                         f"{found or 'not runnable'}; build with a matching interpreter")


# ---- venv ------------------------------------------------------------------------------------------
def venv_path(spec, root):
    """Where a spec's venv lives: one folder per spec digest, so a changed spec never reuses a stale env."""
    return Path(root) / f"{spec.name}-{spec.version}-{spec.digest[:12]}"


def build_venv(spec: EnvironmentSpec, root, base=None, python=SYSTEM_PYTHON, aifactory_source=None, log=print):
    """Build (or reuse) the spec's venv under `root`; return its path.

    Reused as is when a complete build of the same spec digest (and base) is already there.
    """
    target = venv_path(spec, root)
    base = Path(base).resolve() if base else None
    if _up_to_date(target, spec, base):
        log(f"{target}: up to date (spec digest {spec.digest[:12]})")
        return target
    to_install = resolve(spec, base)  # fails before anything is created
    _check_python(spec, python)
    if target.exists():
        shutil.rmtree(target)  # an interrupted build (no manifest): start over
    Path(root).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # job users must reach the env on the shared filesystem
    try:
        _create_venv(target, python, base, log)
        if to_install:
            log(f"installing {len(to_install)} packages: {', '.join(sorted(to_install))}")
            _pip(target, ["-r", "/dev/stdin"], "installing the spec's packages", stdin="\n".join(spec.requirements()))
        _install_aifactory(target, base, aifactory_source, log)
        if base:
            _write_entry_points(target, base)
        _install_kernel(target, spec)
        versions = _installed_versions(target, spec)
        _make_readable(target)
        extra = {"base": str(base) if base else None}
        text = json.dumps({**json.loads(manifest_text(spec, versions)), **extra}, indent=2, sort_keys=True)
        (target / MANIFEST).write_text(text + "\n")  # written last: marks the build complete
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log(f"{target}: built")
    return target


def _up_to_date(target, spec, base):
    try:
        built = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return built.get("digest") == spec.digest and built.get("base") == (str(base) if base else None)


def _create_venv(target, python, base, log):
    log(f"creating {target} with {python}")
    # layered: pip comes from the base (ensurepip is most of a bare venv's creation time)
    done = _run([python, "-m", "venv", *(["--without-pip"] if base else []), str(target)], 300, "creating the venv")
    if done.returncode != 0:
        raise BuildError(f"creating the venv {target} failed:\n{done.stderr[-2000:]}")
    if base:
        base_site = _site_packages(base)
        # addsitedir (not a plain path line) so the base's own .pth files (editable installs) apply
        (_site_packages(target) / LAYER_PTH).write_text(f"import site; site.addsitedir({str(base_site)!r})\n")


def _site_packages(venv):
    found = sorted(Path(venv).glob("lib/python3*/site-packages"))
    if not found:
        raise BuildError(f"{venv} has no lib/python3*/site-packages: not a venv")
    return found[0]


def _pip(target, args, what, stdin=None):
    command = [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--quiet", *args]
    done = _run(command, 1800, what, stdin=stdin)
    if done.returncode != 0:
        raise BuildError(f"{what} failed:\n{_pip_reason(done.stderr)}")


def _install_aifactory(target, base, source, log):
    """The aifactory extensions, without dependencies: those are the spec's pins."""
    if base and not source and _runs(target, "import aifactory.extensions"):
        return  # the base layer provides them
    source = source or PROJECT_ROOT
    if not (Path(source) / "pyproject.toml").exists() and not str(source).endswith(".whl"):
        raise BuildError(f"aifactory source {source}: expected the project folder or a wheel")
    log(f"installing aifactory from {source}")
    _pip(target, ["--no-deps", str(source)], "installing the aifactory package")


def _write_entry_points(target, base):
    """Console scripts of the base's packages, run by this env's Python (the base's own use its Python)."""
    from importlib import metadata

    bin_dir = target / "bin"
    python = bin_dir / "python"
    for dist in metadata.distributions(path=[str(_site_packages(base))]):
        for entry in dist.entry_points.select(group="console_scripts"):
            script = bin_dir / entry.name
            if script.exists() or "/" in entry.name:
                continue
            module, _, attr = entry.value.partition(":")
            call = attr.strip() or "main"
            script.write_text(f"#!{python}\nimport sys\nfrom {module.strip()} import {call.split('.')[0]}\n"
                              f"if __name__ == '__main__':\n    sys.exit({call}())\n")
            script.chmod(0o755)


def _install_kernel(target, spec):
    command = [str(target / "bin" / "python"), "-m", "ipykernel", "install", "--prefix", str(target),
               "--name", spec.kernel.name, "--display-name", spec.kernel.display_name]
    done = _run(command, 300, "installing the Jupyter kernel")
    if done.returncode != 0:
        raise BuildError(f"installing the kernel {spec.kernel.name!r} failed:\n{done.stderr[-2000:]}")


def _installed_versions(target, spec):
    """The spec's packages as the built env imports them (its own first, then the base's)."""
    code = ("import json, sys; from importlib import metadata as m\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    done = _run([str(target / "bin" / "python"), "-c", code, *spec.packages], 120, "reading installed versions")
    if done.returncode != 0:
        raise BuildError(f"the built env cannot report its packages:\n{done.stderr[-2000:]}")
    versions = json.loads(done.stdout)
    wrong = {n: v for n, v in versions.items() if v.split("+")[0] != spec.packages[n]}
    if wrong:
        raise BuildError(f"{spec.source}: the built env has {wrong} instead of the pinned versions")
    return versions


def _runs(target, code):
    return _run([str(target / "bin" / "python"), "-c", code], 120, "probing the env").returncode == 0


def _make_readable(target):
    # sessions run as the users who log in, not as the builder
    for folder, dirs, files in os.walk(target):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(mode | 0o044 | (0o011 if mode & 0o100 or path.is_dir() else 0))


def _run(command, timeout, what, stdin=None):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=stdin)
    except FileNotFoundError as err:
        raise BuildError(f"{what}: {command[0]} not found") from err
    except subprocess.TimeoutExpired as err:
        raise BuildError(f"{what}: no answer within {timeout}s") from err


# ---- images ----------------------------------------------------------------------------------------
def docker_engine():
    """The Docker engine's version; EngineMissing when only the client (or nothing) is installed."""
    if not shutil.which("docker"):
        raise EngineMissing("docker: the Docker client is not installed (format 'docker' needs a Docker engine)")
    done = _run(["docker", "version", "--format", "{{.Server.Version}}"], 20, "asking the Docker engine")
    if done.returncode != 0 or not done.stdout.strip():
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise EngineMissing(f"docker: the client is installed but no Docker engine answers ({reason}); "
                            "build on a machine with a running Docker daemon")
    return done.stdout.strip()


def apptainer_engine():
    for binary in ("apptainer", "singularity"):
        if shutil.which(binary):
            return binary
    raise EngineMissing("apptainer: neither 'apptainer' nor 'singularity' is installed (format 'apptainer' "
                        "needs Apptainer; on a site build on a login node or with `apptainer build --fakeroot`)")


def build_image(spec, fmt, out_dir, aifactory_wheel=None, log=print):
    """Build the spec as a Docker image (tag name:version) or an Apptainer .sif under out_dir."""
    engine = docker_engine() if fmt == "docker" else apptainer_engine()  # fail before anything is built
    resolve(spec)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="aif-image-") as tmp:
        context = Path(tmp)
        write_rendered(spec, context)
        _wheel_into(context / "wheels", aifactory_wheel)
        if fmt == "docker":
            command = ["docker", "build", "-t", spec.tag, "-f", str(context / "Dockerfile"), str(context)]
            result = spec.tag
        else:
            out.mkdir(parents=True, exist_ok=True)
            result = out / f"{spec.name}-{spec.version}.sif"
            command = [engine, "build", "--force", str(result), f"{spec.name}.def"]
        log(" ".join(command))
        done = subprocess.run(command, cwd=context)
        if done.returncode != 0:
            if fmt == "apptainer" and Path(result).exists():
                Path(result).unlink()
            raise BuildError(f"{fmt} build of {spec.tag} failed (exit {done.returncode}); see its output above")
        if fmt == "apptainer":  # the hub finds the image by this manifest (registry.spawner_environments)
            shutil.copy(context / MANIFEST, Path(result).with_suffix(".json"))
    return result


def _wheel_into(folder, wheel):
    folder.mkdir()
    if wheel:
        shutil.copy(wheel, folder)
        return
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder), str(PROJECT_ROOT)],
                600, "building the aifactory wheel")
    if done.returncode != 0:
        raise BuildError(f"building the aifactory wheel from {PROJECT_ROOT} failed:\n{done.stderr[-2000:]}")


def default_base():
    """The venv this command runs from, usable as a base layer (same Python as /usr/bin/python3?)."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


__all__ = ["BuildError", "EngineMissing", "build_image", "build_venv", "resolve", "venv_path",
           "docker_engine", "apptainer_engine"]
