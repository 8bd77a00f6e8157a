"""The usage ledger's writer (serve_app/usage/ledger.py) against the real SQLite store."""

from __future__ import annotations

import sqlite3

from serve_app.config import LedgerConfig
from serve_app.store import SqliteStore, UsageRecord
from serve_app.usage.ledger import UsageLedger
from tests.support.waiting import eventually


def usage(n: int, user: str = "ann") -> UsageRecord:
    return UsageRecord(
        time=float(n),
        request_id=f"r{n}",
        user=user,
        credential="api-key",
        route="/v1/chat/completions",
        model="m",
        site="s",
        status=200,
        latency_s=0.01,
    )


def test_close_writes_everything_recorded(tmp_path):
    store = SqliteStore(tmp_path / "first.db")
    ledger = UsageLedger(store, LedgerConfig(flush_interval_s=3600, batch_size=10_000))
    for n in range(250):
        ledger.record(usage(n))
    assert store.usage("ann") == []  # nothing due yet: neither the interval nor the batch
    ledger.close()
    assert sorted(r.request_id for r in store.usage("ann")) == sorted(f"r{n}" for n in range(250))


def test_a_full_batch_is_written_before_the_interval(tmp_path):
    store = SqliteStore(tmp_path / "first.db")
    ledger = UsageLedger(store, LedgerConfig(flush_interval_s=3600, batch_size=50))
    for n in range(50):
        ledger.record(usage(n))
    eventually(lambda: len(store.usage("ann")) == 50, 5.0, "50 records written", interval_s=0.02)
    ledger.close()


def test_records_are_written_every_interval(tmp_path):
    store = SqliteStore(tmp_path / "first.db")
    ledger = UsageLedger(store, LedgerConfig(flush_interval_s=0.1, batch_size=10_000))
    ledger.record(usage(1))
    eventually(
        lambda: len(store.usage("ann")) == 1, 5.0, "the first record written", interval_s=0.02
    )
    ledger.record(usage(2))
    eventually(
        lambda: len(store.usage("ann")) == 2, 5.0, "the second record written", interval_s=0.02
    )
    ledger.close()
    assert len(store.usage("ann")) == 2


def test_a_failed_write_is_retried_not_dropped(tmp_path, caplog):
    path = tmp_path / "first.db"
    store = SqliteStore(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE usage")  # every write fails until the store recreates it
    ledger = UsageLedger(store, LedgerConfig(flush_interval_s=0.1, batch_size=10_000))
    for n in range(5):
        ledger.record(usage(n))
    eventually(
        lambda: "writing 5 usage records failed" in caplog.text,
        5.0,
        "the failed write logged",
        interval_s=0.02,
    )
    SqliteStore(path)  # opening the store creates its tables again
    ledger.record(usage(5))
    ledger.close()
    assert len(store.usage("ann")) == 6
