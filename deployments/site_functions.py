"""Functions the control channel runs at a site: plain data in, plain data out.

They must run unchanged in-process (local channel) and on a site's login node
through Globus Compute, so they take and return JSON-able dicts, import what
they need inside, and reach the site only over HTTP and Slurm's commands.
Each answer is one of the models here (or `SiteStatus`) dumped as JSON;
`deployments.site_client.SiteClient` calls them and reads the answers back
into the same models.

- `site_status`: per model, replicas, requests and readiness; on a Slurm
  site also the model's jobs (queued with Slurm's reason, starting, running
  with node list and time left, or failed with the tail of the log).
- `launch`: make sure a model has a Slurm job (idempotent: no second job for
  a model already queued or running, unless `at_least` asks for more).
- `stop`: cancel a model's Slurm jobs, or one of them.
- `relay`: send one request to a model's endpoint and return the answer whole
  (the globus-compute transport: one task per request, as FIRST v1).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from deployments.site_status import JobStatus


class LaunchResult(BaseModel):
    """What `launch` did: submitted a job or found enough, and the model's active jobs."""

    submitted: bool
    jobs: list[JobStatus] = Field(description="The model's queued and running jobs, oldest first.")


class StopResult(BaseModel):
    """The job ids `stop` cancelled."""

    cancelled: list[str]


class RelayedAnswer(BaseModel):
    """A model endpoint's whole answer to one relayed request, and how long it took there."""

    status: int
    content_type: str = ""
    retry_after: str | None = None
    body: str = Field(description="The answer's body (OpenAI's JSON is text).")
    run_s: float = Field(description="Seconds from the site function's start to its answer.")


def relay(url: str, body: str, headers: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """POST `body` to `url` from the site and return the whole answer (a `RelayedAnswer`).

    Raises what httpx raises when the endpoint cannot be reached: the gateway tries
    another site, as when a direct connection fails.
    """
    import time

    import httpx

    from deployments.site_status import tls_context

    started = time.perf_counter()
    with httpx.Client(timeout=timeout_s, verify=tls_context()) as client:
        response = client.post(url, content=body.encode(), headers=headers)
    return RelayedAnswer(
        status=response.status_code,
        content_type=response.headers.get("content-type", ""),
        retry_after=response.headers.get("retry-after"),
        body=response.text,
        run_s=time.perf_counter() - started,
    ).model_dump(mode="json")


def site_status(site: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """The site's status report (deployments.site_status.SiteStatus) as a dict.

    Never raises for an unreachable site: the answer says `reachable: false`
    and why, so a poller can mark it down.
    """
    import time

    import httpx

    from deployments.site_config import SiteConfig
    from deployments.site_status import SiteStatus, tls_context

    config = SiteConfig.model_validate(site)
    status = SiteStatus(
        site=config.name, reachable=False, collected_at=time.time(), base_url=config.base_url
    )
    try:
        with httpx.Client(timeout=timeout_s, verify=tls_context()) as client:
            if config.slurm is None:
                _standing_site_status(client, config, status)
            else:
                _slurm_site_status(client, config, status)
    except Exception as exc:  # unreachable dashboard, Slurm down: a report, not a crash
        status.error = f"{type(exc).__name__}: {exc}"
        status.models = []
        return status.model_dump(mode="json")
    status.reachable = True
    return status.model_dump(mode="json")


def _read_serve(
    client, dashboard: str, app_names: list[str], status
) -> tuple[str | None, dict, dict]:
    """The site's application status, replica counts and (ongoing, queued) per deployment of a
    Ray cluster.

    The nodes' metrics endpoints it reads go into `status.metrics_targets`,
    where Prometheus finds them through the gateway (monitoring/).
    """
    from deployments.site_status import (
        alive_node_metrics_addresses,
        parse_serve_applications,
        parse_serve_load,
    )

    applications = client.get(f"{dashboard}/api/serve/applications/").raise_for_status().json()
    nodes = client.get(f"{dashboard}/nodes", params={"view": "summary"}).raise_for_status().json()
    addresses = alive_node_metrics_addresses(nodes)
    metrics = [client.get(f"http://{a}/metrics").raise_for_status().text for a in addresses]
    status.metrics_targets.extend(addresses)
    app_status, replicas = parse_serve_applications(applications, app_names)
    return app_status, replicas, parse_serve_load(metrics, app_names)


def _standing_site_status(client, config, status) -> None:
    from deployments.site_config import deployment_name
    from deployments.site_status import ModelStatus, model_state

    status.app_status, replicas, load = _read_serve(
        client, config.dashboard_url, config.app_names(), status
    )
    routes = _model_routes(config)
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
                route=routes.get(model.id, ""),
            )
        )


def _model_routes(config) -> dict[str, str]:
    """The route of each model that has its own application (direct streaming)."""
    return {model.id: config.model_route(model) for model in config.direct_models()}


def _slurm_site_status(client, config, status) -> None:
    """Each model's jobs from Slurm, and the replicas and load of its ready jobs' clusters."""
    import httpx

    from deployments.site_config import deployment_name
    from deployments.site_status import ModelStatus, slurm_model_state
    from deployments.slurm import SiteJobs

    jobs = SiteJobs(config).jobs()
    routes = _model_routes(config)
    for model in config.models:
        mine = [job for job in jobs if job.model == model.id]
        entry = ModelStatus(
            id=model.id,
            engine=model.engine,
            state="stopped",
            ready=False,
            jobs=mine,
            route=routes.get(model.id, ""),
        )
        for job in mine:
            if job.state != "running" or not job.dashboard_url:
                continue
            try:
                _, replicas, load = _read_serve(
                    client, job.dashboard_url, config.app_names(), status
                )
            except (httpx.HTTPError, ValueError):
                continue  # the job is going away; the next report will say so
            counts = replicas.get(deployment_name(model.id))
            if counts is None:
                continue
            ongoing, queued = load.get(deployment_name(model.id), (0.0, 0.0))
            entry.replicas_running += counts.running
            entry.replicas_starting += counts.starting
            entry.replicas_target += counts.target
            entry.ongoing_requests += ongoing
            entry.queued_requests += queued
        entry.ready = entry.replicas_running > 0
        entry.state = slurm_model_state(mine, entry.ready)
        status.models.append(entry)


def launch(site: dict[str, Any], model: str, at_least: int = 1) -> dict[str, Any]:
    """Submit a job for `model` unless `at_least` of its jobs are queued or running already.

    A `LaunchResult`. Raises SlurmError (Slurm's message) or KeyError (unknown model).
    """
    from deployments.site_config import SiteConfig
    from deployments.slurm import SiteJobs

    submitted, jobs = SiteJobs(SiteConfig.model_validate(site)).launch(model, at_least)
    return LaunchResult(submitted=submitted, jobs=jobs).model_dump(mode="json")


def stop(site: dict[str, Any], model: str, job_id: str | None = None) -> dict[str, Any]:
    """Cancel the model's queued and running jobs (or only `job_id`); a `StopResult`."""
    from deployments.site_config import SiteConfig
    from deployments.site_status import ACTIVE_JOB_STATES
    from deployments.slurm import SiteJobs

    jobs = SiteJobs(SiteConfig.model_validate(site))
    active = [j.job_id for j in jobs.jobs(model) if j.state in ACTIVE_JOB_STATES]
    chosen = [j for j in active if job_id is None or j == job_id]
    if job_id is not None and not chosen:
        raise KeyError(f"job {job_id} is not a queued or running job of {model}")
    jobs.cancel(chosen)
    return StopResult(cancelled=chosen).model_dump(mode="json")
