"""`pip install .` (not only editable) yields the aifactory namespace, its data and the `aif` entry."""

import subprocess
import sys
import zipfile


def test_wheel_holds_the_namespace_and_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("aifactory_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("aifactory/hub/cli.py", "aifactory/hub/platform/launcher.py",
                   "aifactory/hub/platform/jupyterhub_config.py", "aifactory/hub/spawner/templates/batch_script.sh",
                   "aifactory/hub/spawner/templates/spawn_form.html", "aifactory/hub/workshops/templates/trainer.html",
                   "aifactory/hub/serving/templates/home.html",
                   "aifactory/benchmarks/__init__.py", "aifactory/extensions/__init__.py",
                   "aifactory/images/__init__.py", "aifactory/hub/config/aif_config.example.py"):
        assert module in names, f"{module} missing from the wheel"
    assert not [n for n in names if n.split("/")[0] in ("hub", "benchmarks", "extensions", "images", "tests")], \
        "a generic top-level package would land in site-packages"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "aif = aifactory.hub.cli:main" in text
    assert "aif-slurm = aifactory.hub.spawner:AIFSlurmSpawner" in text


def test_installed_wheel_runs(tmp_path):
    """Installed into a bare target directory, the package imports and `aif --help` lists the commands."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("aifactory_lab-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import aifactory.hub.cli as cli; assert cli.__file__.startswith(sys.argv[1]), cli.__file__;"
        "sys.argv = ['aif', '--help']; cli.main()"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("up", "status", "config", "bench", "compare", "cluster"):
        assert command in result.stdout
