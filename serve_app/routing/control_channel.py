"""The control channel: how the gateway runs site functions at a site.

Site functions (`deployments.site_functions`) are plain functions, plain data
in and out. A channel (the `deployments.site_client.ControlChannel` protocol)
runs them through a `concurrent.futures.Executor`:

- `LocalChannel`: a thread pool in the gateway's own process, for sites the
  gateway reaches directly (one machine, tests);
- `GlobusComputeChannel`: `globus_compute_sdk.Executor` bound to the site's
  Globus Compute endpoint, which runs the very same functions on the site's
  login node (production, as in FIRST). It authenticates as the gateway's
  confidential client (FIRST_GLOBUS_CLIENT_ID / FIRST_GLOBUS_CLIENT_SECRET).
- `EndpointEngineChannel` (serve_app/routing/endpoint_engine.py): the same
  tasks, packed by the SDK, run by globus-compute-endpoint's own engine in the
  site's endpoint process, which dials in to the gateway; only the Globus
  cloud is left out (tests, single-host sites).

A function that raises at the site raises `SiteFunctionError` here, with the
remote reason in one line, whichever Compute channel ran it.

Building a channel makes no network call; `verify` makes the one call that
proves the credentials work, so a bad secret fails at start-up, not at the
first poll. Callers never use a channel directly: `build_site_clients` wraps
each in the site's typed client (`deployments.site_client.SiteClient`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from deployments.errors import FirstError
from deployments.site_client import SiteClient
from serve_app.config import (
    ChannelConfig,
    EndpointEngineChannelConfig,
    FederationConfig,
    GlobusComputeChannelConfig,
)
from serve_app.settings import PREFIX, Settings

if TYPE_CHECKING:
    from serve_app.routing.endpoint_engine import EndpointEngineChannel


class ChannelError(FirstError):
    """A channel that cannot be built or used; the message is one line, fit for a user."""


class SiteFunctionError(ChannelError):
    """A site function raised at the site; the message names it and the remote reason."""


def remote_reason(remote_traceback: str) -> str:
    """The last line of a traceback from the site: the exception and its message."""
    lines = [line.strip() for line in remote_traceback.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


class ExecutorChannel:
    """Runs site functions for one site on a `concurrent.futures.Executor`."""

    def __init__(self, executor: concurrent.futures.Executor):
        self.executor = executor

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        return self.executor.submit(function, *args)

    def verify(self) -> None:
        """Prove the channel can be used; raise ChannelError saying why not."""

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class LocalChannel(ExecutorChannel):
    def __init__(self, max_workers: int = 2):
        super().__init__(
            concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="site-channel")
        )


class GlobusComputeChannel(ExecutorChannel):
    def __init__(self, endpoint_id: UUID, client_id: str, client_secret: str):
        import globus_sdk
        from globus_compute_sdk import Client, Executor

        try:
            UUID(client_id)
        except ValueError:
            raise ChannelError(
                f"{PREFIX}GLOBUS_CLIENT_ID is not a Globus client id (a UUID): {client_id!r}"
            ) from None
        self._app = globus_sdk.ClientApp(
            "first-gateway",
            client_id=client_id,
            client_secret=client_secret,
            config=globus_sdk.GlobusAppConfig(token_storage="memory", request_refresh_tokens=False),
        )
        client = Client(app=self._app, do_version_check=False)
        super().__init__(Executor(endpoint_id=str(endpoint_id), client=client))

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """The SDK's future, with a remote failure as `SiteFunctionError` (its one line)."""
        from globus_compute_sdk.errors import TaskExecutionFailed

        remote = super().submit(function, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def settle(done: concurrent.futures.Future) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif isinstance(error := done.exception(), TaskExecutionFailed):
                reason = remote_reason(error.remote_data)
                future.set_exception(
                    SiteFunctionError(f"{function.__name__} failed at the site: {reason}")
                )
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())

        remote.add_done_callback(settle)
        future.add_done_callback(lambda f: f.cancelled() and remote.cancel())
        return future

    def verify(self) -> None:
        import globus_sdk

        try:
            self._app.login(force=True)
        except globus_sdk.AuthAPIError as exc:
            reason = exc.code if exc.code and exc.code != "Error" else exc.http_status
            raise ChannelError(
                f"Globus Auth rejected the gateway's client credentials ({reason}); check "
                f"{PREFIX}GLOBUS_CLIENT_ID and {PREFIX}GLOBUS_CLIENT_SECRET"
            ) from None
        except globus_sdk.NetworkError as exc:
            raise ChannelError(f"Globus Auth is unreachable: {exc}") from None


def build_control_channel(
    config: ChannelConfig, settings: Settings, site: str
) -> ExecutorChannel | EndpointEngineChannel:
    """The channel a site's config asks for; ChannelError when its credentials are missing."""
    if isinstance(config, EndpointEngineChannelConfig):
        from serve_app.routing.endpoint_engine import EndpointEngineChannel

        return EndpointEngineChannel(config, settings.endpoint_key, site)
    if isinstance(config, GlobusComputeChannelConfig):
        if not (settings.globus_client_id and settings.globus_client_secret):
            raise ChannelError(
                f"a globus-compute channel needs {PREFIX}GLOBUS_CLIENT_ID and "
                f"{PREFIX}GLOBUS_CLIENT_SECRET in the environment (the gateway's Globus "
                "confidential client)"
            )
        return GlobusComputeChannel(
            config.endpoint_id, settings.globus_client_id, settings.globus_client_secret
        )
    return LocalChannel()


def build_site_clients(
    config: FederationConfig, settings: Settings, slurm_only: bool = False
) -> dict[str, SiteClient]:
    """One client per site (or per Slurm site), on a channel of its own.

    ChannelError names the site whose channel cannot be built.
    """
    clients: dict[str, SiteClient] = {}
    for index, site in enumerate(config.sites):
        if slurm_only and site.site_config.slurm is None:
            continue
        try:
            channel = build_control_channel(site.channel, settings, site.name)
        except ChannelError as exc:
            for client in clients.values():
                client.close()
            raise ChannelError(f"sites[{index}] ({site.name}).channel: {exc}") from None
        timeouts = site.timeouts
        clients[site.name] = SiteClient(
            site.site_config, channel, timeouts.status_s, timeouts.control_s
        )
    return clients
