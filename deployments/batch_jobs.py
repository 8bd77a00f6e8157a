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

from typing import Any

# Ray job states that will not change any more.
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


def stage(site: dict[str, Any], submission_id: str, part: int, lines: list[str]) -> dict[str, Any]:
    """Write one part of a batch attempt's input (JSON lines) where `submit` will find it."""
    from deployments.site_config import SiteConfig

    folder = SiteConfig.model_validate(site).batch.staging_dir / submission_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"input-{part:06d}.jsonl"
    temporary = path.with_suffix(".partial")
    temporary.write_text("".join(line + "\n" for line in lines))
    temporary.rename(path)  # a part is there whole or not at all
    return {"staged": len(lines)}


def _target(config, model: str) -> tuple[str, str]:
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
        raise LookupError(f"no Slurm job of {model} is running at {config.name}")
    job = max(running, key=lambda j: j.time_left_s or 0.0)
    return job.dashboard_url, job.base_url


def submit(
    site: dict[str, Any], submission_id: str, model: str, endpoint: str, parts: int
) -> dict[str, Any]:
    """Submit the staged attempt as a Ray job (or find it submitted); its dashboard URL.

    Raises LookupError when the model runs nowhere at the site (a Slurm site
    whose job has not started): the gateway starts it and asks again.
    """
    import shlex
    import shutil
    import sys

    from ray.job_submission import JobSubmissionClient

    from deployments.site_config import SiteConfig

    config = SiteConfig.model_validate(site)
    dashboard_url, base_url = _target(config, model)
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
    return {"submission_id": submission_id, "dashboard_url": dashboard_url}


def poll(
    dashboard_url: str, submission_id: str, after_seq: int, max_results: int = 5000
) -> dict[str, Any]:
    """The job's state and its results after `after_seq` (at most `max_results`).

    {"state": Ray's job status, or "MISSING" (no such job) or "UNREACHABLE"
    (the cluster is gone), "message", "results": [{seq, index, kind, line}],
    "done": the runner finished every line, "more": results were left for the
    next call}.
    """
    import json

    from ray.job_submission import JobSubmissionClient

    from deployments.batch_runner import DONE_MARK, RESULT_MARK

    try:
        client = JobSubmissionClient(dashboard_url)
        info = client.get_job_info(submission_id)
        logs = client.get_job_logs(submission_id)
    except OSError as exc:  # requests' connection errors too: the cluster is gone
        return _poll_answer("UNREACHABLE", str(exc))
    except RuntimeError as exc:
        state = "MISSING" if "status code 404" in str(exc) else "UNREACHABLE"
        return _poll_answer(state, str(exc))
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
    return _poll_answer(str(info.status), info.message or "", results, done and not more, more)


def _poll_answer(
    state: str,
    message: str,
    results: list[dict] | None = None,
    done: bool = False,
    more: bool = False,
) -> dict[str, Any]:
    return {
        "state": state,
        "message": message,
        "results": results or [],
        "done": done,
        "more": more,
    }


def stop(dashboard_url: str, submission_id: str) -> dict[str, Any]:
    """Ask the job to stop (its runner exits at once, every result so far in its log)."""
    from ray.job_submission import JobSubmissionClient

    try:
        stopped = JobSubmissionClient(dashboard_url).stop_job(submission_id)
    except (OSError, RuntimeError) as exc:
        return {"stopped": False, "message": str(exc)}
    return {"stopped": stopped, "message": ""}
