"""Who may call what, through the Serve gateway (two replicas) with the official client.

Globus tokens are checked by the fake Globus Auth and Groups over real HTTP,
through globus-sdk's own code; API keys come from `first keys create`.
"""

from __future__ import annotations

import subprocess
import uuid

import openai
import pytest

from tests.conftest import (
    EMBEDDING_MODEL,
    FIRST,
    INSIDERS,
    MEMBERS,
    OTHER_IDP,
    RESTRICTED_MODEL,
    SHARERS,
    VLLM_MODEL,
    globus_user,
)
from tests.fakes.globus_auth import FakeIdentity
from tests.support.waiting import eventually

HELLO = [{"role": "user", "content": "Hello"}]
TRIBUNAL = "tiny-tribunal"  # the embedded default's (cluster_configs/local-federation.yaml)


@pytest.fixture(scope="module")
def tokens(globus_auth) -> dict[str, str]:
    """One Globus token of each kind the gateway must tell apart."""
    kinds = {
        "member": (globus_user("ann", [MEMBERS]), {}),
        "insider": (globus_user("ivy", [MEMBERS, INSIDERS]), {}),
        "inactive": (globus_user("ina", [MEMBERS]), {"active": False}),
        "expired": (globus_user("exp", [MEMBERS]), {"expires_in_s": -60}),
        "wrong-scope": (
            globus_user("wsc", [MEMBERS]),
            {"scope": "https://auth.globus.org/scopes/another-service/all"},
        ),
        "other-idp": (
            FakeIdentity(
                "eve@elsewhere.example.org", identity_provider=OTHER_IDP, groups=[MEMBERS]
            ),
            {},
        ),
        "not-in-group": (globus_user("nat", []), {}),
    }
    issued = {}
    for kind, (identity, options) in kinds.items():
        token = f"tok-{kind}-{uuid.uuid4().hex}"
        globus_auth.issue(token, identity, **options)
        issued[kind] = token
    return issued


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("inactive", openai.AuthenticationError, "invalid_api_key"),
        ("expired", openai.AuthenticationError, "invalid_api_key"),
        ("wrong-scope", openai.PermissionDeniedError, "permission_denied"),
        ("other-idp", openai.PermissionDeniedError, "permission_denied"),
        ("not-in-group", openai.PermissionDeniedError, "permission_denied"),
    ],
)
def test_each_refused_token_gets_its_status_and_never_reaches_a_site(
    stack, tokens, kind, error, code
):
    client = stack.client(tokens[kind])
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=VLLM_MODEL, messages=HELLO, max_tokens=2)
    assert caught.value.body["code"] == code
    assert caught.value.body["type"] in ("authentication_error", "permission_error")
    assert "x-first-site" not in caught.value.response.headers
    with pytest.raises(error):
        client.models.list()


def test_member_token_and_api_key_are_served(stack, tokens):
    for credential in (tokens["member"], stack.api_key):
        answer = stack.client(credential).chat.completions.create(
            model=VLLM_MODEL, messages=HELLO, max_tokens=2
        )
        assert answer.usage.completion_tokens == 2


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Bearer two words",
        "Bearer " + "x" * 5000,
    ],
    ids=["missing", "empty", "basic", "no-credential", "spaces", "oversized"],
)
def test_missing_malformed_or_oversized_authorization_gets_401(stack, header):
    with stack.http() as http:
        headers = {} if header is None else {"authorization": header}
        http.headers.pop("authorization")
        response = http.post(
            "/v1/chat/completions",
            json={"model": VLLM_MODEL, "messages": HELLO, "max_tokens": 2},
            headers=headers,
        )
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "x-first-site" not in response.headers


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"model": 7}', "application/json"),
        (b"model=x", "application/x-www-form-urlencoded"),
    ],
    ids=["not-json", "invalid", "not-a-json-body"],
)
def test_no_credential_gets_401_before_the_body_is_judged(stack, body, content_type):
    with stack.http() as http:
        http.headers.pop("authorization")
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": content_type}
        )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    with stack.http() as http:  # with its key, the caller learns what is wrong with the body
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": content_type}
        )
    assert response.status_code in (400, 415), response.text


def test_unknown_api_key_gets_401(stack):
    with pytest.raises(openai.AuthenticationError, match="Unknown API key"):
        stack.client("first-not-a-key").models.list()


def test_restricted_model_is_hidden_and_refused_for_non_members(stack, tokens):
    member = stack.client(tokens["member"])
    assert RESTRICTED_MODEL not in [m.id for m in member.models.list()]
    assert VLLM_MODEL in [m.id for m in member.models.list()]
    with pytest.raises(openai.NotFoundError):
        member.models.retrieve(RESTRICTED_MODEL)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        member.chat.completions.create(model=RESTRICTED_MODEL, messages=HELLO, max_tokens=2)
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        member.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
    assert RESTRICTED_MODEL not in unknown.value.body["message"]


def test_restricted_model_works_for_members_of_its_group(stack, tokens):
    insider = stack.client(tokens["insider"])
    assert RESTRICTED_MODEL in [m.id for m in insider.models.list()]
    answer = insider.chat.completions.create(model=RESTRICTED_MODEL, messages=HELLO, max_tokens=3)
    assert answer.usage.completion_tokens == 3


def test_whoami_describes_a_globus_caller(stack, tokens):
    with stack.http(tokens["insider"]) as http:
        me = http.get("/whoami").json()
    assert me["user"] == "ivy@uni.example.edu"
    assert me["credential"] == "globus"
    assert sorted(me["groups"]) == sorted([MEMBERS, INSIDERS])
    # Every model and tribunal of the stack: the insider may use the restricted one.
    assert sorted(me["models"]) == sorted([RESTRICTED_MODEL, VLLM_MODEL, EMBEDDING_MODEL, TRIBUNAL])
    assert me["limits"]["requests_per_s"] == 1000
    assert set(me["limits"]["model_tokens_per_min"]) == set(me["models"])


def test_whoami_describes_an_api_key_caller(stack):
    with stack.http() as http:
        me = http.get("/whoami").json()
    assert me["user"] == "contract-tester"
    assert me["credential"] == "api-key"
    assert me["key_id"].startswith("k-")


def test_revoked_key_is_refused_within_the_key_cache_time(stack):
    key = stack.key("soon-revoked")
    client = stack.client(key)
    assert client.models.list().data
    listing = subprocess.run(
        [FIRST, "keys", "list", "--config", str(stack.federation_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert key not in listing
    key_id = next(line.split()[0] for line in listing.splitlines() if "soon-revoked" in line)
    subprocess.run(
        [FIRST, "keys", "revoke", key_id, "--config", str(stack.federation_path)], check=True
    )

    def refusal() -> openai.AuthenticationError | None:
        try:
            client.models.list()
        except openai.AuthenticationError as exc:
            return exc
        return None  # the revoked key still works

    # The cache keeps a key 10 s, on each replica.
    refused = eventually(refusal, 30, "the revoked key to be refused", interval_s=0.5)
    assert "revoked" in refused.body["message"]
    assert (
        "revoked"
        in subprocess.run(
            [FIRST, "keys", "list", "--config", str(stack.federation_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


pytestmark = pytest.mark.slow


def test_callers_do_not_hit_one_anothers_cached_prefixes(stack):
    """The gateway salts each caller's requests (vLLM's cache_salt); the simulated
    engine caches prefixes as vLLM does and reports the tokens it found cached."""
    prompt = f"{uuid.uuid4().hex} " + " ".join(f"word{i}" for i in range(96))

    def cached(key: str) -> int:
        answer = stack.client(key).completions.create(
            model=RESTRICTED_MODEL, prompt=prompt, max_tokens=1
        )
        return answer.usage.prompt_tokens_details.cached_tokens

    ann = stack.key("ann-cache@example.org", [MEMBERS, INSIDERS])
    bob = stack.key("bob-cache@example.org", [MEMBERS, INSIDERS])
    # Enough for every replica of the model, and of the gateway, to have seen it.
    assert cached(ann) == 0
    assert max(cached(ann) for _ in range(4)) >= 80
    assert cached(bob) == 0  # the same prompt, another caller: no hit
    # Members of a shared group share: the second member's first request hits.
    cara = stack.key("cara-cache@example.org", [MEMBERS, INSIDERS, SHARERS])
    dan = stack.key("dan-cache@example.org", [MEMBERS, INSIDERS, SHARERS])
    for _ in range(4):
        cached(cara)
    assert cached(dan) >= 80
