"""An endpoint's record: a private folder per endpoint under the owner's serving folder.

<serving folder>/<name>/ (0700) holds endpoint.json (what was asked, the job, the shares), secret
(the engine's API key, 0600), address.json (host and port, written by the job when the engine
binds) and engine.log (the job's output). The serving folder is ~/.aif/serve, or
$AIF_SERVE_DIR/<user> where an operator keeps them elsewhere; the hub's serve service reads the
same place (it runs as root, like the hub).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...common import envvars
from ...common.errors import AIFError
from ...common.files import replace_private, write_private

NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
ENDPOINT_FILE, SECRET_FILE, ADDRESS_FILE, LOG_FILE = "endpoint.json", "secret", "address.json", "engine.log"


class ServeError(AIFError):
    """An endpoint request was refused, or an endpoint could not be found or reached."""


def check_name(name):
    if not isinstance(name, str) or not NAME.match(name):
        raise ServeError(f"endpoint name {name!r}: use 1-32 lower-case letters, digits and '-', starting with a "
                         "letter (it becomes part of the endpoint's URL)")
    return name


def serving_dir(user):
    """The folder holding `user`'s endpoints."""
    root = envvars.SERVE_DIR.get()
    if root:
        return Path(root) / user
    return Path(pwd.getpwnam(user).pw_dir) / ".aif" / "serve"


def check_text_generation_model(path):
    """The model directory as an absolute Path, if it is a Hugging Face text-generation model."""
    from ...benchmarks.text.hf import TEXT_GENERATION, _check_files, _read_config, architecture_task

    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ServeError(f"model: {path} is not a directory (give a Hugging Face model directory)")
    try:
        config = _read_config(path, "model")
        _check_files(path, path, "model")
    except AIFError as err:
        raise ServeError(str(err)) from None
    architectures = config.get("architectures") or []
    if architecture_task(architectures) != TEXT_GENERATION:
        raise ServeError(f"model: {path} is not a text-generation model (architectures "
                         f"{architectures or '(none)'}); `aif serve` serves causal language models "
                         "(e.g. LlamaForCausalLM)")
    return path


@dataclass
class Endpoint:
    """What endpoint.json keeps."""

    name: str
    owner: str
    model: str
    served_model_name: str
    engine: str
    request: dict
    created: float = field(default_factory=time.time)
    job_id: str = ""
    groups: list = field(default_factory=list)
    stopped: float = 0.0
    mlflow_run_id: str = ""
    #: why it was stopped when not by its owner (the hub's idle stop), e.g. "after 3600 s without requests"
    stop_reason: str = ""

    @property
    def folder(self):
        return serving_dir(self.owner) / self.name

    def secret(self):
        return (self.folder / SECRET_FILE).read_text().strip()

    def address(self):
        """(host, port) the job reported, or None before the engine was started."""
        try:
            data = json.loads((self.folder / ADDRESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data["host"], int(data["port"])

    def node(self):
        return self._address_field("node") or ""

    def started(self):
        """When the job started (epoch seconds, from address.json), or None before it did."""
        started = self._address_field("started")
        if started is None and (self.folder / ADDRESS_FILE).exists():  # a record from before "started"
            return (self.folder / ADDRESS_FILE).stat().st_mtime
        return float(started) if started is not None else None

    def walltime_left(self, now=None):
        """Seconds left of the job's walltime, or None before the job started."""
        started = self.started()
        if started is None:
            return None
        minutes = int(self.request.get("minutes") or int(self.request.get("hours") or 0) * 60)
        return max(0.0, started + minutes * 60 - (now or time.time()))

    def _address_field(self, key):
        try:
            return json.loads((self.folder / ADDRESS_FILE).read_text()).get(key)
        except (OSError, ValueError):
            return None

    def log_path(self):
        return self.folder / LOG_FILE

    def save(self):
        replace_private(self.folder / ENDPOINT_FILE, json.dumps(asdict(self), indent=1) + "\n")


class EndpointStore:
    """One user's endpoints."""

    def __init__(self, user):
        self.user = user
        self.root = serving_dir(user)

    def names(self):
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{ENDPOINT_FILE}"))

    def get(self, name):
        check_name(name)
        try:
            data = json.loads((self.root / name / ENDPOINT_FILE).read_text())
        except FileNotFoundError:
            raise ServeError(f"no endpoint {name!r} of {self.user} (see `aif serve list`)") from None
        return Endpoint(**data)

    def all(self):
        return [self.get(name) for name in self.names()]

    def create(self, endpoint: Endpoint):
        """A new private folder with the record and a fresh secret; refuses a name in use."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        folder = self.root / endpoint.name
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            raise ServeError(f"endpoint name {endpoint.name!r} is already used by one of your endpoints; "
                             f"stop and remove it (`aif serve stop {endpoint.name} --remove`) or choose another "
                             "--name") from None
        write_private(folder / SECRET_FILE, secrets.token_urlsafe(32) + "\n", exclusive=True)
        endpoint.save()
        return endpoint

    def remove(self, name):
        shutil.rmtree(self.root / check_name(name), ignore_errors=True)
