"""The credential cache of one gateway process (the standalone gateway, one replica).

The fake Globus Auth counts introspections per token, so the tests see
exactly how often the gateway asked. On Serve each replica keeps its own
cache: there it is one check per token per replica.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import MEMBERS, STANDALONE_CACHE_S, globus_user


@pytest.fixture
def new_token(globus_auth):
    def issue() -> str:
        token = f"tok-cache-{uuid.uuid4().hex}"
        globus_auth.issue(token, globus_user("cas", [MEMBERS]))
        return token

    return issue


def whoami(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/whoami", headers={"authorization": f"Bearer {token}"}, timeout=30)


def test_fifty_concurrent_requests_with_a_new_token_make_one_introspection(
    standalone_gateway, globus_auth, new_token
):
    token = new_token()
    globus_auth.introspect_delay_s = 0.5  # all 50 arrive while the first check is out
    try:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: whoami(standalone_gateway, token), range(50)))
    finally:
        globus_auth.introspect_delay_s = 0.0
    assert [a.status_code for a in answers] == [200] * 50
    assert globus_auth.introspections[token] == 1


def test_an_expired_cache_entry_is_checked_again(standalone_gateway, globus_auth, new_token):
    token = new_token()
    assert whoami(standalone_gateway, token).status_code == 200
    assert whoami(standalone_gateway, token).status_code == 200
    assert globus_auth.introspections[token] == 1
    time.sleep(STANDALONE_CACHE_S + 0.5)
    assert whoami(standalone_gateway, token).status_code == 200
    assert globus_auth.introspections[token] == 2


def test_a_refused_token_is_remembered_briefly(standalone_gateway, globus_auth):
    token = f"tok-unknown-{uuid.uuid4().hex}"
    for _ in range(3):
        assert whoami(standalone_gateway, token).status_code == 401
    assert globus_auth.introspections[token] == 1


def test_globus_auth_down_cached_tokens_work_and_new_ones_get_503(
    standalone_gateway, globus_auth, new_token
):
    known, new = new_token(), new_token()
    assert whoami(standalone_gateway, known).status_code == 200
    globus_auth.stop()
    try:
        assert whoami(standalone_gateway, known).status_code == 200
        refused = whoami(standalone_gateway, new)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "auth_unavailable"
        assert "Globus Auth cannot be reached" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0
        # Past the cache time the known token is still let in: Auth cannot say otherwise.
        time.sleep(STANDALONE_CACHE_S + 0.5)
        assert whoami(standalone_gateway, known).status_code == 200
    finally:
        globus_auth.start()
    assert whoami(standalone_gateway, new).status_code == 200


pytestmark = pytest.mark.slow
