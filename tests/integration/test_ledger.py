"""The usage ledger: one record per request, token totals equal to what clients were told,
no credential anywhere, nothing lost on a clean shutdown."""

from __future__ import annotations

import csv
import subprocess
import uuid

import openai
import pytest

from serve_app.store import SqliteStore
from tests.conftest import (
    ADMINS,
    FIRST,
    INSIDERS,
    MEMBERS,
    SIMULATED_MODEL,
    VLLM_MODEL,
    globus_user,
    records_of,
    start_standalone,
)
from tests.support.waiting import eventually

HELLO = [{"role": "user", "content": "Count to ten"}]


def usage_of_stream(stream) -> tuple[int, int, str]:
    chunks = list(stream)
    usage = chunks[-1].usage
    return usage.prompt_tokens, usage.completion_tokens, chunks[0].id


def test_ledger_totals_equal_the_usage_clients_saw(stack):
    user = f"ledger-{uuid.uuid4().hex[:8]}"
    client = stack.client(stack.key(user, [MEMBERS, INSIDERS]))
    seen: list[tuple[int, int]] = []
    for model in (VLLM_MODEL, SIMULATED_MODEL):
        plain = client.chat.completions.create(model=model, messages=HELLO, max_tokens=5)
        seen.append((plain.usage.prompt_tokens, plain.usage.completion_tokens))
        text = client.completions.create(model=model, prompt="one two", max_tokens=4)
        seen.append((text.usage.prompt_tokens, text.usage.completion_tokens))
        stream = client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        seen.append(usage_of_stream(stream)[:2])
        stream = client.completions.create(
            model=model,
            prompt="a b c",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        seen.append(usage_of_stream(stream)[:2])
    records = records_of(stack.store_path, user, len(seen))
    assert len(records) == len(seen)
    assert sum(r.prompt_tokens for r in records) == sum(p for p, _ in seen)
    assert sum(r.completion_tokens for r in records) == sum(c for _, c in seen)
    assert {r.status for r in records} == {200}
    assert {r.site for r in records} == {"local"}
    assert {r.credential for r in records} == {"api-key"}
    assert all(r.request_id and r.latency_s > 0 for r in records)
    assert all(r.prompt is None and r.completion is None for r in records)


def test_a_stream_without_usage_is_metered_and_the_client_gets_no_usage_chunk(stack):
    user = f"ledger-{uuid.uuid4().hex[:8]}"
    client = stack.client(stack.key(user, [MEMBERS]))
    chunks = list(
        client.chat.completions.create(model=VLLM_MODEL, messages=HELLO, max_tokens=7, stream=True)
    )
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    (record,) = records_of(stack.store_path, user, 1)
    assert record.completion_tokens == 7 and record.prompt_tokens > 0


def test_refused_requests_are_recorded_without_tokens(stack, globus_auth):
    token = f"tok-ledger-{uuid.uuid4().hex}"
    identity = globus_user(f"led{uuid.uuid4().hex[:6]}", [MEMBERS])
    globus_auth.issue(token, identity)
    client = stack.client(token)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=SIMULATED_MODEL, messages=HELLO, max_tokens=2)
    (record,) = records_of(stack.store_path, identity.username, 1)
    assert (record.status, record.site, record.credential) == (403, None, "globus")
    assert record.prompt_tokens == record.completion_tokens == 0


def test_no_credential_is_written_to_logs_or_the_ledger(stack, globus_auth):
    token = f"tok-secret-{uuid.uuid4().hex}"
    globus_auth.issue(token, globus_user("sec", [MEMBERS]))
    key = stack.key("secret-keeper", [MEMBERS])
    for credential in (token, key, stack.api_key):
        stack.client(credential).chat.completions.create(
            model=VLLM_MODEL, messages=HELLO, max_tokens=2
        )
    records_of(stack.store_path, "secret-keeper", 1)
    secrets = [token.encode(), key.encode(), stack.api_key.encode()]
    places = [stack.store_path, *stack.workdir.rglob("*"), *stack.ray_temp.rglob("*")]
    searched = 0
    for path in places:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            searched += 1
            for secret in secrets:
                assert secret not in data, f"a credential is written in {path}"
    assert searched > 10  # the logs of the gateway, its replicas and Ray were read


def test_a_clean_shutdown_writes_every_record(stack, globus_auth, tmp_path):
    user = f"shutdown-{uuid.uuid4().hex[:8]}"
    key = stack.key(user, [MEMBERS])
    # Records would wait a minute for their batch: only the shutdown writes them.
    gateway, url = start_standalone(
        stack, tmp_path, globus_auth, ledger={"flush_interval_s": 60, "batch_size": 1000}
    )
    try:
        client = stack.client(key, url=url)
        for _ in range(5):
            client.completions.create(model=VLLM_MODEL, prompt="hi", max_tokens=1)
        assert SqliteStore(stack.store_path).usage(user) == []
    finally:
        gateway.stop()
    assert len(SqliteStore(stack.store_path).usage(user)) == 5


pytestmark = pytest.mark.slow


def test_first_usage_and_the_usage_route_sum_the_ledger(stack):
    user = f"report-{uuid.uuid4().hex[:8]}"
    client = stack.client(stack.key(user))
    answers = [
        client.chat.completions.create(model=VLLM_MODEL, messages=HELLO, max_tokens=3)
        for _ in range(3)
    ]
    records_of(stack.store_path, user, 3)
    tokens = sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in answers)

    result = subprocess.run(
        [FIRST, "usage", "--config", str(stack.federation_path), "--since", "1h", "--csv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["user"]: row for row in csv.DictReader(result.stdout.splitlines())}
    assert (rows[user]["requests"], rows[user]["errors"]) == ("3", "0")
    assert int(rows[user]["total_tokens"]) == tokens

    with stack.http(stack.key("usage-admin", [MEMBERS, ADMINS])) as admin:
        report = admin.get("/v1/usage", params={"since": "1h", "by": "user"})
        assert report.status_code == 200, report.text
        mine = {row["key"]: row for row in report.json()["data"]}[user]
        assert (mine["requests"], mine["total_tokens"]) == (3, tokens)
        bad = admin.get("/v1/usage", params={"since": "last week"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    with stack.http(stack.key(user)) as member:
        refused = member.get("/v1/usage")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"


def test_the_terminal_gets_no_line_per_request_and_serves_files_keep_them(stack):
    """Ray forwards every replica's stderr to the terminal of `first gateway up`; the
    access log lines of the gateway's and the site's ingress replicas stay in Serve's files,
    in the folder the config names (`.first/logs/serve` in the shipped one) and the banner
    shows."""
    with stack.http() as http:
        for _ in range(3):
            assert http.get("/v1/models").status_code == 200

    def in_serve_files() -> bool:
        logs = stack.workdir / "serve-logs"
        return any(
            "GET /v1/models 200" in log.read_text(errors="replace")
            for log in logs.glob("replica_*FederatedIngress*.log")
        )

    eventually(in_serve_files, 30, "the access log lines in Serve's files", interval_s=0.5)
    process = stack.process
    terminal = process.log_path.read_text(errors="replace") + process.out_path.read_text()
    assert f"Per-request logs: {stack.workdir / 'serve-logs'}/" in terminal
    assert "-- GET /v1/models 200" not in terminal
    assert "-- POST /v1/chat/completions 200" not in terminal
