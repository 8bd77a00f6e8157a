"""How the gateway's requests reach a site: the one thing that differs between sites.

Placement, retries, the circuit breaker, streaming and metrics are the
forwarder's (serve_app/routing/forwarding.py) and the same for every site; a
transport only opens the way to the site's endpoint:

- `direct`: a pooled `aiohttp` session that connects to the endpoint itself
  (the gateway can open connections into the site);
- `ssh-tunnel`: the same session over a SOCKS5 connector (`aiohttp_socks`) to
  the proxy the site's outbound SSH connection opened on the gateway host;
  names resolve at the site's end (`rdns`), so compute nodes known only
  inside the site are reached too;
- `globus-compute`: each request is one task on the site's control channel
  (`deployments.site_functions.relay`), sent on from the login node and
  answered whole: no streaming (placement sends streams elsewhere), a body
  over the payload limit is refused before it goes, and the answer's
  `Server-Timing` header says where the time went (submit, queue, run).

Each transport also says whether the site can be reached right now
(`probe`), which the status poller adds to the site's own report: a site
whose tunnel is down, or that the gateway cannot connect to, is down for
placement with that reason, even while its control channel answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from deployments.site_client import SiteCallTimeout, SiteClient
from serve_app.config import FederatedSiteConfig, SshTunnelTransportConfig
from serve_app.errors import PayloadTooLargeError, UpstreamError
from serve_app.routing.control_channel import ChannelError

# A SOCKS5 greeting offering "no authentication", and the proxy's acceptance of it.
SOCKS5_GREETING = b"\x05\x01\x00"
SOCKS5_ACCEPTED = b"\x05\x00"
# What the endpoint's engine says of a result over Globus Compute's limit.
RESULT_TOO_LARGE = "MaxResultSizeExceeded"


class RelayError(aiohttp.ClientConnectionError):
    """A request the site could not send on (its relay task failed): try another site."""


class HttpTransport:
    """`direct` and `ssh-tunnel`: one pooled session per site; the connector differs."""

    streams = True

    def __init__(self, config: FederatedSiteConfig):
        self.config = config
        timeouts = config.timeouts
        # Hundreds of concurrent streams per site are normal: no cap, keep connections.
        pool = {"limit": 0, "keepalive_timeout": 60}
        tunnel = config.transport
        if isinstance(tunnel, SshTunnelTransportConfig):
            from aiohttp_socks import ProxyConnector

            proxy = f"socks5://{tunnel.host}:{tunnel.port}"
            connector: aiohttp.BaseConnector = ProxyConnector.from_url(proxy, rdns=True, **pool)
        else:
            connector = aiohttp.TCPConnector(**pool)
        self.session = aiohttp.ClientSession(
            # No sock_read: it would also bound the wait for the headers, which is
            # first_byte_s's (the forwarder's); the silence within a stream is its too.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s),
            connector=connector,
            headers={"content-type": "application/json"},
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.session.post(url, data=body, headers=headers)

    async def probe(self) -> str | None:
        """Why the gateway cannot reach the site now, or None.

        A tunnel: its proxy must accept a SOCKS5 greeting (the site's SSH connection is
        up). Direct: a connection to the site's endpoint must open (a Slurm site's
        endpoints are its jobs', which its report lists; a colocated site is this
        gateway's own proxy).
        """
        config = self.config
        tunnel = config.transport
        timeout_s = config.timeouts.connect_s
        if isinstance(tunnel, SshTunnelTransportConfig):
            where = f"the site's SSH tunnel ({tunnel.host}:{tunnel.port})"
            reason = await _socks5_answers(tunnel.host, tunnel.port, timeout_s)
            return f"{where} is down: {reason}" if reason else None
        if config.colocated or config.site_config.slurm is not None:
            return None
        url = urlsplit(config.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        reason = await _connects(url.hostname or "", port, timeout_s)
        if reason is None:
            return None
        return (
            f"the gateway cannot connect to {config.url} ({reason}); a site behind a "
            "firewall needs transport ssh-tunnel or globus-compute"
        )

    async def close(self) -> None:
        await self.session.close()


class ComputeTransport:
    """`globus-compute`: one task per request on the site's control channel."""

    streams = False

    def __init__(self, config: FederatedSiteConfig, client: SiteClient):
        self.config = config
        self.client = client
        self.max_payload_bytes = config.transport.max_payload_bytes

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> RelayedResponse:
        name = self.config.name
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"The request is {len(body):,} bytes; site {name} is reached through Globus "
                f"Compute, whose tasks carry at most {self.max_payload_bytes:,} bytes."
            )
        started = time.perf_counter()
        timeout_s = self.config.timeouts.first_byte_s
        try:
            headers = {"content-type": "application/json", **headers}
            answer, submit_s = await self.client.relay(url, body.decode(), headers, timeout_s)
        except SiteCallTimeout:
            raise TimeoutError from None  # the site may still be working: no second site
        except ChannelError as exc:
            if RESULT_TOO_LARGE in str(exc):
                raise UpstreamError(
                    f"Site {name}'s answer is over Globus Compute's result limit (10 MB); "
                    "ask for less (fewer inputs, choices or tokens)."
                ) from None
            raise RelayError(f"its relay task failed: {exc}") from None
        total_s = time.perf_counter() - started
        timing = {
            "submit": submit_s,
            "queue": max(0.0, total_s - submit_s - answer.run_s),
            "run": answer.run_s,
        }
        response_headers = CIMultiDict(
            {"content-type": answer.content_type, "server-timing": _server_timing(timing)}
        )
        if answer.retry_after is not None:
            response_headers["retry-after"] = answer.retry_after
        return RelayedResponse(answer.status, response_headers, answer.body.encode())

    async def probe(self) -> str | None:
        return None  # the channel's own status call is this transport's path

    async def close(self) -> None:
        return None  # the channel is the site client's, closed with it


class RelayedResponse:
    """A relayed answer, read whole at the site, as the forwarder reads an HTTP one."""

    def __init__(self, status: int, headers: CIMultiDict, body: bytes):
        self.status = status
        self.headers = headers
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


Transport = HttpTransport | ComputeTransport
SiteResponse = aiohttp.ClientResponse | RelayedResponse


def build_transport(config: FederatedSiteConfig, client: SiteClient) -> Transport:
    if config.transport.kind == "globus-compute":
        return ComputeTransport(config, client)
    return HttpTransport(config)


def _server_timing(seconds: dict[str, float]) -> str:
    """A Server-Timing header value (milliseconds): `submit;dur=0.4, queue;dur=2.1, ...`."""
    return ", ".join(f"{name};dur={value * 1000:.1f}" for name, value in seconds.items())


async def _connects(host: str, port: int, timeout_s: float) -> str | None:
    """None if a TCP connection to host:port opens within `timeout_s`, else why not."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"connecting timed out after {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    return None


async def _socks5_answers(host: str, port: int, timeout_s: float) -> str | None:
    """None if a SOCKS5 proxy at host:port accepts a greeting within `timeout_s`, else why."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(SOCKS5_GREETING)
                await writer.drain()
                answer = await reader.readexactly(2)
            finally:
                writer.close()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except asyncio.IncompleteReadError:
        return "the proxy closed the connection"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if answer != SOCKS5_ACCEPTED:
        return f"not a SOCKS5 proxy (it answered {json.dumps(answer.hex())})"
    return None
