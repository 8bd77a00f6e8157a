"""Scaling Slurm allocations with demand: the hot-node keeper and its settings.

Ray Serve scales replicas inside an allocation (the presets for that are the
site's: deployments/autoscaling_presets.py); the keeper scales the
allocations themselves. It sits between the gateway and the site: it imports
`deployments` only, and the gateway hands it what it needs.
"""

from autoscaling.config import KeeperConfig
from autoscaling.keeper import Decision, Keeper, decide

__all__ = ["Decision", "Keeper", "KeeperConfig", "decide"]
