"""What the gateway keeps and exports: the store, the usage ledger, batches, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from deployments.config_loading import AbsolutePath, StrictConfig


class StoreConfig(StrictConfig):
    """Where API keys, the usage ledger, files and batches live: one SQLite file shared by
    the replicas, and a folder for file contents."""

    kind: Literal["sqlite"] = Field(
        "sqlite", description="The database: SQLite, the only kind so far."
    )
    path: AbsolutePath = Field(
        Path(".first/first.db"),
        validate_default=True,
        description="SQLite file; a relative path is taken from the directory `first` runs in.",
    )
    files_dir: AbsolutePath | None = Field(
        None,
        description="Contents of uploaded files and batch results (default: `files` beside "
        "the SQLite file).",
    )

    @property
    def files_path(self) -> Path:
        return self.files_dir or self.path.parent / "files"


class BatchConfig(StrictConfig):
    """The Files and Batches API: what an upload may hold, and how batches are looked after."""

    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest input file (OpenAI's limit: 200 MB)."
    )
    max_lines: int = Field(
        50_000, ge=1, description="Most requests in one input file (OpenAI's limit)."
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often a running batch's results are collected from its site (less "
        "often for a long log: reading it takes at most 5% of the time).",
    )
    lease_s: float = Field(
        20.0,
        gt=0,
        description="A gateway process that stops renewing a batch's lease this long (it "
        "died) lets another take the batch over.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Ray jobs tried for one batch when one is lost (its cluster went away); "
        "each runs only the lines still unanswered.",
    )
    stage_part_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Input sent to the site per control-channel call (Globus Compute caps "
        "a task's payload at 10 MB).",
    )


class LedgerConfig(StrictConfig):
    """One usage record per request, written off the request path in batches."""

    enabled: bool = Field(True, description="false: no usage records are written.")
    flush_interval_s: float = Field(1.0, gt=0, description="Longest a record waits unwritten.")
    batch_size: int = Field(500, ge=1, description="Records written in one transaction.")
    store_content: bool = Field(
        False, description="Also store prompts and completions (off: only counts)."
    )


class MetricsConfig(StrictConfig):
    """The gateway's Prometheus metrics, at `GET /metrics` (monitoring/ scrapes them)."""

    enabled: bool = Field(True, description="false: record nothing and answer 404 at /metrics.")
    multiprocess_dir: str | None = Field(
        None,
        description="Folder on the gateway's node where its Serve processes write their "
        "samples for /metrics to add up; emptied at start. Default: "
        "<temp dir>/first-metrics-<gateway port>.",
    )
    ttft_objective_s: float = Field(
        2.0,
        gt=0,
        description="Objective for the p99 time to first token of streamed requests; "
        "monitoring/alerts.yml alerts above it (exported as "
        "first_time_to_first_token_objective_seconds).",
    )
