"""What the hub offers: the environments built under a shared folder, as AIFSlurmSpawner.environments."""

from __future__ import annotations

import json
from pathlib import Path

from .render import MANIFEST


def spawner_environments(*folders):
    """{name: {"display_name", "venv" or "image", "env"}} for every complete build in `folders`.

    venvs are found by their manifest (written last by `aif images build --format venv`); an
    Apptainer image `NAME-VERSION.sif` is used with the manifest `NAME-VERSION.json` next to it.
    When several versions of a name exist, the newest build (by manifest mtime) wins.
    """
    found = {}
    for folder in folders:
        for manifest_file in sorted(Path(folder).glob(f"*/{MANIFEST}")) + sorted(Path(folder).glob("*.json")):
            entry = _entry(manifest_file)
            if entry is None:
                continue
            name, data, mtime = entry
            if name not in found or mtime > found[name][1]:
                found[name] = (data, mtime)
    return {name: data for name, (data, _) in sorted(found.items())}


def _entry(manifest_file):
    try:
        manifest = json.loads(manifest_file.read_text())
        name = manifest["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest_file.name == MANIFEST:
        location = {"venv": str(manifest_file.parent)}
    else:
        image = manifest_file.with_suffix(".sif")
        if not image.exists():
            return None
        location = {"image": str(image)}
    data = {"display_name": f"{manifest.get('display_name') or name} ({manifest.get('version', '?')})",
            **location, "env": dict(manifest.get("env") or {})}
    return name, data, manifest_file.stat().st_mtime
