"""The lock (lock/): the venv is exactly the lock, the lock answers pyproject, specs follow the lock.

None of these asks a package index anything: what PyPI serves today cannot change their outcome.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from aifactory.images.spec import load_spec, shipped_specs

ROOT = Path(__file__).resolve().parent.parent
LOCKFILE = ROOT / "lock" / "lockfile.py"


@pytest.fixture(scope="module")
def lockfile():
    """lock/lockfile.py as a module (it is a standalone script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lockfile", LOCKFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_lockfile(*args, root=ROOT, python=sys.executable, env=None):
    return subprocess.run([python, str(root / "lock" / "lockfile.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def project_copy(tmp_path, edit_pyproject=None, lock_text=None):
    """pyproject.toml and lock/ in a folder of their own, edited, so a test can break them safely."""
    (tmp_path / "lock").mkdir()
    for name in ("lockfile.py", "constraints.txt", "requirements.txt"):
        shutil.copy(ROOT / "lock" / name, tmp_path / "lock" / name)
    text = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(edit_pyproject(text) if edit_pyproject else text)
    if lock_text is not None:
        (tmp_path / "lock" / "requirements.txt").write_text(lock_text)
    return tmp_path


def test_the_committed_lock_is_up_to_date_with_pyproject():
    done = run_lockfile("check")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_the_venv_holds_exactly_the_locked_versions(lockfile):
    pins = lockfile.read_pins()
    # the venv's own site-packages: once setuptools is imported in this process (torch.compile
    # does), its vendored copies (setuptools/_vendor: zipp, jaraco, ...) are on sys.path too
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {lockfile.canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=site)}
    assert installed.pop("aifactory-lab") == metadata.version("aifactory-lab")
    assert installed == pins
    assert run_lockfile("verify").returncode == 0


def test_torch_is_the_cpu_build_and_no_cuda_package_is_locked(lockfile):
    import torch

    assert torch.version.cuda is None
    pins = lockfile.read_pins()
    assert pins["torch"].endswith("+cpu")
    # nvidia-ml-py is NVML's Python binding (energy readings), not a CUDA runtime
    assert [name for name in pins if name.startswith("nvidia-") and name != "nvidia-ml-py"] == []


def test_security_floors_hold_in_the_lock(lockfile):
    from packaging.version import Version

    pins = lockfile.read_pins()
    assert Version(pins["jupyterhub"]) >= Version("5.5.1")
    assert Version(pins["mlflow"]) >= Version("3.13")


@pytest.mark.parametrize("name", shipped_specs())
def test_image_specs_pin_exactly_what_the_lock_pins(name, lockfile):
    pins = lockfile.read_pins()
    spec = load_spec(name)
    differ = {pkg: (version, pins.get(pkg)) for pkg, version in spec.packages.items()
              if lockfile.public_version(pins.get(pkg, "")) != version}
    # every spec package is a platform package: the session runs what the hub was tested with
    assert differ == {}, f"{name}: spec pin vs lock (run `make lock`): {differ}"


def test_check_names_a_dependency_the_lock_lacks(tmp_path):
    root = project_copy(tmp_path, lambda text: text.replace('"rich>=13",', '"rich>=13",\n    "left-pad-aif>=1",'))
    done = run_lockfile("check", root=root)
    assert done.returncode == 1
    assert "left-pad-aif>=1 (dependencies) is not in the lock" in done.stderr and "make lock" in done.stderr


def test_check_names_a_requirement_the_locked_version_fails(tmp_path):
    root = project_copy(tmp_path, lambda text: text.replace('"numpy>=1.26"', '"numpy>=99"'))
    done = run_lockfile("check", root=root)
    assert done.returncode == 1 and "numpy>=99 (dependencies) but the lock has numpy==" in done.stderr


def test_check_refuses_a_lock_written_for_other_inputs(tmp_path):
    # still satisfied, but the ranges moved: the lock no longer says what `make lock` would write
    root = project_copy(tmp_path, lambda text: text.replace('"numpy>=1.26"', '"numpy>=1.27"'))
    done = run_lockfile("check", root=root)
    assert done.returncode == 1
    assert "out of date with pyproject.toml" in done.stderr and "run `make lock`" in done.stderr


def test_install_names_a_locked_package_the_index_does_not_serve(tmp_path):
    lock = "# aif-lock-input: sha256=" + "0" * 64 + "\naif-never-published==9.9.9 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    root = project_copy(tmp_path, lock_text=lock)
    empty = tmp_path / "index"
    empty.mkdir()
    done = run_lockfile("install", "--dry-run", "--no-index", f"--find-links={empty}", root=root)
    assert done.returncode == 1
    assert "names aif-never-published==9.9.9, which the package index does not serve" in done.stderr
    assert "make lock" in done.stderr


def test_lock_without_a_resolver_says_how_to_get_one(tmp_path):
    without_uv = "\n".join(line for line in (ROOT / "lock" / "requirements.txt").read_text().split("\n")
                           if not line.startswith("uv=="))
    root = project_copy(tmp_path, lock_text=without_uv)
    python = shutil.which("python3", path="/usr/bin")
    assert not Path("/usr/bin/uv").exists()
    done = run_lockfile("compile", root=root, python=python, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "uv not found" in done.stderr and "make install" in done.stderr


def test_spec_pins_follow_a_new_lock_and_the_version_moves_on(tmp_path, lockfile):
    spec = tmp_path / "env.yaml"
    spec.write_text('name: env\nversion: "2020.01.3"\npackages:\n  # models\n  torch: "1.0.0"  # CUDA build\n'
                    '  not-locked: "1.2.3"\nkernel:\n  name: k\n')
    changes = lockfile.sync_specs({"torch": "2.13.0+cpu"}, specs_dir=tmp_path)
    assert changes == {"env.yaml": ["torch 1.0.0 -> 2.13.0"]}
    text = spec.read_text()
    assert '  # models\n  torch: "2.13.0"  # CUDA build\n  not-locked: "1.2.3"\n' in text
    assert 'version: "2020.01.3"' not in text and 'name: k' in text


def test_the_proxy_is_the_version_package_lock_names():
    package = json.loads((ROOT / "lock" / "package.json").read_text())
    wanted = package["dependencies"]["configurable-http-proxy"]
    assert wanted[0].isdigit(), f"configurable-http-proxy must be pinned exactly, not {wanted!r}"
    locked = json.loads((ROOT / "lock" / "package-lock.json").read_text())["packages"]
    assert locked["node_modules/configurable-http-proxy"]["version"] == wanted
    installed = Path(sys.prefix) / "node" / "node_modules" / "configurable-http-proxy" / "package.json"
    assert json.loads(installed.read_text())["version"] == wanted
