"""The hub side of AI Factory Lab: the `aif` launcher, configuration, spawners and services."""
