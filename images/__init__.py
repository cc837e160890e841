"""Notebook environments: one spec per environment, rendered as Docker, Apptainer or a venv."""
