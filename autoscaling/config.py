"""The hot-node keeper's settings (the `keeper` section of the federation config)."""

from __future__ import annotations

from pydantic import Field

from deployments.config_loading import StrictConfig


class KeeperConfig(StrictConfig):
    """The hot-node keeper: Slurm allocations per model, kept, replaced, added, released."""

    interval_s: float = Field(15.0, gt=0, description="Seconds between two looks at each site.")
    drain_s: float = Field(
        30.0,
        ge=0,
        description="How long a job that a ready replacement took over keeps running (its "
        "requests finish) before it is cancelled.",
    )
    scale_up_queue: float = Field(
        8.0,
        gt=0,
        description="Requests waiting per ready allocation above which, held for "
        "scale_up_window_s, one more allocation is started (up to allocations.max).",
    )
    scale_up_window_s: float = Field(60.0, ge=0, description="How long the queue must stay high.")
    idle_window_s: float = Field(
        900.0,
        gt=0,
        description="An allocation is released after this long without requests, never going "
        "below the model's minimum (hot: 1).",
    )
    in_gateway: bool = Field(
        False,
        description="Run the keeper inside the gateway (one more Serve deployment on the "
        "gateway's Ray cluster, or a task of the standalone gateway) instead of as "
        "`first keeper run`.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port for the Prometheus metrics of `first keeper run`.",
    )
