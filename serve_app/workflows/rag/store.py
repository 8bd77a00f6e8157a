"""Collections on disk: one LanceDB table per collection, searched by words and meaning.

LanceDB is embedded (no server), keeps its tables in a folder the
gateway's replicas share, and does what a RAG collection needs in one
query: BM25 over a full-text index, exact vector search, and the two
rankings fused by reciprocal rank (`RRFReranker`, arithmetic only: nothing
is downloaded). Chroma has no BM25, Qdrant's local mode leaves the sparse
vectors to the caller, and sqlite-vec with FTS5 leaves the fusion to us.

Each row is a chunk: its id (`document#n`), document, title, the text
indexed (heading path and text), the document's content hash (to skip a
document ingested again unchanged) and its vector. The embedding model and
creation time are the table's schema metadata. Every method blocks: the
service runs them in a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS
from lancedb.rerankers import RRFReranker

MODEL_KEY, CREATED_KEY = b"first.embedding_model", b"first.created"


@dataclass(frozen=True)
class Collection:
    name: str
    embedding_model: str
    documents: int
    chunks: int
    created: int


@dataclass(frozen=True)
class ChunkRow:
    id: str
    document: str
    title: str
    text: str
    doc_hash: str
    vector: list[float]


@dataclass(frozen=True)
class Found:
    id: str
    document: str
    title: str
    text: str
    score: float


class CollectionStore:
    def __init__(self, path: Path):
        self.path = path
        self._db: lancedb.DBConnection | None = None

    @property
    def db(self) -> lancedb.DBConnection:
        if self._db is None:  # at first use: a gateway without collections makes no folder
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(self.path)
        return self._db

    def names(self) -> list[str]:
        return sorted(self.db.list_tables().tables)

    def get(self, name: str) -> Collection | None:
        if name not in self.names():
            return None
        table = self.db.open_table(name)
        metadata = table.schema.metadata or {}
        documents = table.to_arrow().column("document")
        return Collection(
            name=name,
            embedding_model=metadata.get(MODEL_KEY, b"").decode(),
            documents=pc.count_distinct(documents).as_py() if len(documents) else 0,
            chunks=len(documents),
            created=int(metadata.get(CREATED_KEY, b"0")),
        )

    def drop(self, name: str) -> bool:
        if name not in self.names():
            return False
        self.db.drop_table(name)
        return True

    def hashes(self, name: str) -> dict[str, str]:
        """Each document's content hash, as last ingested."""
        if name not in self.names():
            return {}
        rows = self.db.open_table(name).to_arrow().select(["document", "doc_hash"]).to_pylist()
        return {row["document"]: row["doc_hash"] for row in rows}

    def replace(
        self, name: str, embedding_model: str, documents: list[str], rows: list[ChunkRow]
    ) -> None:
        """`documents`' chunks become `rows` (the collection is made if new); the text
        index is rebuilt so that every row is found by words at once."""
        if not rows and name not in self.names():
            return
        table = self._table(name, embedding_model, len(rows[0].vector) if rows else 0)
        if documents:
            quoted = ", ".join("'" + d.replace("'", "''") + "'" for d in documents)
            table.delete(f"document IN ({quoted})")
        if rows:
            table.add([row.__dict__ for row in rows])
        table.create_index("text", config=FTS(), replace=True)

    def search(self, name: str, query: str, vector: list[float], top_k: int) -> list[Found]:
        """The chunks BM25 and vector search rank best, fused by reciprocal rank."""
        hits = (
            self.db.open_table(name)
            .search(query_type="hybrid")
            .vector(vector)
            .text(query)
            .distance_type("cosine")
            .rerank(RRFReranker())
            .limit(top_k)
            .to_list()
        )
        return [
            Found(h["id"], h["document"], h["title"], h["text"], h["_relevance_score"])
            for h in hits
        ]

    def _table(self, name: str, embedding_model: str, dim: int) -> lancedb.table.Table:
        if name in self.names():
            return self.db.open_table(name)
        metadata = {MODEL_KEY: embedding_model.encode(), CREATED_KEY: str(int(time.time()))}
        schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("document", pa.string()),
                pa.field("title", pa.string()),
                pa.field("text", pa.string()),
                pa.field("doc_hash", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ],
            metadata=metadata,
        )
        return self.db.create_table(name, schema=schema)
