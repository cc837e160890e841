"""Launchers: where a benchmark runs besides this process. slurm.py: `aif bench submit`, sweeps as job arrays."""
