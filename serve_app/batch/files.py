"""Batch input files: checked line by line at upload, turned into site requests at creation.

Two levels of checking, as OpenAI does it. An upload is refused whole when
the file is not a batch file at all (not JSONL, a line without `custom_id`,
`method`, `url` or `body`, an unknown endpoint, a repeated `custom_id`, too
many lines), naming the first bad line. A line whose *request* is wrong (an
invalid body, a model nobody serves) does not fail the batch: it gets its
own entry in the batch's error file, with the error the same request would
get interactively.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.batch_jobs import BatchResult
from deployments.openai_errors import describe_request_errors, field_path, lone_surrogate_at
from serve_app.batch.protocol import BatchEndpoint
from serve_app.errors import GatewayError, InvalidRequestError
from serve_app.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIModel,
)

REQUEST_MODELS: dict[str, type[OpenAIModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


class BatchInputLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: BatchEndpoint
    body: dict


class FileTooLargeError(InvalidRequestError):
    code = "file_too_large"


class InvalidFileError(InvalidRequestError):
    code = "invalid_file"


def check_batch_file(content: bytes, max_lines: int) -> int:
    """The number of requests in a batch input file; InvalidFileError names the first bad line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFileError(
            f"The file is not UTF-8 text (byte {exc.start}).", param="file"
        ) from None
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        line = parse_line(raw, number)
        if line.custom_id in seen:
            raise InvalidFileError(
                f"Line {number}: custom_id {line.custom_id!r} is already used on line "
                f"{seen[line.custom_id]}; each request needs its own.",
                param="file",
            )
        seen[line.custom_id] = number
        if len(seen) > max_lines:
            raise InvalidFileError(
                f"The file has more than {max_lines} requests, the most one batch takes.",
                param="file",
            )
    if not seen:
        raise InvalidFileError("The file holds no requests.", param="file")
    return len(seen)


def parse_line(raw: str, number: int) -> BatchInputLine:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidFileError(
            f"Line {number} is not JSON ({exc.msg}); the file must be JSONL, one request per line.",
            param="file",
        ) from None
    except RecursionError:
        raise InvalidFileError(f"Line {number} is nested too deeply.", param="file") from None
    # A surrogate can only come in as a JSON escape: look further only when one may be there.
    if "\\ud" in raw.lower() and (location := lone_surrogate_at(data)) is not None:
        where = ".".join(str(part) for part in location) or "line"
        raise InvalidFileError(
            f"Line {number}: {where}: a lone UTF-16 surrogate is not a character.", param="file"
        )
    try:
        return BatchInputLine.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = field_path(error["loc"]) or "line"
        raise InvalidFileError(f"Line {number}: {where}: {error['msg']}.", param="file") from None


def read_lines(content: str) -> Iterator[BatchInputLine]:
    """The requests of a file that passed `check_batch_file`, in order."""
    number = 0
    for raw in content.splitlines():
        if raw.strip():
            number += 1
            yield parse_line(raw, number)


def site_body(line: BatchInputLine) -> OpenAIModel:
    """The request a site gets for a line; InvalidRequestError as interactively, if it is bad."""
    try:
        body = REQUEST_MODELS[line.url].model_validate(line.body)
    except ValidationError as exc:
        message, param, _ = describe_request_errors(list(exc.errors()))
        raise InvalidRequestError(message, param=param) from None
    if getattr(body, "stream", None):
        raise InvalidRequestError("Batch requests cannot stream; drop `stream`.", param="stream")
    return body


def error_result(index: int, custom_id: str, error: GatewayError) -> BatchResult:
    """An error-file line for a request the gateway answered itself, shaped like a site's."""
    response = {"status_code": error.status, "request_id": None, "body": error.body()}
    return _error_line(index, custom_id, response, None)


def unanswered_result(index: int, custom_id: str, code: str, message: str) -> BatchResult:
    """An error-file line for a request that never ran (the batch expired or failed first)."""
    return _error_line(index, custom_id, None, {"code": code, "message": message})


def _error_line(
    index: int, custom_id: str, response: dict | None, error: dict | None
) -> BatchResult:
    line = {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return BatchResult(index=index, kind="error", line=line)
