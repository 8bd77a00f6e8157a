"""The two ways to host the gateway's app, and the start-up checks they share.

- Serve (the default): start or join the gateway's Ray cluster, deploy the
  colocated sites and the ingress deployment behind one Serve proxy, and wait
  until every warm colocated model answers a completion through the gateway.
- Standalone: the same FastAPI app under uvicorn in this process, for a small
  VM outside Ray or the lowest overhead.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deployments.errors import FirstError
from deployments.site_runner import (
    Progress,
    SiteStartError,
    check_sources,
    deploy,
    ping_model,
    poll_until_ok,
    start_ray,
    wait_until_answering,
    warm_models,
)
from serve_app.access.auth import AuthConfigError, build_authenticator
from serve_app.access.policy import Policy
from serve_app.config import FederationConfig
from serve_app.metrics import empty_multiprocess_directory
from serve_app.routing.control_channel import ChannelError, build_site_clients
from serve_app.settings import SecretsError, Settings
from serve_app.store import StoreError, build_store, new_api_key

# The user of the short-lived key that start-up checks sign their requests with.
STARTUP_CHECK_USER = "first-startup-check"


class GatewayStartError(FirstError):
    """The gateway could not start; the message says why, in one line."""


def keeper_app_name(config: FederationConfig) -> str:
    return f"{config.gateway.app_name}-keeper"


def serve_app_names(config: FederationConfig) -> list[str]:
    """Every Serve application `bring_up_on_serve` deploys, for the shutdown."""
    sites = config.colocated_sites
    names = [name for site in sites for name in site.app_names()] + [config.gateway.app_name]
    return [*names, keeper_app_name(config)] if config.keeper.in_gateway else names


def gateway_url(config: FederationConfig) -> str:
    host = config.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{config.gateway.port}"


def verify_channels(config: FederationConfig, settings: Settings, progress: Progress) -> None:
    """Build every site's control channel and prove it works, before anything starts."""
    try:
        clients = build_site_clients(config, settings)
    except ChannelError as exc:
        raise GatewayStartError(str(exc)) from None
    try:
        for name, client in clients.items():
            try:
                client.verify()
            except ChannelError as exc:
                raise GatewayStartError(f"site {name}: {exc}") from None
        progress(f"control channels ready for {len(clients)} site(s)")
    finally:
        for client in clients.values():
            client.close()


def verify_access(config: FederationConfig, settings: Settings) -> None:
    """Open the store and build the authenticator once, before anything starts.

    Every replica builds them again in its lifespan; a missing Globus secret or
    an unwritable store found there would be a replica failing over and over.
    Building them makes no network call.
    """
    try:
        store = build_store(config.store)
        build_authenticator(config.auth, Policy(config.policy), store, settings)
    except (StoreError, AuthConfigError, SecretsError) as exc:
        raise GatewayStartError(str(exc)) from None


def bring_up_on_serve(config: FederationConfig, timeout_s: float, progress: Progress) -> None:
    """Deploy the colocated sites and the ingress on Serve, and wait until they answer."""
    from ray import serve

    from serve_app.ingress import build_gateway_app, build_keeper_app

    deadline = time.monotonic() + timeout_s
    try:
        for site in config.colocated_sites:
            check_sources(site)
        ray_at = config.gateway.ray.address
        progress(f"joining Ray at {ray_at}" if ray_at else "starting Ray")
        start_ray(config.gateway.ray)
        # The gateway's address; colocated sites share this proxy (same host and port).
        cluster = config.gateway.ray
        logging_config = cluster.serve_logging()
        serve.start(
            http_options={"host": config.gateway.host, "port": config.gateway.port},
            logging_config=logging_config,
        )
        for site in config.colocated_sites:
            progress(f"deploying site {site.name}: {', '.join(m.id for m in site.models)}")
            deploy(site, cluster)
        progress("deploying the gateway")
        if config.metrics.enabled:
            empty_multiprocess_directory(config)
        serve.run(
            build_gateway_app(config),
            name=config.gateway.app_name,
            route_prefix="/",
            blocking=False,
            logging_config=logging_config,
        )
        if config.keeper.in_gateway and config.slurm_sites:
            progress("deploying the hot-node keeper")
            serve.run(
                build_keeper_app(config),
                name=keeper_app_name(config),
                route_prefix=None,
                blocking=False,
                logging_config=logging_config,
            )
        for site in config.colocated_sites:
            wait_until_answering(site, max(deadline - time.monotonic(), 1.0), progress)
    except SiteStartError as exc:
        raise GatewayStartError(str(exc)) from None
    wait_until_gateway_answers(config, deadline, progress)


@contextmanager
def startup_credential(config: FederationConfig) -> Iterator[str | None]:
    """A key for the start-up checks, allowed every model, deleted once they are done.

    None when the gateway needs no credential, or accepts no API keys (then
    only /health is checked through it).
    """
    if not (config.auth.required and config.auth.api_keys):
        yield None
        return
    try:
        store = build_store(config.store)
    except StoreError as exc:
        raise GatewayStartError(str(exc)) from None
    policy = config.policy
    groups = set(policy.groups) | {g for access in policy.models.values() for g in access.groups}
    key = new_api_key()
    record = store.add_key(key, STARTUP_CHECK_USER, sorted(groups))
    try:
        yield key
    finally:
        store.delete_key(record.key_id)


def wait_until_gateway_answers(
    config: FederationConfig, deadline: float, progress: Progress
) -> None:
    """The gateway answers /health, and a completion for every warm colocated model."""
    models = [model for site in config.colocated_sites for model in warm_models(site)]
    with (
        startup_credential(config) as key,
        httpx.Client(base_url=gateway_url(config), timeout=30.0) as client,
    ):
        _wait(lambda: client.get("/health"), "the gateway's /health", deadline)
        if key is None and config.auth.required:
            progress("no API keys accepted: model checks through the gateway skipped")
            return
        if key is not None:
            client.headers["authorization"] = f"Bearer {key}"
        for model in models:
            _wait(
                lambda m=model: ping_model(client, m),
                f"model {model.id} through the gateway",
                deadline,
            )
            progress(f"model {model.id} answers through the gateway")


def _wait(call: Callable[[], httpx.Response], what: str, deadline: float) -> None:
    failure = poll_until_ok(call, deadline, interval_s=0.5)
    if failure is not None:
        raise GatewayStartError(f"{what} did not answer in time (last: {failure})")


def drain_on_serve(config: FederationConfig, progress: Progress) -> None:
    """Delete the gateway's Serve application first, while the sites it calls still run.

    Serve stops sending the ingress replicas new requests and gives those in
    flight `gateway.shutdown_grace_s` (the deployment's graceful shutdown
    timeout) before it stops them; then the rest can go.
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return  # it never got as far as starting Ray
    grace = config.gateway.shutdown_grace_s
    progress(f"draining the gateway: up to {grace:g} s for the requests in flight")
    started = time.monotonic()
    try:
        serve.delete(config.gateway.app_name)
    except (RayServeException, TimeoutError) as exc:  # no Serve yet, or it took over 60 s
        progress(f"gateway not drained ({exc}); shutting down")
        return
    progress(f"gateway drained in {time.monotonic() - started:.1f} s")


def serve_standalone(config: FederationConfig, on_ready: Callable[[], None]) -> None:
    """Run the app under uvicorn in this process until SIGINT or SIGTERM."""
    from serve_app.app import build_app

    if config.colocated_sites:
        names = ", ".join(s.name for s in config.sites if s.colocated)
        raise GatewayStartError(
            f"colocated sites ({names}) need the Serve host; start them with `first site up` "
            "and list them with a base_url, or drop --standalone"
        )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(config),
            host=config.gateway.host,
            port=config.gateway.port,
            log_level="warning",
            access_log=False,
            # On a signal uvicorn stops listening at once and waits this long for
            # the requests in flight, streams included, before it cancels them.
            timeout_graceful_shutdown=config.gateway.shutdown_grace_s,
            http=functools.partial(
                HeaderTimeoutProtocol, head_timeout_s=config.gateway.header_timeout_s
            ),
        )
    )

    def drained(signum: int, frame: object) -> None:
        # uvicorn hands its signal back to the handler it found once it has drained,
        # to end the process by it (status 143 for SIGTERM): this one lets the process
        # exit 0 instead. One that comes before uvicorn has its own starts the drain.
        server.should_exit = True

    signal.signal(signal.SIGTERM, drained)
    signal.signal(signal.SIGINT, drained)
    listening = _listen(config.gateway.host, config.gateway.port)

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            on_ready()
        await serving

    # uvicorn's own loop (uvloop where installed), as `uvicorn.run` would pick:
    # asyncio.run alone gives the default loop, which costs more per request.
    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(run())
    finally:
        listening.close()
    if not server.started:
        raise GatewayStartError("the gateway app failed to start (see the log above)")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head is late.

    uvicorn has a keep-alive timeout, which any byte resets, and nothing for a
    client that opens a connection and sends its headers a byte at a time, or
    never: each such connection is held until the client goes. The deadline
    runs from the connection's opening, and again from each answer's end, to
    the end of the next request's headers.
    """

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, not in uvicorn, which answers a busy port with a log line and sys.exit.

    TCP_NODELAY is set here because uvloop does not set it on connections it
    accepts from a socket it was handed (they inherit the listener's): with
    Nagle on, a keep-alive client waited for its delayed ACK, 40 ms, between
    an answer's headers and its body on every request after the first.
    """
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise GatewayStartError(f"could not listen on {host}:{port}: {exc.strerror}") from None
    return listening
