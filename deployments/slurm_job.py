"""What runs inside a site's Slurm job (cluster_configs/slurm/ray-site.sbatch.j2).

- `ports`: free ports for the job's Ray cluster and Serve proxy, as shell
  assignments, so several jobs and other Ray clusters share a node.
- `serve`: join the job's Ray cluster, wait until every node has joined,
  deploy the model, wait until it answers a completion, and publish the
  endpoint in the job's events file (`ready`), which the site status
  function reads. A failure is published too (`failed`, with the reason).

The events file is JSON lines, appended by the batch script and by this
module; `deployments.slurm` reads it. Each event carries its Unix time, so
a cold start splits into queue wait, Ray start and model load.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import click

from deployments.site_config import HAProxyConfig, SiteConfig
from deployments.site_runner import cluster_environment, free_ports

# Ports handed to Ray by name (shell variables of the batch script).
PORT_NAMES = (
    "GCS_PORT",
    "DASHBOARD_PORT",
    "CLIENT_SERVER_PORT",
    "NODE_MANAGER_PORT",
    "OBJECT_MANAGER_PORT",
    "METRICS_PORT",
    "RUNTIME_ENV_AGENT_PORT",
    "DASHBOARD_AGENT_PORT",
    "DASHBOARD_AGENT_GRPC_PORT",
    "SERVE_PORT",
)
# Ray workers take ports from a range; kept clear of Ray's default 10002-19999,
# which a cluster started with defaults on the same node would use.
WORKER_PORT_SPAN = 200
WORKER_PORT_RANGE = (20000, 30000)


def append_event(path: Path, event: str, **fields: Any) -> None:
    """One JSON line; a single short append, so concurrent writers do not interleave."""
    line = json.dumps({"event": event, "at": time.time(), **fields}) + "\n"
    with open(path, "a") as events:
        events.write(line)


def worker_port_range() -> tuple[int, int]:
    """A range of worker ports none of which is bound now."""
    low, high = WORKER_PORT_RANGE
    for _ in range(50):
        start = random.randrange(low, high - WORKER_PORT_SPAN)
        if all(_port_free(port) for port in range(start, start + WORKER_PORT_SPAN, 10)):
            return start, start + WORKER_PORT_SPAN - 1
    raise click.ClickException("no free range of Ray worker ports on this node")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


@click.group()
def main() -> None:
    """Steps of a FIRST site job (run by the batch script, not by hand)."""


@main.command()
@click.option(
    "--haproxy/--no-haproxy",
    default=False,
    help="Serve's ingress is HAProxy (ray.haproxy.enabled; off by default, as there).",
)
def ports(haproxy: bool) -> None:
    """Print free ports for the job's Ray cluster, and Serve's ingress settings, for the shell."""
    assignments = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    assignments["MIN_WORKER_PORT"], assignments["MAX_WORKER_PORT"] = worker_port_range()
    lines = [f"{name}={port}" for name, port in assignments.items()]
    # Exported before `ray start`, so that Serve's controller and proxies see them.
    environment = cluster_environment(HAProxyConfig(enabled=haproxy))
    lines += [f"export {name}={value}" for name, value in environment.items()]
    click.echo("\n".join(lines))


def _wait_for_nodes(count: int, deadline: float) -> None:
    import ray

    while True:
        alive = sum(node["Alive"] for node in ray.nodes())
        if alive >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {alive} of {count} nodes joined the Ray cluster")
        time.sleep(1.0)


@main.command()
@click.option("--spec", "spec_file", type=click.File(), required=True, help="Job spec (JSON).")
@click.option("--address", required=True, help="host:port of the job's Ray head.")
@click.option("--nodes", type=int, required=True, help="Nodes that must join first.")
@click.option("--serve-port", type=int, required=True)
@click.option("--dashboard-port", type=int, required=True)
def serve(spec_file, address: str, nodes: int, serve_port: int, dashboard_port: int) -> None:
    """Deploy the job's model on its Ray cluster and publish the endpoint once it answers."""
    from deployments.site_runner import check_sources, deploy, wait_until_answering

    spec = json.load(spec_file)
    events_path = Path(spec["events_dir"]) / f"{os.environ['SLURM_JOB_ID']}.jsonl"
    head_ip = address.rsplit(":", 1)[0]
    site = SiteConfig.model_validate(spec["site"])
    timeout_s = float(spec["start_timeout_s"])
    deadline = time.monotonic() + timeout_s
    site.serve.port = serve_port
    # Where the gateway reaches the job: the head node, unless bound to one address.
    host = head_ip if site.serve.host in ("0.0.0.0", "::") else site.serve.host
    base_url = f"http://{host}:{serve_port}{site.serve.route_prefix.rstrip('/')}"
    try:
        import ray

        check_sources(site)
        ray.init(address=address, logging_level="WARNING")
        _wait_for_nodes(nodes, deadline)
        append_event(events_path, "ray_up", nodes=nodes)
        deploy(site, site.ray)
        wait_until_answering(
            site, max(deadline - time.monotonic(), 1.0), lambda m: print(f"[first] {m}")
        )
    except Exception as exc:  # published for the status function, then the job ends
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        append_event(events_path, "failed", reason=reason)
        raise click.ClickException(reason) from None
    append_event(
        events_path, "ready", base_url=base_url, dashboard_url=f"http://{host}:{dashboard_port}"
    )
    print(f"[first] ready at {base_url}", flush=True)
    os._exit(0)  # leave the Serve app running; Ray's client shutdown can hang for seconds


if __name__ == "__main__":
    main()
