"""Notebook environments: one spec per environment, rendered as Docker, Apptainer or a venv."""

from .registry import spawner_environments
from .spec import EnvironmentSpec, SpecError, load_spec

__all__ = ["EnvironmentSpec", "SpecError", "load_spec", "spawner_environments"]
