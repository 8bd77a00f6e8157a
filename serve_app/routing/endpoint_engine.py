"""The gateway's end of the endpoint-engine channel: Globus Compute tasks without the cloud.

Each site function call becomes a Globus Compute task, packed exactly as the
SDK packs one (its `ComputeSerializer`, a messagepack `Task`), and goes to the
site's endpoint process (deployments/compute_endpoint.py), which dialled in
here: the site opens the connection, as a real endpoint does to the Globus
cloud. The endpoint's own engine runs it; its packed `Result` comes back and
is unpacked by the SDK's serializer. What would fail at a real site fails
here: a function or an argument that does not serialize, an import the
endpoint's environment lacks, an exception at the site (raised here as
`SiteFunctionError` with the remote reason), a task or a result over the 10 MB
limit. Tasks submitted while no endpoint is connected wait for one, as they
wait in the cloud for an endpoint that is offline; the caller's timeout
bounds the wait.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing.connection
import os
import secrets
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from serve_app.config import COMPUTE_PAYLOAD_LIMIT_BYTES, EndpointEngineChannelConfig
from serve_app.routing.control_channel import ChannelError, SiteFunctionError, remote_reason
from serve_app.settings import PREFIX

logger = logging.getLogger(__name__)
ENDPOINT_KEY_VARIABLE = f"{PREFIX}ENDPOINT_KEY"
# How long a stopping endpoint the gateway started gets before it is killed.
ENDPOINT_STOP_GRACE_S = 10.0


class EndpointEngineChannel:
    """Runs one site's functions as Globus Compute tasks on the endpoint that dials in."""

    def __init__(self, config: EndpointEngineChannelConfig, key: str | None, site: str):
        from globus_compute_sdk.serialize import ComputeSerializer

        self.site = site
        self._serde = ComputeSerializer()
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._pending: dict[uuid.UUID, tuple[concurrent.futures.Future, str]] = {}
        # Packed tasks for an endpoint not connected yet, until sent or given up.
        self._waiting: dict[uuid.UUID, bytes] = {}
        self._connection: multiprocessing.connection.Connection | None = None
        self._closed = False
        if config.listen is not None:
            if not key:
                raise ChannelError(
                    f"an endpoint-engine channel that listens needs {ENDPOINT_KEY_VARIABLE} "
                    "in the environment (the key the site's endpoint has too)"
                )
            host, _, port = config.listen.rpartition(":")
            address: tuple[str, int] = (host, int(port))
        else:
            key, address = secrets.token_hex(32), ("127.0.0.1", 0)
        self._key = key.encode()
        try:
            # Not multiprocessing's Listener: its accept cannot be woken to close the port.
            self._socket = socket.create_server(address)
        except OSError as exc:
            raise ChannelError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from None
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        threading.Thread(target=self._accept, name=f"endpoint-{site}", daemon=True).start()
        # An endpoint the gateway starts itself starts with the first task, so that a
        # channel built only to be verified (serve_app/hosting.py) starts none.
        self._spawn = (config, key) if config.listen is None else None
        self._process: subprocess.Popen | None = None

    # -- the ControlChannel protocol ------------------------------------------

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task
        from globus_compute_sdk.errors import SerializationError

        future: concurrent.futures.Future = concurrent.futures.Future()
        name = function.__name__
        try:
            serde = self._serde
            parts = [serde.serialize(function), serde.serialize(args), serde.serialize({})]
            buffer = serde.pack_buffers(parts)
        except SerializationError as exc:
            future.set_exception(ChannelError(f"{name} cannot be sent to the site: {exc}"))
            return future
        task_id = uuid.uuid4()
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
        if len(packed) > COMPUTE_PAYLOAD_LIMIT_BYTES:
            future.set_exception(
                ChannelError(
                    f"{name}: the task is {len(packed):,} bytes, over Globus Compute's "
                    f"{COMPUTE_PAYLOAD_LIMIT_BYTES:,}-byte limit; it was not sent"
                )
            )
            return future
        with self._lock:
            if self._spawn is not None and self._process is None:
                try:
                    self._process = _start_endpoint(*self._spawn, self.address)
                except ChannelError as exc:
                    future.set_exception(exc)
                    return future
            self._pending[task_id] = (future, name)
            connection = self._connection
            if connection is None:
                self._waiting[task_id] = packed
        future.add_done_callback(lambda _: self._forget(task_id))
        if connection is not None:
            self._send(connection, packed)
        return future

    def verify(self) -> None:
        """The endpoint's environment must be there if the gateway is to start it; one
        that dials in may come later (its site is down until it does)."""
        if self._spawn is not None:
            python = self._spawn[0].python
            if python is not None and not os.access(python, os.X_OK):
                raise ChannelError(f"channel.python: {python} is not an executable")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._socket.close()
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            _hang_up(connection)  # an endpoint the gateway started exits when it sees this
        self._fail_pending("the channel was closed")
        if self._process is not None:
            try:
                self._process.wait(ENDPOINT_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    # -- the wire ---------------------------------------------------------------

    def _send(self, connection: multiprocessing.connection.Connection, packed: bytes) -> None:
        try:
            with self._sending:
                connection.send_bytes(packed)
        except OSError as exc:
            logger.warning("site %s: sending a task failed: %r", self.site, exc)
            self._disconnected(connection)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._socket.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("site %s: accepting an endpoint failed: %r", self.site, exc)
                continue
            connection = multiprocessing.connection.Connection(client.detach())
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: multiprocessing.connection.Connection) -> None:
        """Authenticate an endpoint that dialled in (the key, both ways, as multiprocessing's
        Listener does), make it the site's, send it the tasks that waited, read its results."""
        try:
            multiprocessing.connection.deliver_challenge(connection, self._key)
            multiprocessing.connection.answer_challenge(connection, self._key)
        except (OSError, EOFError, multiprocessing.AuthenticationError) as exc:
            logger.warning("site %s: an endpoint failed to authenticate: %r", self.site, exc)
            connection.close()
            return
        with self._lock:
            previous, self._connection = self._connection, connection
            waiting, self._waiting = self._waiting, {}
        if previous is not None:
            _hang_up(previous)
        logger.info("site %s: its endpoint connected", self.site)
        for packed in waiting.values():
            self._send(connection, packed)
        self._read(connection)

    def _read(self, connection: multiprocessing.connection.Connection) -> None:
        """Each result settles its task's future, until the endpoint goes."""
        from globus_compute_common import messagepack

        while True:
            try:
                packed = connection.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                result = messagepack.unpack(packed)
            except Exception as exc:  # not a Result: the endpoint is not one we can talk to
                logger.warning("site %s: unreadable message from its endpoint: %r", self.site, exc)
                break
            with self._lock:
                entry = self._pending.pop(result.task_id, None)
            if entry is None or entry[0].done():  # cancelled: its caller gave up
                continue
            future, name = entry
            if result.is_error:
                reason = remote_reason(result.data)
                future.set_exception(SiteFunctionError(f"{name} failed at the site: {reason}"))
                continue
            try:
                future.set_result(self._serde.deserialize(result.data))
            except Exception as exc:  # a result this side cannot read
                future.set_exception(ChannelError(f"the result of {name} cannot be read: {exc}"))
        self._disconnected(connection)

    def _disconnected(self, connection: multiprocessing.connection.Connection) -> None:
        with self._lock:
            if self._connection is not connection:
                return
            self._connection = None
        _hang_up(connection)
        if not self._closed:
            logger.warning("site %s: its endpoint disconnected", self.site)
            self._fail_pending("the site's endpoint disconnected while running it")

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._waiting = {}
        for future, name in pending.values():
            if not future.done():
                future.set_exception(ChannelError(f"{name}: {reason}"))

    def _forget(self, task_id: uuid.UUID) -> None:
        with self._lock:
            self._pending.pop(task_id, None)
            self._waiting.pop(task_id, None)


def _hang_up(connection: multiprocessing.connection.Connection) -> None:
    """Close a connection that a reader thread may be blocked on: shut the socket down
    first, or the peer never hears of it (the blocked read keeps the socket open)."""
    with (
        contextlib.suppress(OSError),
        socket.fromfd(connection.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def _start_endpoint(
    config: EndpointEngineChannelConfig, key: str, address: tuple[str, int]
) -> subprocess.Popen:
    """The site's endpoint, on this host, in its own environment (`python`)."""
    python = config.python or sys.executable
    command = [python, "-m", "serve_app.cli", "site", "endpoint"]
    command += ["--gateway", f"{address[0]}:{address[1]}", "--workers", str(config.workers)]
    try:
        return subprocess.Popen(
            [*command, "--once"], env={**os.environ, ENDPOINT_KEY_VARIABLE: key}
        )
    except OSError as exc:
        raise ChannelError(f"cannot start the site's endpoint with {python}: {exc}") from None
