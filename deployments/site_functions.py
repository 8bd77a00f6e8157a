"""Functions the control channel runs at a site: plain data in, plain data out.

They must run unchanged in-process (local channel) and on a site's login node
through Globus Compute, so they take and return JSON-able dicts, import what
they need inside, and reach the site only over HTTP.
"""

from __future__ import annotations

from typing import Any


def site_status(site: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Per-model replicas, ongoing and queued requests, and readiness of one site.

    `site` is a SiteConfig as a dict. Never raises for an unreachable site:
    the answer says `reachable: false` and why, so a poller can mark it down.
    """
    import time

    import httpx

    from deployments.site_config import SiteConfig, deployment_name
    from deployments.site_status import (
        ModelStatus,
        SiteStatus,
        alive_node_metrics_addresses,
        model_state,
        parse_serve_applications,
        parse_serve_load,
        tls_context,
    )

    config = SiteConfig.model_validate(site)
    host = config.ray.address.rsplit(":", 1)[0] if config.ray.address else "127.0.0.1"
    dashboard = f"http://{host}:{config.ray.dashboard_port}"
    status = SiteStatus(
        site=config.name, reachable=False, collected_at=time.time(), base_url=config.base_url
    )
    try:
        with httpx.Client(timeout=timeout_s, verify=tls_context()) as client:
            applications = (
                client.get(f"{dashboard}/api/serve/applications/").raise_for_status().json()
            )
            nodes = (
                client.get(f"{dashboard}/nodes", params={"view": "summary"})
                .raise_for_status()
                .json()
            )
            metrics = [
                client.get(f"http://{address}/metrics").raise_for_status().text
                for address in alive_node_metrics_addresses(nodes)
            ]
    except (httpx.HTTPError, ValueError) as exc:
        status.error = f"{type(exc).__name__}: {exc}"
        return status.model_dump()

    app_status, replicas = parse_serve_applications(applications, config.serve.app_name)
    load = parse_serve_load(metrics, config.serve.app_name)
    status.reachable = True
    status.app_status = app_status
    for model in config.models:
        name = deployment_name(model.id)
        counts = replicas.get(name)
        ongoing, queued = load.get(name, (0.0, 0.0))
        status.models.append(
            ModelStatus(
                id=model.id,
                engine=model.engine,
                state=model_state(counts),
                ready=bool(counts and counts.running),
                replicas_running=counts.running if counts else 0,
                replicas_starting=counts.starting if counts else 0,
                replicas_target=counts.target if counts else 0,
                ongoing_requests=ongoing,
                queued_requests=queued,
            )
        )
    return status.model_dump()
