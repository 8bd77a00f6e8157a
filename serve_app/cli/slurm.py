"""`first slurm`: start, stop and inspect a Slurm site's model jobs, on its login node.

These run the site functions in this process, as the control channel runs
them at the site, and read their answers into the same models.
"""

from __future__ import annotations

import json
import time

import click

from deployments.site_config import SiteConfig
from deployments.site_status import JobStatus, ModelStatus
from serve_app.cli.common import config_option, echo, load_site

_SITE_OPTION = config_option("Site YAML file with a `slurm` section.")


@click.group()
def slurm() -> None:
    """Start, stop and inspect a Slurm site's model jobs (each a Ray cluster in an allocation)."""


def _slurm_site(config_path: str, model_id: str | None) -> SiteConfig:
    site_config = load_site(config_path)
    if site_config.slurm is None:
        raise click.ClickException(f"{config_path}: the site has no `slurm` section")
    known = [m.id for m in site_config.models]
    if model_id is not None and model_id not in known:
        raise click.ClickException(
            f"the site {site_config.name!r} has no model {model_id!r}; models: {', '.join(known)}"
        )
    return site_config


@slurm.command("launch")
@_SITE_OPTION
@click.argument("model_id", metavar="MODEL")
@click.option(
    "--at-least",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs of the model to have queued or running; one more is submitted if fewer.",
)
def slurm_launch(config_path: str, model_id: str, at_least: int) -> None:
    """Submit a job serving MODEL, unless one is already queued or running."""
    from deployments.site_functions import LaunchResult, launch

    site_config = _slurm_site(config_path, model_id)
    result = LaunchResult.model_validate(
        launch(site_config.model_dump(mode="json"), model_id, at_least)
    )
    ids = ", ".join(job.job_id for job in result.jobs)
    newest = result.jobs[-1].job_id
    if result.submitted:
        echo(f"submitted job {newest} for {model_id} (active: {ids})")
    else:
        echo(f"{model_id} already has job(s) {ids}: nothing submitted")
    click.echo(newest)


@slurm.command("stop")
@_SITE_OPTION
@click.argument("model_id", metavar="MODEL")
@click.option("--job", "job_id", default=None, help="Cancel only this job of the model.")
def slurm_stop(config_path: str, model_id: str, job_id: str | None) -> None:
    """Cancel MODEL's queued and running jobs (or one of them)."""
    from deployments.site_functions import StopResult, stop

    site_config = _slurm_site(config_path, model_id)
    try:
        result = StopResult.model_validate(
            stop(site_config.model_dump(mode="json"), model_id, job_id)
        )
    except KeyError as exc:  # not a job of this model
        raise click.ClickException(str(exc).strip("'\"")) from None
    cancelled = ", ".join(result.cancelled) or "none (no job queued or running)"
    echo(f"cancelled {model_id} job(s): {cancelled}")


@slurm.command("status")
@_SITE_OPTION
@click.argument("model_id", metavar="[MODEL]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the site's status report as JSON.")
def slurm_status(config_path: str, model_id: str | None, as_json: bool) -> None:
    """Show each model's state and jobs: queued (and why), running (nodes, time left), failed."""
    from deployments.site_functions import site_status
    from deployments.site_status import SiteStatus

    site_config = _slurm_site(config_path, model_id)
    status = SiteStatus.model_validate(site_status(site_config.model_dump(mode="json")))
    if not status.reachable:
        raise click.ClickException(f"site {site_config.name!r}: {status.error}")
    models = [m for m in status.models if model_id in (None, m.id)]
    if as_json:
        chosen = status.model_copy(update={"models": models})
        click.echo(json.dumps(chosen.model_dump(mode="json"), indent=2))
        return
    click.echo(
        f"{'MODEL':<20} {'STATE':<9} {'JOB':<8} {'JOB STATE':<10} {'NODES':<12} {'LEFT':>9}  WHERE / WHY"
    )
    for entry in models:
        for job in entry.jobs or [None]:
            click.echo(_job_row(entry, job))
            if job and job.log_tail:
                click.echo("    " + job.log_tail.replace("\n", "\n    "))


def _job_row(entry: ModelStatus, job: JobStatus | None) -> str:
    if job is None:
        return f"{entry.id:<20} {entry.state:<9} -"
    left = job.time_left_s
    left_text = "-" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
    where = job.base_url or job.reason or ""
    return (
        f"{entry.id:<20} {entry.state:<9} {job.job_id:<8} {job.state:<10} "
        f"{job.nodes or '-':<12} {left_text:>9}  {where}"
    )
