"""The Batch API end to end: the official `openai` client, real Ray jobs on the stack's site,
the tiny vLLM model answering every line.

Each batch runs as a Ray job submitted to the site's Ray cluster (the stack's
own: the site is colocated), which sends the lines to the model's Serve
deployment; the gateway collects the results from the job's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import openai
import pytest
from openai.types import Batch

from tests.conftest import FIRST, MEMBERS, VLLM_MODEL, make_key, start_standalone
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
ENDED = ("completed", "failed", "cancelled", "expired")
CHAT = "/v1/chat/completions"


def request_line(custom_id: str, body: dict, url: str = CHAT) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat(content: str, max_tokens: int = 8, **extra) -> dict:
    messages = [{"role": "user", "content": content}]
    return {"model": VLLM_MODEL, "messages": messages, "max_tokens": max_tokens, **extra}


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    content = ("\n".join(lines) + "\n").encode()
    return client.files.create(file=("input.jsonl", content), purpose="batch").id


def wait_until(client: openai.OpenAI, batch_id: str, done, timeout_s: float = 240):
    def reached() -> Batch:
        batch = client.batches.retrieve(batch_id)
        assert done(batch), f"batch {batch_id} still {batch.status}: {batch}"
        return batch

    what = f"batch {batch_id} to reach the awaited state"
    return eventually(reached, timeout_s, what, interval_s=0.5, retry_on=(AssertionError,))


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def long_batch(count: int) -> list[str]:
    """Lines that each generate up to the model's context: long enough to act mid-run."""
    return [
        request_line(f"long-{i}", chat(f"story {i}", max_tokens=200, ignore_eos=True))
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return stack.client(stack.api_key, timeout=60)


def test_a_batch_answers_every_line_and_puts_bad_lines_in_the_error_file(client):
    lines = [request_line(f"req-{i}", chat(f"Hello {i}")) for i in range(50)]
    lines[10] = request_line("req-10", {"model": VLLM_MODEL, "max_tokens": 8})  # no messages
    lines[20] = request_line("req-20", {**chat("Hello"), "model": "no-such-model"})
    file_id = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"project": "tests"},
    )
    assert batch.status == "validating" and batch.request_counts.total == 50
    batch = wait_until(client, batch.id, lambda b: b.status in ENDED)

    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (48, 2)
    assert batch.metadata == {"project": "tests"} and batch.model == VLLM_MODEL
    assert batch.in_progress_at and batch.completed_at >= batch.in_progress_at
    outputs, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert len(outputs) == 48 and len(errors) == 2
    ids = [line["custom_id"] for line in outputs + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(50))
    for line in outputs:
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"] is not None
        assert line["response"]["body"]["usage"]["completion_tokens"] > 0
    by_id = {line["custom_id"]: line["response"] for line in errors}
    assert by_id["req-10"]["status_code"] == 400
    assert by_id["req-10"]["body"]["error"]["param"] == "messages"
    assert by_id["req-20"]["status_code"] == 404
    assert by_id["req-20"]["body"]["error"]["code"] == "model_not_found"
    # The files are the caller's: listed, downloadable, deletable once the batch ended.
    listed = {f.id for f in client.files.list()}
    assert {file_id, batch.output_file_id, batch.error_file_id} <= listed
    assert batch.id in {b.id for b in client.batches.list(limit=100)}
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_cancelling_a_running_batch_keeps_what_ran(client):
    batch = client.batches.create(
        input_file_id=upload(client, long_batch(600)), endpoint=CHAT, completion_window="24h"
    )
    running = wait_until(client, batch.id, lambda b: b.request_counts.completed > 0)
    assert running.status == "in_progress"
    with pytest.raises(openai.ConflictError):  # the input of a running batch stays
        client.files.delete(running.input_file_id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait_until(client, batch.id, lambda b: b.status in ENDED, timeout_s=60)

    assert batch.status == "cancelled" and batch.cancelled_at
    done = batch.request_counts.completed
    assert 0 < done < 600, batch.request_counts
    outputs = lines_of(client, batch.output_file_id)
    assert len(outputs) == done == len({line["custom_id"] for line in outputs})
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_batch_survives_its_gateway_stopping_and_nothing_is_duplicated(
    stack, tmp_path, globus_auth, signum
):
    """SIGTERM: the gateway drains and exits, handing its lease back; SIGKILL: no clean
    shutdown, so the next gateway takes the batch over once the lease expires."""
    sections = {
        "store": {"path": str(tmp_path / "restart.db")},
        "batch": {"poll_interval_s": 0.5, "lease_s": 3},
    }
    gateway, url = start_standalone(stack, tmp_path, globus_auth, **sections)
    key = make_key(tmp_path / "federation.yaml", "restart-tester", [MEMBERS])
    client = stack.client(key, url=url, timeout=60)
    count = 160
    batch = client.batches.create(
        input_file_id=upload(client, long_batch(count)), endpoint=CHAT, completion_window="24h"
    )
    wait_until(client, batch.id, lambda b: b.request_counts.completed > 0)
    os.killpg(gateway.process.pid, signum)
    assert gateway.process.wait(timeout=60) == (0 if signum == signal.SIGTERM else -signum)

    again, url = start_standalone(stack, tmp_path, globus_auth, **sections)
    try:
        client = stack.client(key, url=url, timeout=60)
        batch = wait_until(client, batch.id, lambda b: b.status in ENDED, timeout_s=600)
        outputs = lines_of(client, batch.output_file_id)
    finally:
        again.stop()
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (count, 0)
    ids = [line["custom_id"] for line in outputs]
    assert sorted(ids) == sorted(f"long-{i}" for i in range(count))
    assert batch.error_file_id is None


def test_first_batch_submit_waits_and_downloads(stack, tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"p{i}",
                    "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    env = {**os.environ, "FIRST_URL": stack.gateway_url, "FIRST_API_KEY": stack.api_key}
    result = subprocess.run(
        [
            FIRST,
            "batch",
            "submit",
            str(source),
            "--model",
            VLLM_MODEL,
            "--wait",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    batch_id = result.stdout.strip()
    output = tmp_path / f"{batch_id}_output.jsonl"
    assert len(output.read_text().splitlines()) == 12
    status = subprocess.run(
        [FIRST, "batch", "status", batch_id], capture_output=True, text=True, env=env, timeout=60
    )
    assert "completed" in status.stdout and "completed=12" in status.stdout
    missing = subprocess.run(
        [FIRST, "batch", "cancel", "batch_nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == ["Error: 404: No batch with id 'batch_nope'."]


# -- refused input: each a clear OpenAI-shaped error, nothing stored ----------


def refused(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


def post_file(http: httpx.Client, content: bytes, purpose: str = "batch") -> httpx.Response:
    return http.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": purpose})


def test_bad_uploads_are_refused_naming_the_line(stack):
    good = request_line("a", chat("hi"))
    with stack.http() as http:
        refused(post_file(http, b"custom_id,body\nx,y\n"), 400, "file", "Line 1", "JSONL")
        duplicate = f"{good}\n{request_line('b', chat('hi'))}\n{good}\n".encode()
        refused(post_file(http, duplicate), 400, "file", "Line 3", "'a'", "line 1")
        unknown = request_line("a", chat("hi"), url="/v1/images/generations").encode()
        refused(post_file(http, unknown), 400, "file", "Line 1", "url")
        refused(post_file(http, b"\n\n"), 400, "file", "no requests")
        deep = ("[" * 10_000 + "]" * 10_000).encode()
        refused(post_file(http, f"{good}\n".encode() + deep), 400, "file", "Line 2", "nested")
        # json.dumps escapes it: "\ud800", valid JSON, and no UTF-8 can carry it.
        surrogate = request_line("b", chat("a\ud800b")).encode()
        where = "body.messages.0.content"
        refused(post_file(http, surrogate), 400, "file", "Line 1", where, "surrogate")
        refused(post_file(http, good.encode(), purpose="fine-tune"), 400, "purpose", "batch")
        no_file = http.post("/v1/files", data={"purpose": "batch"}, files={"x": ("a", b"b")})
        refused(no_file, 400, "file", "file")
        as_json = http.post("/v1/files", json={"purpose": "batch"})
        assert as_json.status_code == 415


def test_bad_batches_are_refused(stack):
    with stack.http() as http:
        missing = http.post("/v1/batches", json={"input_file_id": "file-nope", "endpoint": CHAT})
        refused(missing, 400, "input_file_id", "file-nope")
        file_id = post_file(http, request_line("a", chat("hi")).encode()).json()["id"]
        wrong_endpoint = http.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"}
        )
        refused(wrong_endpoint, 400, "input_file_id", "Line 1", CHAT)
        window = http.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "1h"},
        )
        refused(window, 400, "completion_window")
        mixed = "\n".join(
            [request_line("a", chat("hi")), request_line("b", {**chat("hi"), "model": "sim-llama"})]
        )
        mixed_id = post_file(http, mixed.encode()).json()["id"]
        refused(
            http.post("/v1/batches", json={"input_file_id": mixed_id, "endpoint": CHAT}),
            400,
            "input_file_id",
            "several models",
        )
    # Another user's file and batch do not exist for you.
    with stack.http(stack.key("someone-else")) as other:
        refused(other.get(f"/v1/files/{file_id}"), 404, "file_id", file_id)
        refused(other.get("/v1/batches/batch_nope"), 404, "batch_id")


def test_a_file_over_the_limit_is_refused(stack, tmp_path, globus_auth):
    gateway, url = start_standalone(
        stack, tmp_path, globus_auth, batch={"max_file_bytes": 4096, "max_lines": 5}
    )
    try:
        key = make_key(tmp_path / "federation.yaml", "limit-tester", [MEMBERS])
        with stack.http(key, url=url) as http:
            big = "\n".join(request_line(f"r{i}", chat("x" * 100)) for i in range(30)).encode()
            refused(post_file(http, big), 400, "file", "4096")
            many = "\n".join(request_line(f"r{i}", chat("x")) for i in range(6)).encode()
            refused(post_file(http, many), 400, "file", "more than 5")
            huge = http.post(
                "/v1/files", files={"file": ("in.jsonl", b"x" * (2 * 1024 * 1024))}, data={}
            )
            assert huge.status_code == 413
    finally:
        gateway.stop()
