"""The batch store: leases decide who supervises, results are stored once per line."""

from __future__ import annotations

import time

import pytest

from deployments.batch_jobs import BatchResult
from serve_app.batch.protocol import BatchRecord, FileRecord
from serve_app.batch.store import SqliteBatchStore


@pytest.fixture
def store(tmp_path) -> SqliteBatchStore:
    return SqliteBatchStore(tmp_path / "first.db", tmp_path / "files")


def batch(batch_id: str = "batch_1", created_at: int = 1, owner: str = "ann") -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status="validating",
        created_at=created_at,
        owner=owner,
    )


def result(index: int, kind: str = "output") -> BatchResult:
    return BatchResult(index=index, kind=kind, line={"custom_id": f"c{index}"})


def test_one_process_holds_a_batch_until_its_lease_runs_out(store):
    store.add_batch(batch(), [])
    now = time.time()
    assert [b.id for b in store.claim_batches("a", now, lease_s=10)] == ["batch_1"]
    assert store.claim_batches("b", now + 5, lease_s=10) == []
    assert not store.save_batch(batch(), "b")  # not b's to write
    assert [b.id for b in store.claim_batches("b", now + 11, lease_s=10)] == ["batch_1"]
    assert not store.save_batch(batch(), "a")  # a lost it
    store.release_batches("b")
    assert [b.id for b in store.claim_batches("a", now + 12, lease_s=10)] == ["batch_1"]


def test_a_result_reported_twice_is_stored_once(store):
    store.add_batch(batch(), [result(3, "error")])
    store.claim_batches("a", time.time(), lease_s=10)
    assert store.save_batch(batch(), "a", [result(0), result(1)])
    assert store.save_batch(batch(), "a", [result(1), result(2)])  # a log read again
    assert store.result_counts("batch_1") == (3, 1)
    assert store.answered_lines("batch_1") == {0, 1, 2, 3}
    assert list(store.results("batch_1", "output")) == [
        '{"custom_id":"c0"}',
        '{"custom_id":"c1"}',
        '{"custom_id":"c2"}',
    ]


def test_finished_batches_are_not_claimed_and_a_cancel_request_shows(store):
    done = batch("batch_done")
    done.status = "completed"
    store.add_batch(done, [])
    store.add_batch(batch("batch_live"), [])
    store.request_cancel("batch_live", 123.0)
    (claimed,) = store.claim_batches("a", time.time(), lease_s=10)
    assert claimed.id == "batch_live" and claimed.cancel_requested_at == 123.0


def test_lists_page_newest_first_and_only_the_owners(store):
    for i in range(5):
        store.add_batch(batch(f"batch_{i}", created_at=i), [])
    store.add_batch(batch("batch_other", created_at=9, owner="bob"), [])
    first, more = store.list_batches("ann", None, 2)
    assert [b.id for b in first] == ["batch_4", "batch_3"] and more
    rest, more = store.list_batches("ann", "batch_3", 10)
    assert [b.id for b in rest] == ["batch_2", "batch_1", "batch_0"] and not more


def test_files_keep_their_content_until_deleted(store):
    record = FileRecord(
        id="file-1",
        bytes=3,
        created_at=1,
        filename="a.jsonl",
        purpose="batch",
        owner="ann",
        lines=1,
    )
    store.add_file(record, b"abc")
    assert store.file_path("file-1").read_bytes() == b"abc"
    assert store.get_file("file-1") == record
    files, more = store.list_files("ann", "batch", None, 10, newest_first=True)
    assert [f.id for f in files] == ["file-1"] and not more
    store.delete_file("file-1")
    assert store.get_file("file-1") is None and not store.file_path("file-1").exists()
