"""OpenAI's Files and Batches API: upload JSONL, run it as a batch, download the results."""

# No `from __future__ import annotations`: FastAPI must see the Annotated query model.
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.responses import StreamingResponse

from serve_app.batch.protocol import (
    BatchList,
    BatchObject,
    CreateBatchRequest,
    FileDeleted,
    FileList,
    FileObject,
)
from serve_app.errors import InvalidRequestError, UnsupportedMediaTypeError, documented_errors
from serve_app.routes.dependencies import BatchesDep, CallerDep

router = APIRouter(tags=["batch"])


class FileListQuery(BaseModel):
    purpose: str | None = None
    after: str | None = None
    limit: int = Field(10_000, ge=1, le=10_000)
    order: Literal["asc", "desc"] = "desc"


ERRORS = documented_errors(400, 401, 403, 404, 409, 413, 415, 500, 503)
UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


@router.post("/v1/files", response_model=FileObject, responses=ERRORS, openapi_extra=UPLOAD_FORM)
async def upload_file(request: Request, batches: BatchesDep, caller: CallerDep) -> FileObject:
    """Upload a batch input file (JSONL, one request per line); it is checked at once."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            "Upload the file as multipart/form-data with the fields `file` and `purpose`."
        )
    async with request.form(max_files=1, max_fields=4) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("The form has no `file` part.", param="file")
        if not isinstance(purpose, str):
            raise InvalidRequestError("The form has no `purpose` field.", param="purpose")
        content = await upload.read()
        return await batches.upload(caller, upload.filename or "upload.jsonl", purpose, content)


@router.get("/v1/files", response_model=FileList, responses=ERRORS)
async def list_files(
    batches: BatchesDep, caller: CallerDep, query: Annotated[FileListQuery, Query()]
) -> FileList:
    """Your files, newest first unless `order=asc`; page with `after` (a file id)."""
    return batches.files(caller, query.purpose, query.after, query.limit, query.order)


@router.get("/v1/files/{file_id}", response_model=FileObject, responses=ERRORS)
async def get_file(file_id: str, batches: BatchesDep, caller: CallerDep) -> FileObject:
    return batches.file(caller, file_id).wire()


@router.get(
    "/v1/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
)
async def file_content(file_id: str, batches: BatchesDep, caller: CallerDep) -> StreamingResponse:
    """The file's bytes: an input file as uploaded, or a batch's output or error JSONL."""
    return StreamingResponse(
        batches.content(caller, file_id), media_type="application/octet-stream"
    )


@router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=ERRORS)
async def delete_file(file_id: str, batches: BatchesDep, caller: CallerDep) -> FileDeleted:
    return batches.delete_file(caller, file_id)


@router.post("/v1/batches", response_model=BatchObject, responses=ERRORS)
async def create_batch(
    body: CreateBatchRequest, batches: BatchesDep, caller: CallerDep
) -> BatchObject:
    """Run an uploaded file's requests as a batch on a site that serves their model.

    Lines whose request is invalid, or names a model you cannot use, go to
    the error file; the rest run as one Ray job at the site.
    """
    return await batches.create(caller, body)


@router.get("/v1/batches", response_model=BatchList, responses=ERRORS)
async def list_batches(
    batches: BatchesDep,
    caller: CallerDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> BatchList:
    """Your batches, newest first; page with `after` (a batch id)."""
    return batches.batches(caller, after, limit)


@router.get("/v1/batches/{batch_id}", response_model=BatchObject, responses=ERRORS)
async def get_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> BatchObject:
    """The batch, with its request counts as they stand."""
    return batches.batch(caller, batch_id)


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject, responses=ERRORS)
async def cancel_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> BatchObject:
    """Stop the batch; results so far are kept in its output and error files."""
    return batches.cancel(caller, batch_id)
