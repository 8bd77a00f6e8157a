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

Building a channel makes no network call; `verify` makes the one call that
proves the credentials work, so a bad secret fails at start-up, not at the
first poll. Callers never use a channel directly: `build_site_clients` wraps
each in the site's typed client (`deployments.site_client.SiteClient`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any
from uuid import UUID

from deployments.errors import FirstError
from deployments.site_client import SiteClient
from serve_app.config import ChannelConfig, FederationConfig, GlobusComputeChannelConfig
from serve_app.settings import PREFIX, Settings


class ChannelError(FirstError):
    """A channel that cannot be built or used; the message is one line, fit for a user."""


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


def build_control_channel(config: ChannelConfig, settings: Settings) -> ExecutorChannel:
    """The channel a site's config asks for; ChannelError when its credentials are missing."""
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
            channel = build_control_channel(site.channel, settings)
        except ChannelError as exc:
            for client in clients.values():
                client.close()
            raise ChannelError(f"sites[{index}] ({site.name}).channel: {exc}") from None
        timeouts = site.timeouts
        clients[site.name] = SiteClient(
            site.site_config, channel, timeouts.status_s, timeouts.control_s
        )
    return clients
