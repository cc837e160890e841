"""aif images: specs are checked, rendered deterministically, resolved before building, built as a venv."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aifactory.images import spawner_environments
from aifactory.images.build import BuildError, EngineMissing, build_venv, docker_engine, venv_path
from aifactory.images.cli import images
from aifactory.images.render import render
from aifactory.images.spec import SpecError, load_spec, parse_spec, shipped_specs, spec_path
from images_fixtures import default_venv  # noqa: F401

SPECS = shipped_specs()


def spec_data(name="pytorch-onnx"):
    return yaml.safe_load(spec_path(name).read_text())


def write_spec(tmp_path, data, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", SPECS)
def test_rendering_is_byte_identical_and_independent_of_key_order(name, tmp_path):
    first = render(load_spec(name))
    data = spec_data(name)
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["packages"] = dict(reversed(list(data["packages"].items())))
    shuffled = render(load_spec(write_spec(tmp_path, reordered, f"{name}.yaml")))
    assert first == render(load_spec(name)) == shuffled


@pytest.mark.parametrize("name", SPECS)
def test_rendered_files_match_the_spec(name):
    spec = load_spec(name)
    files = render(spec)
    dockerfile, definition = files["Dockerfile"], files[f"{name}.def"]
    pins = [f"{pkg}=={version}" for pkg, version in sorted(spec_data(name)["packages"].items())]
    assert files["requirements.txt"].splitlines() == pins
    assert f"FROM {spec.cuda_base}\n" in dockerfile and f"From: {spec.cuda_base}\n" in definition
    for text in (dockerfile, definition):
        assert f"python{spec.python} -m venv" in text
        assert f"--name {spec.kernel.name} " in text and "aifactory-lab" in text
        assert f"AIF_ENVIRONMENT={spec.name}" in text and f"AIF_ENVIRONMENT_VERSION={spec.version}" in text
        assert "MLFLOW_ENABLE_ASYNC_LOGGING=true" in text and "MLFLOW_DISABLE_TELEMETRY=true" in text
        for url in spec.image.pip_extra_index_urls:
            assert f"--extra-index-url {url}" in text
    manifest = json.loads(files["aif-environment.json"])
    assert manifest["packages"] == spec.packages and manifest["digest"] == spec.digest


def test_a_changed_pin_changes_the_digest_and_the_venv_folder(tmp_path):
    data = spec_data()
    data["packages"]["numpy"] = "2.4.5"
    changed = load_spec(write_spec(tmp_path, data))
    default = load_spec()
    assert changed.digest != default.digest
    assert venv_path(changed, tmp_path) != venv_path(default, tmp_path)
    assert "numpy==2.4.5" in render(changed)["requirements.txt"]


def test_cli_render_writes_the_build_context(tmp_path):
    result = CliRunner().invoke(images, ["render", "pytorch-onnx", "-o", str(tmp_path / "ctx")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "ctx").iterdir())
    assert written == ["Dockerfile", "aif-environment.json", "pytorch-onnx.def", "requirements.txt"]
    assert (tmp_path / "ctx" / "Dockerfile").read_text() == render(load_spec())["Dockerfile"]


@pytest.mark.parametrize("change, field, expected", [
    (lambda d: d["packages"].update(torch=">=2.4"), "packages.torch", "not pinned"),
    (lambda d: d["packages"].update(torch=None), "packages.torch", "not pinned"),
    (lambda d: d["packages"].update({"Scikit_Learn": "1.9.1", "scikit-learn": "1.8.0"}), "packages.",
     "conflicting pins"),
    (lambda d: d["packages"].pop("jupyterhub"), "packages", "missing jupyterhub"),
    (lambda d: d["packages"].update(jupyterhub="4.1.6"), "packages.jupyterhub", "not compatible with the hub"),
    (lambda d: d.update(pyhton="3.11"), "pyhton", "unknown field"),
    (lambda d: d.update(python="3"), "python", "major.minor"),
    (lambda d: d.update(name="PyTorch ONNX"), "name", "lowercase"),
    (lambda d: d.pop("cuda_base"), "cuda_base", "missing"),
    (lambda d: d["mlflow"].update(async_logging="yes"), "mlflow.async_logging", "expected bool"),
])
def test_broken_spec_names_file_field_and_expectation(tmp_path, change, field, expected):
    data = spec_data()
    change(data)
    path = write_spec(tmp_path, data, "broken.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}") and expected in message, message
    result = CliRunner().invoke(images, ["render", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and expected in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, expected", [
    ({"aif-no-such-package-0xdeadbeef": "1.0"}, "a package or pinned version is not on the configured indexes"),
    ({"requests": "2.34.2", "urllib3": "1.25.11"}, "conflicting pins"),
])
def test_unresolvable_spec_fails_before_anything_is_built(tmp_path, extra, expected):
    data = spec_data()
    data["packages"].update(extra)
    spec = load_spec(write_spec(tmp_path, data, "unresolvable.yaml"))
    root = tmp_path / "envs"
    with pytest.raises(BuildError) as caught:
        build_venv(spec, root, base=sys.prefix, log=lambda _: None)
    message = str(caught.value)
    assert message.startswith(f"{spec.source}: packages: {expected}"), message
    assert all(name in message for name in extra), message
    assert not root.exists(), "a venv was created although the spec cannot resolve"


def test_docker_and_apptainer_need_their_engine_not_just_a_client(tmp_path):
    try:
        version = docker_engine()
    except EngineMissing as err:
        result = CliRunner().invoke(images, ["build", "--format", "docker"])
        assert result.exit_code == 1 and "docker:" in result.output and "engine" in result.output.lower()
        assert str(err) in result.output
    else:
        assert version  # a daemon answered: the engine is there
    if not (shutil.which("apptainer") or shutil.which("singularity")):
        result = CliRunner().invoke(images, ["build", "--format", "apptainer", "-o", str(tmp_path / "sif")])
        assert result.exit_code == 1 and "apptainer" in result.output and "neither" in result.output
        assert not (tmp_path / "sif").exists()


def run_as(user, argv):
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + argv, capture_output=True, text=True, timeout=300)


def test_default_venv_runs_for_other_users_with_pins_kernel_and_extensions(default_venv):
    spec, path, _ = default_venv
    manifest = json.loads((path / "aif-environment.json").read_text())
    assert manifest["digest"] == spec.digest
    assert {k: v.split("+")[0] for k, v in manifest["packages"].items()} == spec.packages
    kernel = json.loads((path / "share/jupyter/kernels" / spec.kernel.name / "kernel.json").read_text())
    assert kernel["argv"][0] == str(path / "bin" / "python")
    code = ("import sys, torch, onnxruntime, mlflow, aifactory.extensions; "
            "print(sys.prefix, torch.__version__, onnxruntime.__version__, mlflow.__version__)")
    done = run_as("nobody", [str(path / "bin" / "python"), "-c", code])
    assert done.returncode == 0, done.stderr
    prefix, torch_version, ort_version, mlflow_version = done.stdout.split()
    assert prefix == str(path) and torch_version.split("+")[0] == spec.packages["torch"]
    assert (ort_version, mlflow_version) == (spec.packages["onnxruntime"], spec.packages["mlflow"])
    done = run_as("nobody", [str(path / "bin" / "jupyterhub-singleuser"), "--version"])
    assert done.returncode == 0 and done.stdout.strip() == spec.packages["jupyterhub"], done.stderr


def test_second_build_of_the_same_spec_reuses_the_venv(default_venv):
    spec, path, _ = default_venv
    log = []
    stamp = (path / "aif-environment.json").stat().st_mtime_ns
    assert build_venv(spec, path.parent, base=sys.prefix, log=log.append) == path
    assert log == [f"{path}: up to date (spec digest {spec.digest[:12]})"]
    assert (path / "aif-environment.json").stat().st_mtime_ns == stamp


def test_built_venv_is_offered_to_the_spawner(default_venv):
    spec, path, _ = default_venv
    offered = spawner_environments(path.parent)[spec.name]
    assert offered["venv"] == str(path) and spec.version in offered["display_name"]
    assert offered["env"]["AIF_ENVIRONMENT"] == spec.name and offered["env"]["AIF_ENVIRONMENT_VERSION"] == spec.version


def test_check_resolves_the_default_spec_on_the_base_with_nothing_more_to_install():
    result = CliRunner().invoke(images, ["check", "pytorch-onnx", "--base", sys.prefix])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["spec"] == load_spec().tag and report["to_install"] == {}


def test_spec_parse_accepts_double_equals_pins():
    data = spec_data()
    data["packages"]["numpy"] = "==2.4.6"
    assert parse_spec(data).packages["numpy"] == "2.4.6"


def batch_script(environments, notebook_env):
    """The job script our Slurm spawner writes for a session in `notebook_env` (no hub needed)."""
    import asyncio
    from types import SimpleNamespace

    from aifactory.hub.spawner import AIFSlurmSpawner

    user = SimpleNamespace(name="nobody", groups=[], url="/user/nobody/", escaped_name="nobody", id=1)
    hub = SimpleNamespace(url="http://127.0.0.1:8081/hub/", base_url="/hub/", api_url="http://127.0.0.1:8081/hub/api",
                          public_host="")
    spawner = AIFSlurmSpawner(user=user, hub=hub, environments=environments, profiles=[
        {"name": "g", "partition": "gpu", "gpu_types": ["h200"], "min_gpus": 1, "max_gpus": 2,
         "environments": list(environments)}])
    spawner._apply_validated_options({"profile": "g", "gpus": "2", "notebook_env": notebook_env})
    return asyncio.run(spawner._get_batch_script())


def test_job_script_runs_the_server_inside_the_chosen_apptainer_image_with_gpus():
    env = {"AIF_ENVIRONMENT": "pytorch-onnx", "AIF_ENVIRONMENT_VERSION": "2026.11.1"}
    script = batch_script({"pytorch-onnx": {"image": "/gpfs/apps/aif/pytorch-onnx-2026.11.1.sif", "env": env}},
                          "pytorch-onnx")
    assert "#SBATCH --gres=gpu:h200:2\n" in script
    assert "export AIF_ENVIRONMENT=pytorch-onnx\nexport AIF_ENVIRONMENT_VERSION=2026.11.1\n" in script
    command = script.strip().splitlines()[-1]
    assert command.startswith("apptainer exec --nv /gpfs/apps/aif/pytorch-onnx-2026.11.1.sif "
                              "batchspawner-singleuser jupyterhub-singleuser --"), command


def test_job_script_runs_the_server_from_the_chosen_venv(default_venv):
    spec, path, _ = default_venv
    script = batch_script(spawner_environments(path.parent), spec.name)
    assert f'export PATH="{path}/bin:$PATH"\n' in script and f"export AIF_ENVIRONMENT={spec.name}\n" in script
    command = script.strip().splitlines()[-1]
    assert command.startswith(f"{path}/bin/batchspawner-singleuser {path}/bin/jupyterhub-singleuser --"), command
    assert "apptainer" not in command


def test_benchmark_fingerprint_records_the_environment_it_ran_in(default_venv):
    spec, path, _ = default_venv
    code = "import json; from aifactory.benchmarks.fingerprint import collect; print(json.dumps(collect()))"
    env = {**spawner_environments(path.parent)[spec.name]["env"], "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    done = subprocess.run([str(path / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    fingerprint = json.loads(done.stdout.strip().splitlines()[-1])
    assert fingerprint["environment"] == f"{spec.name}:{spec.version}"
    assert fingerprint["environment_digest"] == spec.digest[:16]
    assert {k: v.split("+")[0] for k, v in fingerprint["environment_packages"].items()} == spec.packages
