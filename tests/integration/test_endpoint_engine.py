"""The endpoint-engine channel: site functions as Globus Compute tasks, run by the real engine.

The gateway's side packs each call with the Globus Compute SDK's serializer;
the site's endpoint (`first site endpoint`, in the endpoint's own environment,
.first/endpoint-venv) runs it through globus-compute-endpoint's
`ProcessPoolEngine` and sends the packed result back. What breaks at a real
site breaks here, and must reach the caller as one clear line, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from deployments import site_functions
from deployments.site_client import SiteCallTimeout, SiteClient
from deployments.site_config import SiteConfig
from serve_app.config import COMPUTE_PAYLOAD_LIMIT_BYTES, EndpointEngineChannelConfig
from serve_app.routing.control_channel import ChannelError, SiteFunctionError
from serve_app.routing.endpoint_engine import EndpointEngineChannel
from tests.conftest import ENDPOINT_VENV
from tests.support.remote_functions import needs_what_the_endpoint_lacks, over_the_result_limit

ENDPOINT_PYTHON = str(ENDPOINT_VENV / "bin/python")
SITE = SiteConfig.model_validate(
    {"name": "engine", "models": [{"id": "sim", "engine": "simulated"}]}
)


@pytest.fixture(scope="module")
def channel() -> Iterator[EndpointEngineChannel]:
    config = EndpointEngineChannelConfig(kind="endpoint-engine", python=ENDPOINT_PYTHON)
    channel = EndpointEngineChannel(config, None, "engine")
    try:
        # The first task waits for the endpoint to dial in and its workers to start.
        channel.submit(site_functions.site_status, SITE.model_dump(mode="json"), 1.0).result(120)
        yield channel
    finally:
        channel.close()


def test_a_site_function_runs_in_the_engine_and_its_answer_comes_back_typed(channel):
    client = SiteClient(SITE, channel, status_timeout_s=5, control_timeout_s=30)
    status = asyncio.run(client.status())
    assert status.site == "engine" and not status.reachable  # nothing listens at 8000
    assert "ConnectError" in status.error


def test_a_function_that_raises_at_the_site_gives_the_remote_reason(channel):
    future = channel.submit(site_functions.stop, SITE.model_dump(mode="json"), "sim", None)
    with pytest.raises(SiteFunctionError) as raised:
        future.result(30)
    assert (
        str(raised.value) == "stop failed at the site: ValueError: site engine has no slurm section"
    )


def test_an_import_the_endpoint_lacks_is_a_remote_error_not_a_hang(channel):
    with pytest.raises(SiteFunctionError) as raised:
        channel.submit(needs_what_the_endpoint_lacks).result(30)
    assert "ModuleNotFoundError: No module named 'vllm'" in str(raised.value)


def test_a_result_over_the_limit_is_refused_at_the_site(channel):
    with pytest.raises(SiteFunctionError) as raised:
        channel.submit(over_the_result_limit).result(60)
    assert "MaxResultSizeExceeded" in str(raised.value)


def test_a_task_over_the_limit_is_refused_before_it_is_sent(channel):
    future = channel.submit(site_functions.site_status, {"x": "y" * COMPUTE_PAYLOAD_LIMIT_BYTES})
    with pytest.raises(ChannelError) as raised:
        future.result(1)
    assert "over Globus Compute's" in str(raised.value) and "not sent" in str(raised.value)


def test_a_channel_whose_endpoint_never_dials_in_times_out_with_a_clear_error():
    config = EndpointEngineChannelConfig(kind="endpoint-engine", listen="127.0.0.1:0")
    channel = EndpointEngineChannel(config, "a-key", "lonely")
    try:
        client = SiteClient(SITE, channel, status_timeout_s=0.5, control_timeout_s=1)
        with pytest.raises(SiteCallTimeout) as timed_out:
            asyncio.run(client.launch("sim"))
        assert str(timed_out.value) == "site engine: launch did not answer within 1 s"
        assert not channel._waiting  # the task given up is not kept for a later endpoint
    finally:
        channel.close()
