"""Pieces the serving benchmarks share: a Serve stack of colocated sites, one standalone
gateway per placement policy in front of them, and `vllm bench serve` as the load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from serve_app.cli_process import free_port
from serve_app.config import load_federation

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / ".first" / "models" / "tiny-llama"


def sites_stack(workdir: Path, ray_temp: str, sites: list[dict]) -> Path:
    """A federation whose sites all run colocated on one Serve stack (`first gateway up`).

    Its own gateway only hosts them: the gateways under test are standalone,
    in front of the same sites (`policy_gateway`).
    """
    config = {
        "gateway": {
            "port": free_port(),
            "ray": {
                "num_cpus": 8,
                "dashboard_port": free_port(),
                "metrics_export_port": free_port(),
                "temp_dir": ray_temp,
            },
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        },
        "auth": {"required": False},
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        "sites": [
            {"name": site["name"], "site": site, "colocated": True, "channel": {"kind": "local"}}
            for site in sites
        ],
    }
    path = workdir / "federation-sites.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def policy_gateway(stack: Path, policy: str, workdir: Path) -> Path:
    """A standalone gateway's config: the stack's sites by URL, placed by `policy`."""
    federation = load_federation(stack)
    config = {
        "gateway": {"port": free_port()},
        "auth": {"required": False},
        "limits": None,
        "ledger": {"enabled": False},
        "store": {"path": str(workdir / "first.db")},
        "placement": {"policy": policy},
        "sites": [
            {
                "name": site.name,
                "site": site.site_config.model_dump(mode="json"),
                "base_url": site.url,
                "channel": {"kind": "local", "poll_interval_s": 1.0},
            }
            for site in federation.sites
        ],
    }
    path = workdir / f"federation-{policy}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def vllm_bench_serve(url: str, model: str, tokenizer: Path, out: Path, *load: str) -> dict:
    """One `vllm bench serve` run of chat completions against `url`; its saved result.

    `load`: the dataset, rate and count options of `vllm bench serve`.
    """
    command = [
        sys.executable, "-m", "bench.vllm_cli", "bench", "serve",
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", url, "--model", model, "--tokenizer", str(tokenizer),
        "--seed", "0", "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
        *load,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def latency_summary(raw: dict) -> dict:
    """What the reports keep of a `vllm bench serve` result."""
    keys = ("p50_ttft_ms", "p99_ttft_ms", "mean_ttft_ms", "p50_e2el_ms", "p99_e2el_ms")
    result = {key: round(raw[key], 1) for key in keys}
    result["requests_per_s"] = round(raw["request_throughput"], 2)
    result["output_tokens_per_s"] = round(raw["output_throughput"], 1)
    result["completed"] = raw["completed"]
    result["failed"] = raw.get("failed", 0)
    return result
