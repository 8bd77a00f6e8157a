"""`first site`: run one site (a Ray cluster serving models) and read its status."""

from __future__ import annotations

import contextlib
import json

import click

from serve_app.cli.common import (
    config_option,
    echo,
    load_site,
    port_option,
    serve_until_signal,
    start_timeout_option,
    stop_on_signals,
    usage_banner,
)


@click.group()
def site() -> None:
    """Run and inspect one site (a Ray cluster serving models)."""


@site.command("up")
@config_option("Site YAML file (see cluster_configs/local.yaml).")
@port_option("serve.port")
@start_timeout_option("every warm model")
def site_up(config_path: str, port: int | None, timeout_s: float) -> None:
    """Start or join Ray, deploy the site's models, and serve until Ctrl-C."""
    from deployments.site_runner import bring_up, shut_down

    site_config = load_site(config_path, port)
    if site_config.slurm is not None:
        raise click.ClickException(
            f"{config_path}: this site's models run in Slurm jobs; start one with "
            "`first slurm launch`, or let the gateway start them on demand"
        )

    def announce() -> None:
        models = [m.id for m in site_config.models]
        logs = f"\nPer-request logs: {site_config.ray.serve_logs_path()}/"
        banner = usage_banner(f"Site {site_config.name!r}", site_config.base_url, models, logs)
        click.echo(banner, err=True)
        click.echo(f"READY {site_config.base_url}", err=False)

    serve_until_signal(
        lambda: bring_up(site_config, timeout_s, echo),
        announce,
        lambda: shut_down(site_config.ray, site_config.app_names()),
    )


@site.command("status")
@config_option("Site YAML file of a running site.")
def site_status_command(config_path: str) -> None:
    """Print the site's per-model status (replicas, requests, readiness) as JSON."""
    from deployments.site_functions import site_status
    from deployments.site_status import SiteStatus

    site_config = load_site(config_path)
    status = SiteStatus.model_validate(site_status(site_config.model_dump(mode="json")))
    click.echo(json.dumps(status.model_dump(mode="json"), indent=2))
    if not status.reachable:
        raise click.ClickException(f"site {site_config.name!r} is not reachable: {status.error}")


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


@site.command("connect")
@click.option("--gateway", required=True, help="HOST:PORT of the gateway host's sshd.")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The site's SSH private key (its public key is in the federation config).",
)
@click.option(
    "--port",
    "forward_port",
    required=True,
    type=click.IntRange(1024, 65535),
    help="The site's SOCKS port on the gateway host (its `transport.port`).",
)
@click.option(
    "--user",
    default="first-tunnel",
    show_default=True,
    help="The gateway host's account for site tunnels (port forwarding only).",
)
@click.option(
    "--known-hosts",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="known_hosts file with the gateway host's key (default: ssh's own).",
)
def site_connect(
    gateway: str, key_path: str, forward_port: int, user: str, known_hosts: str | None
) -> None:
    """Keep this site's SSH tunnel to the gateway open (run on the login node; outbound only).

    Reconnects with backoff whenever the connection drops; Ctrl-C stops it.
    """
    from deployments.ssh_connector import keep_connected, ssh_command

    command = ssh_command(_host_port(gateway), user, key_path, forward_port, known_hosts)
    stop_on_signals()
    with contextlib.suppress(KeyboardInterrupt):
        keep_connected(command, echo)


@site.command("endpoint")
@click.option("--gateway", required=True, help="HOST:PORT where the gateway's channel listens.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes of the endpoint's engine.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Exit when the first connection ends (the gateway started this endpoint itself).",
)
def site_endpoint(gateway: str, workers: int, once: bool) -> None:
    """Run the site functions the gateway sends, in globus-compute-endpoint's own engine.

    The endpoint-engine channel's site end (FIRST_ENDPOINT_KEY, the gateway's too): it
    dials out to the gateway, as a Globus Compute endpoint does to the Globus cloud.
    Needs the endpoint's environment (deployments/endpoint-requirements.txt).
    """
    import multiprocessing
    import os

    from deployments.compute_endpoint import run_endpoint

    key = os.environ.get("FIRST_ENDPOINT_KEY")
    if not key:
        raise click.ClickException("FIRST_ENDPOINT_KEY is not set (the gateway's channel key)")
    try:
        import globus_compute_endpoint  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "globus-compute-endpoint is not installed here: install "
            "deployments/endpoint-requirements.txt (make endpoint-venv)"
        ) from None
    stop_on_signals()
    try:
        run_endpoint(_host_port(gateway), key.encode(), workers, once=once, echo=echo)
    except KeyboardInterrupt:
        pass
    except (OSError, multiprocessing.AuthenticationError) as exc:
        raise click.ClickException(f"cannot reach the gateway at {gateway}: {exc}") from None
