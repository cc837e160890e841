"""The cluster room: a real single-node Slurm (the "mini-cluster") for dev, demos and tests.

- mini.py: `MiniCluster` (munged, slurmctld, slurmd under one state directory, simulated GPUs);
- cli.py: `aif cluster up | down | status | adduser`.
"""

from .mini import ClusterError, ClusterSpec, MiniCluster, default_cluster_dir

__all__ = ["ClusterError", "ClusterSpec", "MiniCluster", "default_cluster_dir"]
