"""Autoscaling for site models: named Serve presets, and the hot-node keeper for Slurm sites."""

from deployments.autoscaling_presets import MIN_ALLOCATIONS, PRESETS, resolve_autoscaling

__all__ = ["MIN_ALLOCATIONS", "PRESETS", "resolve_autoscaling"]
