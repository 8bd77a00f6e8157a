"""Runs batches: picks a site, submits a Ray job there, collects results, writes the files.

Every gateway process (each Serve replica, or the standalone gateway) runs
one supervisor. A supervisor works only on batches whose lease it holds in
the store, renewing it every `poll_interval_s`; a process that dies stops
renewing, and another takes its batches over once the lease runs out (a
clean shutdown hands them back at once). What makes a takeover safe:

- each attempt's Ray job has a submission id fixed before it is submitted,
  so submitting again finds the job instead of starting a second one;
- results are stored by input line, so reading a job's log again stores
  nothing twice;
- a job that is lost (its cluster went away) is replaced by one that runs
  only the lines still unanswered, at most `max_attempts` times.

Life of a batch: validating (site chosen, model started if it must be,
input staged, job submitted) -> in_progress (results collected) ->
finalizing (output and error files written) -> completed; or cancelling ->
cancelled, expired after 24 hours, failed when no job could finish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time

from deployments import batch_jobs
from deployments.batch_jobs import BatchPoll, BatchResult
from serve_app.access.policy import Principal
from serve_app.batch.files import read_lines, site_body, unanswered_result
from serve_app.batch.protocol import (
    BatchError,
    BatchErrors,
    BatchRecord,
    BatchRequestCounts,
    FileRecord,
)
from serve_app.batch.service import BatchService
from serve_app.batch.store import BatchStore
from serve_app.config import BatchConfig
from serve_app.errors import GatewayError, ModelStartingError, NoSiteAvailableError
from serve_app.routing.federation import Federation
from serve_app.store import UsageRecord
from serve_app.usage.ledger import UsageLedger

logger = logging.getLogger(__name__)
# Polls in a row that find a job's cluster unreachable before the job counts as lost.
UNREACHABLE_POLLS = 5
# A poll reads the job's whole log, which grows with the batch: polls are spaced so
# that reading takes at most this share of the time (a 50,000-line batch's log is tens of MB).
POLL_SHARE = 0.05


class BatchSupervisor:
    def __init__(
        self,
        service: BatchService,
        ledger: UsageLedger | None,
    ):
        self.service = service
        self.store: BatchStore = service.store
        self.config: BatchConfig = service.config
        self.federation: Federation = service.federation
        self.metrics = self.federation.metrics
        self.ledger = ledger
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._steps: dict[str, asyncio.Task] = {}
        self._unreachable: dict[str, int] = {}
        self._next_poll: dict[str, float] = {}  # batch id -> monotonic time
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop working and hand the batches back, so another process takes them at once."""
        tasks = [t for t in (self._task, *self._steps.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.store.release_batches, self.owner)

    async def _run(self) -> None:
        while True:
            try:
                claimed = await asyncio.to_thread(
                    self.store.claim_batches, self.owner, time.time(), self.config.lease_s
                )
            except Exception:
                logger.exception("cannot read the batch store")
                claimed = []
            with contextlib.suppress(Exception):  # the same failure was logged just above
                counts = await asyncio.to_thread(self.store.batch_counts)
                self.metrics.batches(counts)
            for batch in claimed:
                step = self._steps.get(batch.id)
                if step is None or step.done():
                    self._steps[batch.id] = asyncio.ensure_future(self._step(batch))
            self.service.woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.service.woken.wait(), self.config.poll_interval_s)

    async def _step(self, batch: BatchRecord) -> None:
        try:
            await self._advance(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s: step failed; trying again at the next poll", batch.id)

    async def _advance(self, batch: BatchRecord) -> None:
        if batch.cancel_requested_at and batch.status in ("validating", "in_progress"):
            batch.status, batch.cancelling_at = "cancelling", int(batch.cancel_requested_at)
            if not await self._save(batch):
                return
            await self._stop_job(batch)
        elif time.time() > (batch.expires_at or float("inf")) and batch.status in (
            "validating",
            "in_progress",
        ):
            await self._stop_job(batch)
            await self._collect(batch)
            await self._finalize(batch, "expired")
            return
        if batch.status == "validating":
            await self._start(batch)
        elif batch.status == "cancelling" or (
            batch.status == "in_progress" and time.monotonic() >= self._next_poll.get(batch.id, 0.0)
        ):
            await self._collect(batch)
        elif batch.status == "finalizing":
            await self._finalize(batch, "completed")

    # -- starting -----------------------------------------------------------

    async def _start(self, batch: BatchRecord) -> None:
        """Pick a site, start the model there if needed, stage the lines left, submit a job."""
        lines = await asyncio.to_thread(self._unanswered, batch)
        if not lines or batch.model is None:
            await self._finalize(batch, "completed")
            return
        if batch.submission_id is None:
            # A new attempt. One with an id already (this or another process got as far
            # as staging or submitting it) goes on where it was: it may be running.
            owner = Principal(batch.owner, batch.credential, groups=frozenset(batch.groups))
            try:
                site = (await self.federation.place_or_cold_start(owner, batch.model, None))[0]
            except (ModelStartingError, NoSiteAvailableError) as exc:
                logger.info("batch %s waits for %s: %s", batch.id, batch.model, exc.message)
                return
            except GatewayError as exc:  # the model cannot be started there
                await self._fail(batch, exc.code or "no_site", exc.message)
                return
            batch.attempt += 1
            batch.site = site
            batch.submission_id = f"first-{batch.id}-{batch.attempt}"
            batch.log_seq = 0
            if not await self._save(batch):
                return
        site = batch.site
        parts = _parts(lines, self.config.stage_part_bytes)
        client = self.federation.clients[site]
        for number, part in enumerate(parts):
            await client.stage_batch(batch.submission_id, number, part)
        submitted = await client.submit_batch(
            batch.submission_id, batch.model, batch.endpoint, len(parts)
        )
        if submitted.dashboard_url is None:  # a Slurm job ended between placement and now
            logger.info("batch %s: %s; placing it again", batch.id, submitted.waiting)
            batch.submission_id, batch.attempt = None, batch.attempt - 1  # it never started
            await self._save(batch)
            return
        batch.dashboard_url = submitted.dashboard_url
        batch.status = "in_progress"
        batch.in_progress_at = batch.in_progress_at or int(time.time())
        await self._save(batch)
        logger.info(
            "batch %s: %d lines submitted to %s as Ray job %s",
            batch.id,
            len(lines),
            site,
            batch.submission_id,
        )

    def _unanswered(self, batch: BatchRecord) -> list[str]:
        """The job's input: the lines without a result yet, as the site gets them."""
        answered = self.store.answered_lines(batch.id)
        content = self.store.file_path(batch.input_file_id).read_text()
        lines = []
        for index, line in enumerate(read_lines(content)):
            if index not in answered:
                body = site_body(line).model_dump(mode="json", exclude_none=True)
                lines.append(
                    json.dumps({"index": index, "custom_id": line.custom_id, "body": body})
                )
        return lines

    # -- collecting ---------------------------------------------------------

    async def _collect(self, batch: BatchRecord) -> None:
        """Store the job's new results; when it has ended, move the batch on."""
        if batch.submission_id is None or batch.dashboard_url is None or batch.site is None:
            if batch.status == "cancelling":
                await self._finalize(batch, "cancelled")
            return
        client = self.federation.clients[batch.site]
        while True:
            started = time.monotonic()
            answer = await client.poll_batch(
                batch.dashboard_url, batch.submission_id, batch.log_seq
            )
            took = time.monotonic() - started
            self._next_poll[batch.id] = started + took / POLL_SHARE
            results: list[BatchResult] = list(answer.results)
            if results:
                batch.log_seq = answer.results[-1].seq
                if not await self._save(batch, results):
                    return
                failed = sum(r.kind == "error" for r in results)
                self.metrics.batch_results(batch.model or "", len(results) - failed, failed)
            if not answer.more:
                break
        await self._after_poll(batch, answer)

    async def _after_poll(self, batch: BatchRecord, answer: BatchPoll) -> None:
        state = answer.state
        self._unreachable[batch.id] = (
            self._unreachable.get(batch.id, 0) + 1 if state == "UNREACHABLE" else 0
        )
        if answer.done:
            await self._finalize(
                batch, "cancelled" if batch.status == "cancelling" else "completed"
            )
            return
        lost = state in (*batch_jobs.TERMINAL_JOB_STATES, "MISSING") or (
            self._unreachable[batch.id] >= UNREACHABLE_POLLS
        )
        if not lost:
            return
        if batch.status == "cancelling":
            await self._finalize(batch, "cancelled")
        elif batch.attempt < self.config.max_attempts:
            logger.warning(
                "batch %s: Ray job %s ended early (%s: %s); running the lines left again",
                batch.id,
                batch.submission_id,
                state,
                answer.message,
            )
            batch.status, batch.submission_id = "validating", None
            await self._save(batch)
        else:
            await self._fail(
                batch,
                "batch_job_failed",
                f"The batch's Ray job ended early {batch.attempt} times; the last time: "
                f"{state}: {answer.message}",
            )

    async def _stop_job(self, batch: BatchRecord) -> None:
        if batch.submission_id and batch.dashboard_url and batch.site:
            client = self.federation.clients[batch.site]
            await client.stop_batch(batch.dashboard_url, batch.submission_id)

    # -- ending -------------------------------------------------------------

    async def _fail(self, batch: BatchRecord, code: str, message: str) -> None:
        logger.warning("batch %s failed: %s", batch.id, message)
        batch.errors = BatchErrors(data=[BatchError(code=code, message=message)])
        await self._finalize(batch, "failed")

    async def _finalize(self, batch: BatchRecord, outcome: str) -> None:
        """Write the output and error files from the stored results, then the final status.

        Lines that never ran get an error line when the batch expired or
        failed (every custom_id is then accounted for); a cancelled batch
        keeps only what ran, as OpenAI's do.
        """
        if batch.status != "finalizing":
            batch.status, batch.finalizing_at = "finalizing", int(time.time())
            if not await self._save(batch):
                return
        unanswered: list[BatchResult] = []
        if outcome in ("expired", "failed"):
            unanswered = await asyncio.to_thread(self._never_ran, batch, outcome)
            if not await self._save(batch, unanswered):
                return
            self.metrics.batch_results(batch.model or "", 0, len(unanswered))
        completed, failed = await asyncio.to_thread(self.store.result_counts, batch.id)
        await asyncio.to_thread(self._account, batch)
        batch.output_file_id = await asyncio.to_thread(self._write_file, batch, "output")
        batch.error_file_id = await asyncio.to_thread(self._write_file, batch, "error")
        batch.request_counts = BatchRequestCounts(
            total=batch.request_counts.total, completed=completed, failed=failed
        )
        batch.status = outcome  # type: ignore[assignment]
        setattr(batch, f"{outcome}_at", int(time.time()))
        if await self._save(batch):
            await asyncio.to_thread(self.store.delete_results, batch.id)
            self._steps.pop(batch.id, None)
            self._unreachable.pop(batch.id, None)
            self._next_poll.pop(batch.id, None)
            logger.info("batch %s %s: %d done, %d failed", batch.id, outcome, completed, failed)

    def _account(self, batch: BatchRecord) -> None:
        """One usage record per line that ran, as for an interactive request."""
        ledger = self.ledger
        if ledger is None:
            return
        now = time.time()
        for kind in ("output", "error"):
            for raw in self.store.results(batch.id, kind):
                line = json.loads(raw)
                response = line.get("response")
                if not response or response.get("request_id") is None:
                    continue  # answered by the gateway itself, or never ran
                usage = (response.get("body") or {}).get("usage") or {}
                ledger.record(
                    UsageRecord(
                        time=now,
                        request_id=response["request_id"],
                        user=batch.owner,
                        credential=batch.credential,
                        route=f"batch:{batch.endpoint}",
                        model=batch.model or "",
                        site=batch.site,
                        status=response["status_code"],
                        prompt_tokens=usage.get("prompt_tokens") or 0,
                        completion_tokens=usage.get("completion_tokens") or 0,
                        latency_s=0.0,
                    )
                )

    def _never_ran(self, batch: BatchRecord, outcome: str) -> list[BatchResult]:
        answered = self.store.answered_lines(batch.id)
        content = self.store.file_path(batch.input_file_id).read_text()
        code, message = {
            "expired": ("batch_expired", "The batch expired before this request ran."),
            "failed": ("batch_failed", "The batch failed before this request ran."),
        }[outcome]
        return [
            unanswered_result(index, line.custom_id, code, message)
            for index, line in enumerate(read_lines(content))
            if index not in answered
        ]

    def _write_file(self, batch: BatchRecord, kind: str) -> str | None:
        """The batch's output or error file (an id fixed by the batch: written once)."""
        lines = [line + "\n" for line in self.store.results(batch.id, kind)]
        if not lines:
            return None
        content = "".join(lines).encode()
        record = FileRecord(
            id=f"file-{batch.id.removeprefix('batch_')}-{kind}",
            bytes=len(content),
            created_at=int(time.time()),
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            owner=batch.owner,
            lines=len(lines),
        )
        if self.store.get_file(record.id) is None:
            self.store.add_file(record, content)
        return record.id

    # -- plumbing -----------------------------------------------------------

    async def _save(self, batch: BatchRecord, results: list[BatchResult] | None = None) -> bool:
        saved = await asyncio.to_thread(self.store.save_batch, batch, self.owner, results or ())
        if not saved:
            logger.warning("batch %s: lease lost; another gateway process has it", batch.id)
            self._steps.pop(batch.id, None)
        return saved


def _parts(lines: list[str], part_bytes: int) -> list[list[str]]:
    """The lines in parts of at most `part_bytes` (a longer line goes alone)."""
    parts: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if parts[-1] and size + len(line) + 1 > part_bytes:
            parts.append([])
            size = 0
        parts[-1].append(line)
        size += len(line) + 1
    return parts
