"""Files, batches and batch results: the `BatchStore` interface and its SQLite default.

Metadata lives in the gateway's SQLite file (beside keys and usage), file
contents in `store.files_dir`. A batch's results are rows keyed by the input
line they answer, so a result reported twice (a gateway that restarted and
read the Ray job's log again) is stored once, and the lines still to run are
the ones without a row. The output and error files are written from those
rows when the batch ends.

A batch is supervised by one gateway process at a time: the one holding its
lease. Every write a supervisor makes checks the lease in the same
transaction, so a replica that lost its lease (paused, partitioned) cannot
overwrite the one that took over.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from deployments.batch_jobs import BatchResult
from serve_app.batch.protocol import (
    ACTIVE_BATCH_STATUSES,
    BatchRecord,
    FileRecord,
)
from serve_app.store import StoreError, connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, created_at);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    cancel_requested_at REAL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, created_at);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL,
    line_index INTEGER NOT NULL,
    kind TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (batch_id, line_index)
);
"""
_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_BATCH_STATUSES)


class BatchStore(Protocol):
    def add_file(self, record: FileRecord, content: bytes) -> None: ...
    def get_file(self, file_id: str) -> FileRecord | None: ...
    def file_path(self, file_id: str) -> Path: ...
    def list_files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[FileRecord], bool]: ...
    def delete_file(self, file_id: str) -> None: ...
    def add_batch(self, record: BatchRecord, results: list[BatchResult]) -> None: ...
    def get_batch(self, batch_id: str) -> BatchRecord | None: ...
    def list_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]: ...
    def request_cancel(self, batch_id: str, at: float) -> None: ...
    def claim_batches(self, owner: str, now: float, lease_s: float) -> list[BatchRecord]: ...
    def release_batches(self, owner: str) -> None: ...
    def save_batch(
        self, record: BatchRecord, owner: str, results: Iterable[BatchResult] = ()
    ) -> bool: ...
    def result_counts(self, batch_id: str) -> tuple[int, int]: ...
    def batch_counts(self) -> dict[str, int]: ...
    def answered_lines(self, batch_id: str) -> set[int]: ...
    def results(self, batch_id: str, kind: str) -> Iterator[str]: ...
    def delete_results(self, batch_id: str) -> None: ...


class SqliteBatchStore:
    def __init__(self, path: Path, files_dir: Path):
        self.path = path
        self.files_dir = files_dir
        try:
            files_dir.mkdir(parents=True, exist_ok=True)
            with connect(path) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the batch store {path}, {files_dir}: {exc}") from None

    # -- files --------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    def add_file(self, record: FileRecord, content: bytes) -> None:
        path = self.file_path(record.id)
        partial = path.with_suffix(".partial")
        partial.write_bytes(content)
        partial.rename(path)
        with connect(self.path) as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.created_at,
                    record.purpose,
                    record.model_dump_json(),
                ),
            )

    def get_file(self, file_id: str) -> FileRecord | None:
        with connect(self.path) as db:
            row = db.execute("SELECT record FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRecord.model_validate_json(row[0]) if row else None

    def list_files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[FileRecord], bool]:
        where, args = ["owner = ?"], [owner]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        rows = _page(self.path, "files", "record", where, args, after, limit, newest_first)
        return [FileRecord.model_validate_json(r[0]) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> None:
        with connect(self.path) as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)

    # -- batches ------------------------------------------------------------

    def add_batch(self, record: BatchRecord, results: list[BatchResult]) -> None:
        with connect(self.path) as db:
            db.execute(
                "INSERT INTO batches (id, owner, created_at, status, record) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.owner, record.created_at, record.status, _json(record)),
            )
            _insert_results(db, record.id, results)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        with connect(self.path) as db:
            row = db.execute(
                "SELECT record, cancel_requested_at FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        return _batch(row) if row else None

    def list_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        columns = "record, cancel_requested_at"
        rows = _page(self.path, "batches", columns, ["owner = ?"], [owner], after, limit, True)
        return [_batch(row) for row in rows[:limit]], len(rows) > limit

    def request_cancel(self, batch_id: str, at: float) -> None:
        with connect(self.path) as db:
            db.execute(
                "UPDATE batches SET cancel_requested_at = ? "
                "WHERE id = ? AND cancel_requested_at IS NULL",
                (at, batch_id),
            )

    def claim_batches(self, owner: str, now: float, lease_s: float) -> list[BatchRecord]:
        """Take (or renew) the lease of every unfinished batch nobody else holds."""
        with connect(self.path) as db:
            db.execute(
                f"UPDATE batches SET lease_owner = ?, lease_until = ? WHERE status IN ({_ACTIVE}) "
                "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                (owner, now + lease_s, owner, now),
            )
            rows = db.execute(
                "SELECT record, cancel_requested_at FROM batches "
                f"WHERE lease_owner = ? AND status IN ({_ACTIVE}) ORDER BY created_at",
                (owner,),
            ).fetchall()
        return [_batch(row) for row in rows]

    def release_batches(self, owner: str) -> None:
        with connect(self.path) as db:
            db.execute(
                "UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?",
                (owner,),
            )

    def save_batch(
        self, record: BatchRecord, owner: str, results: Iterable[BatchResult] = ()
    ) -> bool:
        """Write the batch (and new results) if `owner` still holds its lease."""
        with connect(self.path) as db:
            updated = db.execute(
                "UPDATE batches SET status = ?, record = ? WHERE id = ? AND lease_owner = ?",
                (record.status, _json(record), record.id, owner),
            ).rowcount
            if updated:
                _insert_results(db, record.id, results)
        return bool(updated)

    def result_counts(self, batch_id: str) -> tuple[int, int]:
        """(lines answered, lines that failed)."""
        with connect(self.path) as db:
            counts = dict(
                db.execute(
                    "SELECT kind, COUNT(*) FROM batch_results WHERE batch_id = ? GROUP BY kind",
                    (batch_id,),
                ).fetchall()
            )
        return counts.get("output", 0), counts.get("error", 0)

    def batch_counts(self) -> dict[str, int]:
        """Batches per status, for the metrics."""
        with connect(self.path) as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status"))

    def answered_lines(self, batch_id: str) -> set[int]:
        with connect(self.path) as db:
            rows = db.execute(
                "SELECT line_index FROM batch_results WHERE batch_id = ?", (batch_id,)
            ).fetchall()
        return {row[0] for row in rows}

    def results(self, batch_id: str, kind: str) -> Iterator[str]:
        """The batch's result lines of one kind, in input order."""
        with connect(self.path) as db:
            cursor = db.execute(
                "SELECT line FROM batch_results WHERE batch_id = ? AND kind = ? "
                "ORDER BY line_index",
                (batch_id, kind),
            )
            for (line,) in cursor:
                yield line

    def delete_results(self, batch_id: str) -> None:
        with connect(self.path) as db:
            db.execute("DELETE FROM batch_results WHERE batch_id = ?", (batch_id,))


def _json(record: BatchRecord) -> str:
    return record.model_dump_json(exclude={"cancel_requested_at"})


def _batch(row: tuple) -> BatchRecord:
    record, cancel_requested_at = row
    batch = BatchRecord.model_validate_json(record)
    batch.cancel_requested_at = cancel_requested_at
    return batch


def _insert_results(db: sqlite3.Connection, batch_id: str, results: Iterable[BatchResult]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO batch_results VALUES (?, ?, ?, ?)",
        ((batch_id, r.index, r.kind, _compact(r.line)) for r in results),
    )


def _compact(line: dict) -> str:
    return json.dumps(line, separators=(",", ":"))


def _page(  # noqa: PLR0913
    path: Path,
    table: str,
    columns: str,
    where: list[str],
    args: list,
    after: str | None,
    limit: int,
    newest_first: bool,
) -> list[tuple]:
    """Rows of one page (one more than `limit`, to tell whether more follow)."""
    order = "DESC" if newest_first else "ASC"
    with connect(path) as db:
        if after is not None:
            anchor = db.execute(f"SELECT created_at FROM {table} WHERE id = ?", (after,)).fetchone()
            if anchor is not None:
                compare = "<" if newest_first else ">"
                where = [*where, f"(created_at {compare} ? OR (created_at = ? AND id {compare} ?))"]
                args = [*args, anchor[0], anchor[0], after]
        rows = db.execute(
            f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {order}, id {order} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
    return rows
