"""Serve's ingress for the Ray clusters this project starts: HAProxy by default, per cluster."""

from __future__ import annotations

import os
import subprocess
import sys

from deployments.site_config import HAProxyConfig, RayClusterConfig
from deployments.site_runner import haproxy_environment


def test_haproxy_gets_ports_of_its_own_per_cluster():
    environment = haproxy_environment(HAProxyConfig(enabled=True))
    assert environment["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # Ray's high-throughput mode comes with it, as Ray documents the two together.
    assert environment["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    metrics, stats = (
        int(environment[f"RAY_SERVE_HAPROXY_{name}_PORT"]) for name in ("METRICS", "STATS")
    )
    # Not Serve's fixed defaults, which two clusters on one machine would share.
    assert metrics != stats and {metrics, stats}.isdisjoint({9101, 8404})


def test_configured_haproxy_ports_are_used():
    config = HAProxyConfig(enabled=True, metrics_port=19101, stats_port=18404)
    environment = haproxy_environment(config)
    assert environment["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    assert environment["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


def test_serves_python_proxy_is_the_default_ingress():
    assert haproxy_environment(RayClusterConfig().haproxy) == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_a_slurm_jobs_shell_gets_the_ingress_exported_before_ray_starts():
    def exported(*flags: str) -> str:
        script = (
            f'eval "$({sys.executable} -m deployments.slurm_job ports {" ".join(flags)})"; '
            "bash -c 'echo \"$RAY_SERVE_ENABLE_HA_PROXY $RAY_SERVE_HAPROXY_STATS_PORT $GCS_PORT\"'"
        )
        return subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()

    # Ray's ports stay plain shell variables (GCS_PORT is not seen by a child).
    enabled, stats_port = exported("--haproxy")
    assert enabled == "1" and int(stats_port) > 0
    assert exported("--no-haproxy") == ["0"]


def test_a_slurm_jobs_ray_cluster_runs_without_token_auth_unless_asked():
    """Ray turns token auth on once ~/.ray/auth_token exists; the status calls carry none."""

    def mode(environment: dict[str, str]) -> str:
        script = f'eval "$({sys.executable} -m deployments.slurm_job ports)"; echo "$RAY_AUTH_MODE"'
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | environment
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
        return done.stdout.strip()

    assert mode({}) == "disabled"
    assert mode({"RAY_AUTH_MODE": "token"}) == "token"
