"""Batch input files: what an upload refuses, and how a line becomes a site request."""

from __future__ import annotations

import json

import pytest

from serve_app.batch.files import (
    InvalidFileError,
    check_batch_file,
    read_lines,
    site_body,
)
from serve_app.batch.supervisor import _parts
from serve_app.errors import InvalidRequestError


def line(custom_id: str = "a", url: str = "/v1/chat/completions", **body) -> str:
    body = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_a_good_file_counts_its_requests_and_skips_blank_lines():
    content = f"{line('a')}\n\n{line('b')}\n".encode()
    assert check_batch_file(content, max_lines=10) == 2
    assert [request.custom_id for request in read_lines(content.decode())] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe", ["not UTF-8"]),
        (b"{not json", ["Line 1 is not JSON"]),
        (f"{line('a')}\n[1, 2]".encode(), ["Line 2"]),
        (json.dumps({"custom_id": "a", "method": "POST", "body": {}}).encode(), ["Line 1", "url"]),
        (line(url="/v1/images").encode(), ["Line 1", "url"]),
        (
            json.dumps(
                {"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}
            ).encode(),
            ["method"],
        ),
        (line(custom_id="").encode(), ["custom_id"]),
        (f"{line('a')}\n{line('a')}".encode(), ["Line 2", "'a'", "line 1"]),
        (b"   \n", ["no requests"]),
        ("\n".join(line(str(i)) for i in range(4)).encode(), ["more than 3"]),
        (f"{line('a')}\n{'[' * 10_000}{']' * 10_000}".encode(), ["Line 2", "nested too deeply"]),
        (
            line(model="m", messages=[{"role": "user", "content": "a\ud800b"}]).encode(),
            ["Line 1", "body.messages.0.content", "surrogate"],
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(content, words):
    with pytest.raises(InvalidFileError) as caught:
        check_batch_file(content, max_lines=3)
    for word in words:
        assert word in caught.value.message
    assert caught.value.status == 400 and caught.value.param == "file"


def test_a_line_with_a_bad_request_fails_alone_as_it_would_interactively():
    (bad,) = read_lines(line(model="m", max_tokens=0))
    with pytest.raises(InvalidRequestError) as caught:
        site_body(bad)
    assert caught.value.param in ("messages", "max_tokens")
    (streaming,) = read_lines(
        line(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    with pytest.raises(InvalidRequestError, match="stream"):
        site_body(streaming)


def test_staged_parts_stay_under_the_size_and_keep_the_order():
    lines = [f"line-{i:03d}" for i in range(100)]  # 8 characters and a newline each
    parts = _parts(lines, part_bytes=90)
    assert [len(part) for part in parts] == [10] * 10
    assert [item for part in parts for item in part] == lines
    assert _parts(["x" * 500], part_bytes=90) == [["x" * 500]]
