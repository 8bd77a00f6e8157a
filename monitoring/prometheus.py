"""The Prometheus configuration for a federation: what to scrape, and the alert rules.

Three jobs find everything:

- `first-gateway`: the gateway's own `/metrics` (serve_app/metrics.py);
- `ray`: every node of the gateway's Ray cluster (its Serve proxy and
  replicas, colocated sites' vLLM engines), from the service-discovery file
  that Ray's head keeps up to date in its temp folder;
- `first-sites`: every Ray node of every other site (standing sites and the
  Ray clusters inside Slurm jobs), from the gateway's
  `/metrics/targets`, which lists what the sites' status reports name,
  each with its `site` label;
- `first-keeper`, when the hot-node keeper runs on its own
  (`first keeper run` with `keeper.metrics_port`).

Paths are absolute, so the file works from any working directory.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERT_RULES = HERE / "alerts.yml"
DASHBOARDS_DIR = HERE / "dashboards"
# Ray's head writes this file into its temp folder and rewrites it as nodes come and go.
RAY_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


def prometheus_config(
    gateway_url: str,
    ray_temp_dir: Path,
    scrape_interval_s: float = 15.0,
    keeper_address: str | None = None,
) -> str:
    """prometheus.yml (YAML text) for the gateway at `gateway_url`.

    `keeper_address` (host:port): a `first keeper run` outside the gateway,
    which serves its own metrics.
    """
    scheme, _, address = gateway_url.rstrip("/").partition("://")
    interval = f"{scrape_interval_s:g}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": "first-gateway",
                "scheme": scheme,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address]}],
            },
            {
                "job_name": "ray",
                "file_sd_configs": [
                    {"files": [str(ray_temp_dir / RAY_DISCOVERY_FILE)], "refresh_interval": "30s"}
                ],
            },
            {
                "job_name": "first-sites",
                "http_sd_configs": [
                    {"url": f"{gateway_url.rstrip('/')}/metrics/targets", "refresh_interval": "30s"}
                ],
            },
        ],
    }
    if keeper_address:
        config["scrape_configs"].append(
            {"job_name": "first-keeper", "static_configs": [{"targets": [keeper_address]}]}
        )
    return yaml.safe_dump(config, sort_keys=False)
