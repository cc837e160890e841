"""Render a spec as a Dockerfile and an Apptainer definition, byte-identical for the same spec."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from .spec import EnvironmentSpec

#: where the environment lives inside an image
IMAGE_PREFIX = "/opt/aif-env"
MANIFEST = "aif-environment.json"

_templates = Environment(
    loader=PackageLoader("aifactory.images", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=False,
)


def manifest(spec: EnvironmentSpec, packages=None):
    """What an environment says about itself: read by the spawner, the docs and the fingerprint."""
    return {
        "name": spec.name,
        "version": spec.version,
        "display_name": spec.display_name,
        "description": spec.description,
        "digest": spec.digest,
        "python": spec.python,
        "cuda_base": spec.cuda_base,
        "packages": dict(sorted((packages or spec.packages).items())),
        "kernel": spec.kernel.name,
        "env": spec.session_env(),
    }


def manifest_text(spec, packages=None):
    return json.dumps(manifest(spec, packages), indent=2, sort_keys=True) + "\n"


def _context(spec: EnvironmentSpec, spec_file):
    python = f"python{spec.python}"
    pip = f"{IMAGE_PREFIX}/bin/python -m pip install"
    index = "".join(f" --extra-index-url {shlex.quote(url)}" for url in spec.image.pip_extra_index_urls)
    apt = sorted({python, f"{python}-venv", "ca-certificates", "software-properties-common",
                  *spec.image.apt_packages})
    setup = [
        "apt-get update",
        "apt-get install -y --no-install-recommends software-properties-common",
        # the CUDA bases are Ubuntu: their own Python may not be the spec's
        f"(command -v {python} || add-apt-repository -y ppa:deadsnakes/ppa)",
        "apt-get update",
        f"apt-get install -y --no-install-recommends {' '.join(apt)}",
        "rm -rf /var/lib/apt/lists/*",
    ]
    install = [
        f"{python} -m venv {IMAGE_PREFIX}",
        f"{pip}{index} -r {IMAGE_PREFIX}/requirements.txt",
        # the aifactory extensions; their dependencies are the spec's pins, nothing floating
        f"{pip} --no-deps --no-index --find-links /tmp/wheels aifactory-lab",
        f"{IMAGE_PREFIX}/bin/python -m ipykernel install --prefix {IMAGE_PREFIX} --name {spec.kernel.name}"
        f" --display-name {shlex.quote(spec.kernel.display_name)}",
        "rm -rf /tmp/wheels",
    ]
    labels = [("org.opencontainers.image.title", spec.name), ("org.opencontainers.image.version", spec.version),
              ("eu.aifactory.spec-digest", spec.digest)]
    return {"spec": spec, "spec_file": spec_file, "prefix": IMAGE_PREFIX, "setup": setup, "install": install,
            "env": sorted(spec.session_env().items()), "labels": labels}


def render(spec: EnvironmentSpec):
    """{file name: text} for the build context of both image formats."""
    spec_file = Path(spec.source).name
    context = _context(spec, spec_file)
    return {
        "Dockerfile": _templates.get_template("Dockerfile.j2").render(context),
        f"{spec.name}.def": _templates.get_template("apptainer.def.j2").render(context),
        "requirements.txt": "".join(line + "\n" for line in spec.requirements()),
        MANIFEST: manifest_text(spec),
    }


def write_rendered(spec, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = render(spec)
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]
