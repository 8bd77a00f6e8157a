"""The Files and Batches API behind the routes: uploads, batch creation, listing, cancel.

Creating a batch only checks it and stores it (`validating`); the batch
supervisor (serve_app/batch/supervisor.py) in some gateway process runs it.
Everything is scoped to its owner: another user's file or batch does not
exist for you.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

from deployments.batch_jobs import BatchResult
from serve_app.access.policy import Principal
from serve_app.batch.files import (
    FileTooLargeError,
    check_batch_file,
    error_result,
    read_lines,
    site_body,
)
from serve_app.batch.protocol import (
    ACTIVE_BATCH_STATUSES,
    BatchList,
    BatchObject,
    BatchRecord,
    BatchRequestCounts,
    CreateBatchRequest,
    FileDeleted,
    FileList,
    FileObject,
    FileRecord,
)
from serve_app.batch.store import BatchStore
from serve_app.config import BatchConfig
from serve_app.errors import ConflictError, GatewayError, InvalidRequestError, NotFoundError
from serve_app.routing.federation import Federation

COMPLETION_WINDOW_S = 24 * 3600


class FileInUseError(ConflictError):
    code = "file_in_use"


class BatchFileNotFoundError(NotFoundError):
    code = "file_not_found"


class BatchNotFoundError(NotFoundError):
    code = "batch_not_found"


class BatchService:
    def __init__(self, store: BatchStore, config: BatchConfig, federation: Federation):
        self.store = store
        self.config = config
        self.federation = federation
        self.woken = asyncio.Event()  # set when there is a new batch or cancel to act on

    # -- files --------------------------------------------------------------

    async def upload(
        self, caller: Principal, filename: str, purpose: str, content: bytes
    ) -> FileObject:
        if purpose != "batch":
            raise InvalidRequestError(
                f"purpose {purpose!r} is not supported here; upload batch input with "
                "purpose 'batch'.",
                param="purpose",
            )
        if len(content) > self.config.max_file_bytes:
            raise FileTooLargeError(
                f"The file is {len(content)} bytes; the most a batch file may be is "
                f"{self.config.max_file_bytes}.",
                param="file",
            )
        lines = await asyncio.to_thread(check_batch_file, content, self.config.max_lines)
        record = FileRecord(
            id=f"file-{secrets.token_hex(12)}",
            bytes=len(content),
            created_at=int(time.time()),
            filename=filename,
            purpose="batch",
            owner=caller.user,
            lines=lines,
        )
        await asyncio.to_thread(self.store.add_file, record, content)
        return record.wire()

    def file(self, caller: Principal, file_id: str, param: str = "file_id") -> FileRecord:
        record = self.store.get_file(file_id)
        if record is None or record.owner != caller.user:
            raise BatchFileNotFoundError(f"No file with id {file_id!r}.", param=param)
        return record

    def files(
        self, caller: Principal, purpose: str | None, after: str | None, limit: int, order: str
    ) -> FileList:
        records, more = self.store.list_files(caller.user, purpose, after, limit, order == "desc")
        data = [r.wire() for r in records]
        return FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )

    def content(self, caller: Principal, file_id: str) -> Iterator[bytes]:
        path = self.store.file_path(self.file(caller, file_id).id)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        return chunks()

    def delete_file(self, caller: Principal, file_id: str) -> FileDeleted:
        record = self.file(caller, file_id)
        if record.purpose == "batch":
            batches, _ = self.store.list_batches(caller.user, None, 10_000)
            busy = [b.id for b in batches if b.input_file_id == file_id and _active(b)]
            if busy:
                raise FileInUseError(
                    f"The file is the input of {busy[0]}, which is still running; cancel it first.",
                    param="file_id",
                )
        self.store.delete_file(file_id)
        return FileDeleted(id=file_id)

    # -- batches ------------------------------------------------------------

    async def create(self, caller: Principal, request: CreateBatchRequest) -> BatchObject:
        try:
            source = self.file(caller, request.input_file_id, param="input_file_id")
        except BatchFileNotFoundError as exc:
            raise InvalidRequestError(exc.message, param="input_file_id") from None
        if source.purpose != "batch":
            raise InvalidRequestError(
                f"{source.id} is a {source.purpose} file, not batch input.",
                param="input_file_id",
            )
        content = await asyncio.to_thread(self.store.file_path(source.id).read_text)
        model, errors = self._check_lines(caller, request.endpoint, content)
        now = int(time.time())
        record = BatchRecord(
            id=f"batch_{secrets.token_hex(12)}",
            endpoint=request.endpoint,
            model=model,
            input_file_id=source.id,
            completion_window=request.completion_window,
            status="validating",
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_S,
            request_counts=BatchRequestCounts(total=source.lines),
            metadata=request.metadata,
            owner=caller.user,
            credential=caller.credential,
            groups=sorted(caller.groups),
        )
        await asyncio.to_thread(self.store.add_batch, record, errors)
        self.woken.set()
        return self.wire(record)

    def _check_lines(
        self, caller: Principal, endpoint: str, content: str
    ) -> tuple[str | None, list[BatchResult]]:
        """The batch's model, and error results for the lines that cannot run.

        A batch runs one model, as OpenAI's do; lines naming a model nobody
        serves, or one the caller may not use, fail on their own.
        """
        models: dict[str, int] = {}
        errors: list[BatchResult] = []
        for index, line in enumerate(read_lines(content)):
            if line.url != endpoint:
                raise InvalidRequestError(
                    f"Line {index + 1} is for {line.url}, but the batch is for {endpoint}; "
                    "one batch holds requests for one endpoint.",
                    param="input_file_id",
                )
            try:
                body = site_body(line)
                self._require_model(caller, body.model)
            except GatewayError as exc:
                errors.append(error_result(index, line.custom_id, exc))
                continue
            models.setdefault(body.model, index + 1)
        if len(models) > 1:
            named = ", ".join(f"{m!r} (line {n})" for m, n in models.items())
            raise InvalidRequestError(
                f"The lines name several models: {named}. One batch runs one model.",
                param="input_file_id",
            )
        return next(iter(models), None), errors

    def _require_model(self, caller: Principal, model: str) -> None:
        if not any(model in site.models for site in self.federation.sites.values()):
            raise self.federation.unknown_model(caller, model, None)
        self.federation.policy.require_model(caller, model)

    def batch(self, caller: Principal, batch_id: str) -> BatchObject:
        return self.wire(self._owned(caller, batch_id))

    def _owned(self, caller: Principal, batch_id: str) -> BatchRecord:
        record = self.store.get_batch(batch_id)
        if record is None or record.owner != caller.user:
            raise BatchNotFoundError(f"No batch with id {batch_id!r}.", param="batch_id")
        return record

    def batches(self, caller: Principal, after: str | None, limit: int) -> BatchList:
        records, more = self.store.list_batches(caller.user, after, limit)
        data = [self.wire(r) for r in records]
        return BatchList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )

    def cancel(self, caller: Principal, batch_id: str) -> BatchObject:
        record = self._owned(caller, batch_id)
        if record.status not in ("validating", "in_progress", "cancelling"):
            raise InvalidRequestError(
                f"The batch is {record.status}; only a validating or running batch can be "
                "cancelled.",
                param="batch_id",
            )
        self.store.request_cancel(batch_id, time.time())
        self.woken.set()
        return self.batch(caller, batch_id)

    def wire(self, record: BatchRecord) -> BatchObject:
        """The public batch: live counts while it runs; a requested cancel shows at once."""
        batch = record.wire()
        if _active(record):
            completed, failed = self.store.result_counts(record.id)
            batch.request_counts = BatchRequestCounts(
                total=record.request_counts.total, completed=completed, failed=failed
            )
        if record.cancel_requested_at and record.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.cancelling_at = int(record.cancel_requested_at)
        return batch


def _active(record: BatchRecord) -> bool:
    return record.status in ACTIVE_BATCH_STATUSES
