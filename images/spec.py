"""The environment spec: one YAML file per notebook environment, checked before anything is built.

A spec names the environment and its version, the Python it runs on, the CUDA base image, the
pinned packages (every one `==`), the Jupyter kernel and the MLflow client settings. The Docker,
Apptainer and venv formats are all produced from it, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
#: what a session needs inside every environment, whatever else the spec holds
REQUIRED_PACKAGES = ("jupyterhub", "batchspawner", "jupyterlab", "ipykernel")
TOP_KEYS = {"name", "version", "display_name", "description", "python", "cuda_base", "packages", "image",
            "kernel", "mlflow"}
DEFAULT_SPEC = "pytorch-onnx"


class SpecError(ValueError):
    """A spec is wrong; the message names the file and the field and says what was expected."""

    def __init__(self, source, field_name, message):
        super().__init__(f"{source}: {field_name}: {message}")
        self.source, self.field = source, field_name


@dataclass(frozen=True)
class KernelSpec:
    name: str = "aifactory"
    display_name: str = "Python 3 (AI Factory)"


@dataclass(frozen=True)
class MlflowClientSpec:
    async_logging: bool = True
    async_buffer_seconds: int = 1
    disable_telemetry: bool = True

    def env(self):
        env = {"MLFLOW_DISABLE_TELEMETRY": "true" if self.disable_telemetry else "false"}
        if self.async_logging:
            env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
            env["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = str(self.async_buffer_seconds)
        return env


@dataclass(frozen=True)
class ImageSpec:
    pip_extra_index_urls: tuple = ()
    apt_packages: tuple = ()


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    version: str
    python: str
    cuda_base: str
    packages: dict  # canonical name -> exact version
    display_name: str = ""
    description: str = ""
    image: ImageSpec = field(default_factory=ImageSpec)
    kernel: KernelSpec = field(default_factory=KernelSpec)
    mlflow: MlflowClientSpec = field(default_factory=MlflowClientSpec)
    source: str = "<spec>"

    @property
    def tag(self):
        return f"{self.name}:{self.version}"

    def requirements(self):
        """Pinned requirement lines, sorted: the same spec always gives the same text."""
        return [f"{name}=={version}" for name, version in sorted(self.packages.items())]

    def to_dict(self):
        data = asdict(self)
        data.pop("source")
        return data

    @property
    def digest(self):
        """sha256 of the spec's content (not of its file's comments or key order)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def session_env(self):
        """Variables every session of this environment gets (the benchmark fingerprint reads them)."""
        return {
            "AIF_ENVIRONMENT": self.name,
            "AIF_ENVIRONMENT_VERSION": self.version,
            "AIF_ENVIRONMENT_DIGEST": self.digest[:16],
            **self.mlflow.env(),
        }


def spec_path(name_or_path):
    """A spec file: a path, or the name of a spec shipped in aifactory.images/specs."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = resources.files("aifactory.images") / "specs" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise SpecError(name_or_path, "spec", f"no such file and no shipped spec of that name; shipped: "
                        f"{', '.join(shipped_specs())}")
    return Path(str(shipped))


def shipped_specs():
    folder = resources.files("aifactory.images") / "specs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path=DEFAULT_SPEC, hub_jupyterhub=None):
    path = spec_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SpecError(str(path), "spec", f"cannot be read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise SpecError(str(path), "spec", f"is not valid YAML: {err}") from err
    return parse_spec(data, str(path), hub_jupyterhub=hub_jupyterhub)


def parse_spec(data, source="<spec>", hub_jupyterhub=None):
    """Check a spec's fields (statically: no network, nothing built) and return it."""
    if not isinstance(data, dict):
        raise SpecError(source, "spec", "expected a mapping of fields at the top level")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise SpecError(source, unknown[0], f"unknown field; expected some of {sorted(TOP_KEYS)}")
    for key in ("name", "version", "python", "cuda_base", "packages"):
        if key not in data:
            raise SpecError(source, key, "missing (required)")
    name, version = str(data["name"]), str(data["version"])
    if not NAME.match(name):
        raise SpecError(source, "name", f"{name!r} must be lowercase letters, digits and '-' (max 40)")
    _check_version(source, "version", version)
    python = str(data["python"])
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise SpecError(source, "python", f"{python!r}: expected a major.minor version such as '3.11'")
    if not IMAGE_REF.match(str(data["cuda_base"])):
        raise SpecError(source, "cuda_base", f"{data['cuda_base']!r} is not an image reference")
    spec = EnvironmentSpec(
        name=name, version=version, python=python, cuda_base=str(data["cuda_base"]),
        packages=_packages(source, data["packages"]),
        display_name=str(data.get("display_name") or name), description=str(data.get("description") or ""),
        image=_section(source, "image", ImageSpec, data.get("image"), tuples=True),
        kernel=_section(source, "kernel", KernelSpec, data.get("kernel")),
        mlflow=_section(source, "mlflow", MlflowClientSpec, data.get("mlflow")),
        source=source,
    )
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", spec.kernel.name):
        raise SpecError(source, "kernel.name", f"{spec.kernel.name!r}: lowercase letters, digits, '-', '_', '.'")
    _check_hub_compatible(spec, hub_jupyterhub or _installed("jupyterhub"))
    return spec


def _packages(source, packages):
    if not isinstance(packages, dict) or not packages:
        raise SpecError(source, "packages", "expected a mapping of package name to pinned version")
    pins, spelled = {}, {}
    for raw_name, raw_version in packages.items():
        where = f"packages.{raw_name}"
        if not isinstance(raw_name, str) or not PACKAGE.match(raw_name):
            raise SpecError(source, where, "not a valid package name")
        version = str(raw_version).strip() if raw_version is not None else ""
        if version.startswith("=="):
            version = version[2:]
        if not version or any(c in version for c in "<>=!~*, "):
            raise SpecError(source, where, f"{raw_version!r} is not pinned: give one exact version, e.g. '1.2.3'")
        _check_version(source, where, version)
        name = canonicalize_name(raw_name)
        if name in pins:
            raise SpecError(source, where, f"conflicting pins: also listed as {spelled[name]!r} "
                            f"({pins[name]} vs {version}); list each package once")
        pins[name], spelled[name] = version, raw_name
    missing = [p for p in REQUIRED_PACKAGES if p not in pins]
    if missing:
        raise SpecError(source, "packages", f"missing {', '.join(missing)}: every session runs "
                        "jupyterhub-singleuser through batchspawner with JupyterLab and a kernel")
    return pins


def _section(source, key, cls, value, tuples=False):
    if value is None:
        return cls()
    known = set(cls.__dataclass_fields__)
    if not isinstance(value, dict) or set(value) - known:
        extra = sorted(set(value) - known) if isinstance(value, dict) else value
        raise SpecError(source, key, f"unexpected {extra!r}; expected a mapping with keys from {sorted(known)}")
    for name, item in value.items():
        default = cls.__dataclass_fields__[name].default
        expected = tuple if tuples else type(default)
        if tuples and not (isinstance(item, list) and all(isinstance(i, str) for i in item)):
            raise SpecError(source, f"{key}.{name}", f"expected a list of strings, got {item!r}")
        if not tuples and type(item) is not expected:
            raise SpecError(source, f"{key}.{name}", f"expected {expected.__name__}, got {item!r}")
    return cls(**{k: tuple(v) if tuples else v for k, v in value.items()})


def _check_version(source, where, text):
    try:
        Version(text)
    except InvalidVersion as err:
        raise SpecError(source, where, f"{text!r} is not a version (PEP 440)") from err


def _check_hub_compatible(spec, hub_version):
    """jupyterhub-singleuser talks to the hub's API: keep the same major version as the hub."""
    if not hub_version:
        return
    pinned = Version(spec.packages["jupyterhub"])
    if pinned.major != Version(hub_version).major:
        raise SpecError(spec.source, "packages.jupyterhub", f"{pinned} is not compatible with the hub's "
                        f"jupyterhub {hub_version}: pin the same major version ({Version(hub_version).major}.x)")


def _installed(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
