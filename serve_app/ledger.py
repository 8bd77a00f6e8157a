"""The usage ledger: one record per request, written in batches off the request path.

A request only appends its record to a queue (no I/O, no await); one writer
thread per replica takes what has queued up and writes it in one
transaction every `flush_interval_s`, or sooner once `batch_size` records
wait. `close()` (the app's shutdown) writes everything still queued, so a
clean shutdown loses nothing. A failed write is retried on the next round
rather than dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from serve_app.config import LedgerConfig
from serve_app.store import UsageRecord, UsageStore

logger = logging.getLogger(__name__)
_STOP = object()


class UsageLedger:
    def __init__(self, store: UsageStore, config: LedgerConfig):
        self.store = store
        self.config = config
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="usage-ledger", daemon=True)
        self._writer.start()

    def record(self, record: UsageRecord) -> None:
        self._queue.put(record)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything recorded so far, then stop the writer."""
        self._queue.put(_STOP)
        self._writer.join(timeout_s)
        if self._writer.is_alive():
            logger.error("the usage ledger did not finish writing within %.0f s", timeout_s)

    def _write_loop(self) -> None:
        pending: list[UsageRecord] = []
        stopping = False
        while not stopping:
            deadline = time.monotonic() + self.config.flush_interval_s
            while len(pending) < self.config.batch_size:
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                pending.append(item)
            pending = self._write(pending, final=stopping)

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
