"""The site's end of the endpoint-engine channel: globus-compute-endpoint's own engine.

A Globus Compute endpoint takes tasks from the Globus cloud, hands each to its
engine, and sends the engine's packed result back. This process does the same
with the gateway in the cloud's place: it dials out to the gateway (a site
needs no inbound connection, as with Globus Compute), receives each task as the
SDK packed it, runs it through `ProcessPoolEngine` (the endpoint's engine;
`execute_task` unpacks, imports, runs and packs in a worker process, and
enforces the 10 MB result limit) and sends the packed `Result` back as is.

The wire is `multiprocessing.connection` (authenticated by a shared key, the
FIRST_ENDPOINT_KEY of both ends): one message per task, one per result, the
bytes Globus Compute itself would carry. It needs globus-compute-endpoint,
which lives in the endpoint's own environment (deployments/endpoint-requirements.txt).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import tempfile
import threading
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)
# Seconds between two attempts to reach the gateway: doubling up to the last.
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def run_endpoint(  # noqa: PLR0913 (where to dial, how, and how many workers, spelled out)
    gateway: tuple[str, int],
    key: bytes,
    workers: int,
    once: bool = False,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Serve the gateway's tasks until `stop` is set (or, `once`, the first connection ends)."""
    from globus_compute_endpoint.engines import ProcessPoolEngine

    stop = stop or threading.Event()
    # Spawned workers: the engine's pool must not fork a process that holds threads.
    engine = ProcessPoolEngine(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    with tempfile.TemporaryDirectory(prefix="first-endpoint-") as run_dir:
        engine.start(endpoint_id=uuid.uuid4(), run_dir=run_dir)
        echo(f"endpoint engine ready: {workers} worker processes ({type(engine).__name__})")
        try:
            attempt = 0
            while not stop.is_set():
                try:
                    connection = multiprocessing.connection.Client(gateway, authkey=key)
                except (OSError, multiprocessing.AuthenticationError) as exc:
                    if once:
                        raise
                    wait_s = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                    echo(
                        f"cannot reach the gateway at {gateway[0]}:{gateway[1]} ({exc}); "
                        f"retrying in {wait_s:g} s"
                    )
                    attempt += 1
                    stop.wait(wait_s)
                    continue
                attempt = 0
                echo(f"connected to the gateway at {gateway[0]}:{gateway[1]}")
                _serve_tasks(engine, connection, stop)
                echo("the gateway closed the connection")
                if once:
                    return
        finally:
            engine.shutdown(block=True)


def _serve_tasks(engine, connection: multiprocessing.connection.Connection, stop) -> None:
    """Run every task the gateway sends until the connection ends; results go back as they
    finish, in any order (each names its task)."""
    from globus_compute_common import messagepack
    from globus_compute_endpoint.engines.base import GCFuture

    sending = threading.Lock()

    def send_result(future: GCFuture) -> None:
        try:
            packed = future.result()
        except Exception:  # the engine packs a task's own failure; this is its own
            logger.exception("the engine failed a task")
            return
        with sending:
            try:
                connection.send_bytes(packed)
            except (EOFError, OSError) as exc:
                logger.warning("a task finished after the gateway left: %r", exc)

    with connection:
        while not stop.is_set():
            try:
                if not connection.poll(0.5):
                    continue
                packed_task = connection.recv_bytes()
            except (EOFError, OSError):
                return
            task = messagepack.unpack(packed_task)
            future = GCFuture(gc_task_id=task.task_id)
            future.add_done_callback(send_result)
            engine.submit(future, packed_task, resource_specification={})
