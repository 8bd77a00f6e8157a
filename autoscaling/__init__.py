"""Autoscaling for site models: named Serve presets (and, later, the hot-node keeper)."""

from autoscaling.presets import PRESETS, resolve_autoscaling

__all__ = ["PRESETS", "resolve_autoscaling"]
