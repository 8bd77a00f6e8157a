"""Control channels: Globus Compute is built offline, and bad credentials fail at start-up.

Globus Auth cannot be reached here; `tests.fakes.globus_auth` answers over
real HTTP in its place, reached by the SDK's own base-URL setting. The
Globus Compute cloud is never called: building the executor must not call
it, and verifying the channel only asks Globus Auth for a token.
"""

from __future__ import annotations

import socket
import uuid
from concurrent.futures import Future

import pytest

from deployments.site_functions import site_status
from serve_app.config import FederationConfig
from serve_app.routing.control_channel import (
    ChannelError,
    GlobusComputeChannel,
    LocalChannel,
    build_site_clients,
)
from serve_app.settings import Settings
from tests.conftest import free_port
from tests.fakes.globus_auth import running_fake_globus_auth

ENDPOINT = uuid.UUID("2f2d6c2a-9a8e-4b8e-9d3a-1c1b0d7f4e21")
CLIENT_ID = "8c1a3b7e-5f0d-4c9e-a2b4-6d3e1f0a9b87"
SECRET = "the-right-secret"


def _federation(*channels: dict) -> FederationConfig:
    sites = [
        {
            "name": f"site{index}",
            "site": {"name": f"site{index}", "models": [{"id": "m", "engine": "simulated"}]},
            "channel": channel,
        }
        for index, channel in enumerate(channels)
    ]
    return FederationConfig.model_validate({"sites": sites})


GLOBUS = {"kind": "globus-compute", "endpoint_id": str(ENDPOINT)}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    attempts: list[object] = []

    def refuse(sock, address):
        attempts.append(address)
        raise AssertionError(f"network call to {address} while building a channel")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_building_a_globus_compute_channel_makes_no_network_call(no_network):
    clients = build_site_clients(_federation(GLOBUS), Settings(CLIENT_ID, SECRET))
    try:
        executor = clients["site0"].channel.executor
        from globus_compute_sdk import Executor

        assert isinstance(executor, Executor)
        assert executor.endpoint_id == ENDPOINT or str(executor.endpoint_id) == str(ENDPOINT)
    finally:
        for client in clients.values():
            client.close()
    assert no_network == []


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(globus_client_id=CLIENT_ID), Settings(globus_client_secret=SECRET)],
    ids=["none", "no-secret", "no-id"],
)
def test_missing_credentials_name_the_site_and_the_variables(settings):
    with pytest.raises(ChannelError) as caught:
        build_site_clients(_federation({"kind": "local"}, GLOBUS), settings)
    message = str(caught.value)
    assert message.startswith("sites[1] (site1).channel: ")
    assert "FIRST_GLOBUS_CLIENT_ID" in message and "FIRST_GLOBUS_CLIENT_SECRET" in message
    assert "\n" not in message


def test_a_client_id_that_is_not_a_uuid_is_refused_before_any_call(no_network):
    with pytest.raises(ChannelError, match="FIRST_GLOBUS_CLIENT_ID is not a Globus client id"):
        GlobusComputeChannel(ENDPOINT, "my-client", SECRET)


def test_settings_come_from_first_prefixed_variables():
    settings = Settings.from_environment(
        {"FIRST_GLOBUS_CLIENT_ID": CLIENT_ID, "FIRST_GLOBUS_CLIENT_SECRET": SECRET, "X": "y"}
    )
    assert settings == Settings(CLIENT_ID, SECRET)
    assert Settings.from_environment({"FIRST_GLOBUS_CLIENT_ID": ""}) == Settings()


def test_good_credentials_verify_with_one_token_request(monkeypatch):
    with running_fake_globus_auth(CLIENT_ID, SECRET) as auth:
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", auth.url)
        channel = GlobusComputeChannel(ENDPOINT, CLIENT_ID, SECRET)
        try:
            assert auth.token_requests == []  # building asked for nothing
            channel.verify()
        finally:
            channel.close()
    (request,) = auth.token_requests
    assert request["grant_type"] == "client_credentials"
    assert "https://auth.globus.org/scopes/" in request["scope"]  # the Globus Compute scope


def test_bad_credentials_give_one_clear_error(monkeypatch):
    with running_fake_globus_auth(CLIENT_ID, SECRET) as auth:
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", auth.url)
        channel = GlobusComputeChannel(ENDPOINT, CLIENT_ID, "a-wrong-secret")
        try:
            with pytest.raises(ChannelError) as caught:
                channel.verify()
        finally:
            channel.close()
    message = str(caught.value)
    assert message.startswith("Globus Auth rejected the gateway's client credentials")
    assert "FIRST_GLOBUS_CLIENT_SECRET" in message and "\n" not in message


@pytest.mark.slow  # the SDK retries a refused connection with backoff for about 15 s
def test_unreachable_globus_auth_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", f"http://127.0.0.1:{free_port()}/")
    channel = GlobusComputeChannel(ENDPOINT, CLIENT_ID, SECRET)
    try:
        with pytest.raises(ChannelError, match=r"^Globus Auth is unreachable"):
            channel.verify()
    finally:
        channel.close()


def test_the_local_channel_runs_the_same_site_functions():
    """What a Globus Compute endpoint would run, run here: an unreachable site's status."""
    site = _federation({"kind": "local"}).sites[0].site_config.model_copy(deep=True)
    site.ray.dashboard_port = free_port()
    channel = LocalChannel()
    try:
        future: Future = channel.submit(site_status, site.model_dump(mode="json"))
        status = future.result(timeout=30)
    finally:
        channel.close()
    assert status["reachable"] is False
