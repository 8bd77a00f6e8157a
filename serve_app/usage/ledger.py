"""The usage ledger: one record per request, written in batches off the request path.

A request only appends its record to a deque (no I/O, no await, no lock);
one writer thread per replica sleeps until `flush_interval_s` has passed or
`batch_size` records wait, then writes what has queued up in one
transaction. The writer is woken only then, never per record: a wake-up per
record made the event loop and the writer trade the GIL on every request
(p99 at concurrency 1: 7-50 ms instead of 3 ms, and 15% fewer requests per
second). `close()` (the app's shutdown) writes everything still queued, so a
clean shutdown loses nothing. A failed write is retried on the next round
rather than dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from serve_app.config import LedgerConfig
from serve_app.store import UsageRecord, UsageStore

logger = logging.getLogger(__name__)


class UsageLedger:
    def __init__(self, store: UsageStore, config: LedgerConfig):
        self.store = store
        self.config = config
        self._queued: collections.deque[UsageRecord] = collections.deque()
        self._due = threading.Event()  # batch_size records wait, or closing
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="usage-ledger", daemon=True)
        self._writer.start()

    def record(self, record: UsageRecord) -> None:
        self._queued.append(record)
        if len(self._queued) >= self.config.batch_size:
            self._due.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything recorded so far, then stop the writer."""
        self._closing = True
        self._due.set()
        self._writer.join(timeout_s)
        if self._writer.is_alive():
            logger.error("the usage ledger did not finish writing within %.0f s", timeout_s)

    def _write_loop(self) -> None:
        pending: list[UsageRecord] = []
        while True:
            self._due.wait(self.config.flush_interval_s)
            self._due.clear()
            closing = self._closing  # read before draining: nothing recorded before close is left
            while self._queued:
                pending.append(self._queued.popleft())
            pending = self._write(pending, final=closing)
            if closing:
                return

    def _write(self, pending: list[UsageRecord], final: bool) -> list[UsageRecord]:
        """Write `pending`; what could not be written is kept for the next round."""
        for attempt in range(3 if final else 1):
            if not pending:
                return pending
            try:
                self.store.append_usage(pending)
                return []
            except Exception:
                logger.exception("writing %d usage records failed (try %d)", len(pending), attempt)
                time.sleep(0.5 if final else 0)
        return pending
