"""Named Ray Serve autoscaling settings for model deployments: hot, warm, cold.

A model's temperature is an operational choice, not a tuning exercise, so a
site config names a preset and overrides a field or two at most. The values
are Ray Serve `autoscaling_config` fields, validated by Serve's own model.

- hot: interactive models people use all day. Never below one replica, grows
  quickly under load, shrinks slowly. First token always comes from a running
  engine.
- warm: models used often but not constantly. Starts with one replica and
  falls to zero only after half an hour without traffic, so it costs nothing
  overnight but is ready during the working day.
- cold: rarely used or very large models. No replica until a request comes;
  the first caller waits for the engine to load (about a minute for the tiny
  model here, many minutes for a large model on a GPU node). Released five
  minutes after the last request.

Serve's LLM defaults set `target_ongoing_requests` so high that a replica
never scales up on load; every preset therefore sets it explicitly. The right
number depends on the model and the accelerator (vLLM batches dozens of
sequences per GPU); override it per model.
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingConfig

PRESETS: dict[str, dict[str, Any]] = {
    "hot": {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 32,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 600.0,
    },
    "warm": {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 32,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
        "downscale_to_zero_delay_s": 1800.0,
    },
    "cold": {
        "min_replicas": 0,
        "initial_replicas": 0,
        "max_replicas": 1,
        "target_ongoing_requests": 32,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 300.0,
        "downscale_to_zero_delay_s": 300.0,
    },
}

# Slurm allocations the hot-node keeper never goes below, per preset: a hot
# model always has a running job, the others start on their first request.
MIN_ALLOCATIONS: dict[str, int] = {"hot": 1, "warm": 0, "cold": 0}

SERVE_AUTOSCALING_FIELDS = frozenset(AutoscalingConfig.model_fields) - {"policy"}


def resolve_autoscaling(preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge a preset with explicit fields and validate the result with Serve.

    Raises ValueError naming the bad preset or field, with the valid choices, and
    pydantic's ValidationError (a ValueError) when Serve rejects a value.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - SERVE_AUTOSCALING_FIELDS - {"preset"})
    if unknown:
        raise ValueError(
            f"unknown autoscaling field {unknown[0]!r}; "
            f"use a preset ({', '.join(PRESETS)}) or Serve fields such as "
            "min_replicas, max_replicas, target_ongoing_requests"
        )
    merged = {**PRESETS.get(preset or "", {}), **overrides}
    if "initial_replicas" in merged and "min_replicas" in overrides:
        # An explicit minimum above the preset's initial count raises the start too.
        merged["initial_replicas"] = max(merged["initial_replicas"], overrides["min_replicas"])
    AutoscalingConfig(**merged)  # Serve's own validation; raises pydantic's ValidationError
    return merged
