"""Batch functions the control channel runs at a site: stage, submit, read back, stop.

Like `deployments.site_functions`, plain data in and out, so they run the
same in-process and through Globus Compute (whose payloads are capped at a
few MB: the gateway stages a batch's input in parts). Each talks to the Ray
cluster of the site (or of the model's Slurm job) through Ray's Job
Submission API on that cluster's dashboard, which only the site reaches.

A batch attempt is one Ray job whose submission id the gateway chooses, so
submitting twice (a gateway that restarted between asking and hearing back)
finds the first job instead of running the lines again.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# Ray job states that will not change any more.
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


class BatchResult(BaseModel):
    """One output or error line of a batch, as the Ray job reported it (or the gateway wrote)."""

    index: int = Field(description="The input line (0-based) it answers.")
    kind: Literal["output", "error"]
    line: dict[str, Any]


class JobResult(BatchResult):
    """A result as the runner logged it: `seq` lets a reader resume after the ones it has."""

    seq: int


class StageResult(BaseModel):
    staged: int = Field(description="Lines written.")


class BatchSubmission(BaseModel):
    """Where the attempt runs, or why it cannot yet (`waiting`: no job of the model runs)."""

    submission_id: str
    dashboard_url: str | None = None
    waiting: str | None = None


class BatchPoll(BaseModel):
    """A Ray job's state and the results after the caller's last one."""

    state: str = Field(
        description="Ray's job status, MISSING (no such job) or UNREACHABLE (the cluster is gone)."
    )
    message: str = ""
    results: list[JobResult] = Field(default_factory=list)
    done: bool = Field(False, description="The runner finished every line.")
    more: bool = Field(False, description="Results were left for the next call.")


class BatchStopResult(BaseModel):
    stopped: bool
    message: str = ""


def stage(site: dict[str, Any], submission_id: str, part: int, lines: list[str]) -> dict[str, Any]:
    """Write one part of a batch attempt's input (JSON lines) where `submit` will find it."""
    from deployments.site_config import SiteConfig

    folder = SiteConfig.model_validate(site).batch.staging_dir / submission_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"input-{part:06d}.jsonl"
    temporary = path.with_suffix(".partial")
    temporary.write_text("".join(line + "\n" for line in lines))
    temporary.rename(path)  # a part is there whole or not at all
    return StageResult(staged=len(lines)).model_dump(mode="json")


def _target(config, model: str) -> tuple[str, str] | None:
    """(dashboard URL, Serve base URL) of the Ray cluster that runs `model` at this site."""
    if config.slurm is None:
        return config.dashboard_url, config.base_url
    from deployments.slurm import SiteJobs

    running = [
        job
        for job in SiteJobs(config).jobs(model)
        if job.state == "running" and job.dashboard_url and job.base_url
    ]
    if not running:
        return None
    job = max(running, key=lambda j: j.time_left_s or 0.0)
    return job.dashboard_url, job.base_url


def submit(
    site: dict[str, Any], submission_id: str, model: str, endpoint: str, parts: int
) -> dict[str, Any]:
    """Submit the staged attempt as a Ray job (or find it submitted): a `BatchSubmission`.

    When the model runs nowhere at the site (a Slurm site whose job has not
    started, or has just ended), the answer says so in `waiting` rather than
    raising: a remote exception reaches the gateway through Globus Compute
    only as a traceback, and the gateway places the batch again.
    """
    import shlex
    import shutil
    import sys

    from ray.job_submission import JobSubmissionClient

    from deployments.site_config import SiteConfig

    config = SiteConfig.model_validate(site)
    target = _target(config, model)
    if target is None:
        waiting = f"no Slurm job of {model} is running at {config.name}"
        return BatchSubmission(submission_id=submission_id, waiting=waiting).model_dump(mode="json")
    dashboard_url, base_url = target
    client = JobSubmissionClient(dashboard_url)
    folder = config.batch.staging_dir / submission_id
    try:
        client.get_job_info(submission_id)
    except RuntimeError:  # no such job yet: the usual case
        staged = sorted(folder.glob("input-*.jsonl")) if folder.is_dir() else []
        if len(staged) != parts:
            raise FileNotFoundError(
                f"{submission_id}: {len(staged)} of {parts} input parts are staged"
            ) from None
        python = (config.slurm.python if config.slurm else None) or sys.executable
        batch = config.batch
        command = [
            python, "-m", "deployments.batch_runner",
            "--base-url", base_url,
            "--endpoint", endpoint,
            "--concurrency", str(batch.concurrency),
            "--retries", str(batch.retries),
            "--timeout-s", str(batch.request_timeout_s),
        ]  # fmt: skip
        client.submit_job(
            entrypoint=shlex.join(command),
            submission_id=submission_id,
            runtime_env={"working_dir": str(folder)},
            metadata={"first_model": model},
        )
    shutil.rmtree(folder, ignore_errors=True)
    answer = BatchSubmission(submission_id=submission_id, dashboard_url=dashboard_url)
    return answer.model_dump(mode="json")


def poll(
    dashboard_url: str, submission_id: str, after_seq: int, max_results: int = 5000
) -> dict[str, Any]:
    """The job's state and its results after `after_seq` (at most `max_results`): a `BatchPoll`."""
    import json

    from ray.job_submission import JobSubmissionClient

    from deployments.batch_runner import DONE_MARK, RESULT_MARK

    try:
        client = JobSubmissionClient(dashboard_url)
        info = client.get_job_info(submission_id)
        logs = client.get_job_logs(submission_id)
    except OSError as exc:  # requests' connection errors too: the cluster is gone
        return BatchPoll(state="UNREACHABLE", message=str(exc)).model_dump(mode="json")
    except RuntimeError as exc:
        state = "MISSING" if "status code 404" in str(exc) else "UNREACHABLE"
        return BatchPoll(state=state, message=str(exc)).model_dump(mode="json")
    results: list[dict] = []
    done = more = False
    for line in logs.splitlines():
        if line.startswith(RESULT_MARK):
            record = json.loads(line[len(RESULT_MARK) :])
            if record["seq"] <= after_seq:
                continue
            if len(results) == max_results:
                more = True
                break
            results.append(record)
        elif line.startswith(DONE_MARK):
            done = True
    answer = BatchPoll(
        state=str(info.status),
        message=info.message or "",
        results=results,
        done=done and not more,
        more=more,
    )
    return answer.model_dump(mode="json")


def stop(dashboard_url: str, submission_id: str) -> dict[str, Any]:
    """Ask the job to stop (its runner exits at once, every result so far in its log).

    A `BatchStopResult`.
    """
    from ray.job_submission import JobSubmissionClient

    try:
        stopped = JobSubmissionClient(dashboard_url).stop_job(submission_id)
    except (OSError, RuntimeError) as exc:
        return BatchStopResult(stopped=False, message=str(exc)).model_dump(mode="json")
    return BatchStopResult(stopped=stopped).model_dump(mode="json")
