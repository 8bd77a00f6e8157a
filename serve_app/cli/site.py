"""`first site`: run one site (a Ray cluster serving models) and read its status."""

from __future__ import annotations

import json

import click

from serve_app.cli.common import (
    config_option,
    echo,
    load_site,
    port_option,
    serve_until_signal,
    start_timeout_option,
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
