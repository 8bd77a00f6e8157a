"""OpenAI's Files and Batches wire objects, as the `openai` client reads them.

The same models are the store's records: a batch's internal bookkeeping
(where it runs, its Ray job, who supervises it) lives in `BatchRecord`
beside the public fields and never reaches the wire.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
# Statuses a supervisor still has work to do in.
ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FilePurpose = Literal["batch", "batch_output"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileRecord(FileObject):
    owner: str
    lines: int = Field(description="Requests in the file (input files).")

    def wire(self) -> FileObject:
        return FileObject.model_validate(self.model_dump(exclude={"owner", "lines"}))


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class CreateBatchRequest(BaseModel):
    """`POST /v1/batches`, as OpenAI takes it."""

    input_file_id: str = Field(min_length=1)
    endpoint: BatchEndpoint
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512."""
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("at most 16 key-value pairs")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError(f"{key[:64]!r}: keys are at most 64 characters, values 512")
        return value


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: BatchEndpoint
    model: str | None = Field(None, description="The model the batch's lines name.")
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    metadata: dict[str, str] | None = None


class BatchRecord(BatchObject):
    """A batch as the store keeps it: the wire object and how it is being run."""

    owner: str
    credential: Literal["api-key", "globus", "anonymous"] = "api-key"
    groups: list[str] = Field(default_factory=list, description="The owner's, at creation.")
    site: str | None = None
    attempt: int = Field(0, description="Ray jobs submitted so far (one per attempt).")
    submission_id: str | None = None
    dashboard_url: str | None = None
    log_seq: int = Field(0, description="Results of the current Ray job already collected.")
    cancel_requested_at: float | None = Field(
        None, description="When the owner asked to cancel; the supervisor acts on it."
    )

    def wire(self) -> BatchObject:
        return BatchObject.model_validate(
            self.model_dump(exclude=set(BatchRecord.model_fields) - set(BatchObject.model_fields))
        )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
