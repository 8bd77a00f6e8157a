"""The workflows built on the request path: bulk requests, tribunals, RAG collections."""

from __future__ import annotations

import re
import string
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from deployments.config_loading import AbsolutePath, StrictConfig

DEFAULT_CRITIC_PROMPT = (
    "You review answers for accuracy and clarity. Here is a conversation and a draft "
    "answer to its last message.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Draft answer:\n{answer}\n\n"
    "List the draft's factual errors, gaps and unclear parts, the most important first. "
    "Be brief and specific; do not rewrite the answer."
)
DEFAULT_REVISE_PROMPT = (
    "Reviewers critiqued your answer:\n\n{critiques}\n\n"
    "Write an improved answer to my previous message that addresses their points. "
    "Reply with the answer only."
)
DEFAULT_RAG_PROMPT = (
    "Answer the user's question from the sources below. Cite each source you use by its "
    "number, like [1]. If the sources do not hold the answer, say so.\n\n"
    "Sources:\n\n{sources}"
)
CRITIC_FIELDS = {"conversation", "answer"}
REVISE_FIELDS = {"critiques", "answer", "conversation"}
# Also a LanceDB table name.
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class BulkConfig(StrictConfig):
    """Bulk requests (`POST /v1/chat/completions/batch`, a list `prompt` of
    `/v1/completions`, a list `input` of `/v1/embeddings`): many items, one answer."""

    max_items: int = Field(
        512,
        ge=1,
        description="Most conversations (prompts, inputs) in one bulk request; larger ones get "
        "413 and are pointed at the Batch API, which keeps going if the caller goes away.",
    )
    concurrency: int = Field(
        64,
        ge=1,
        description="Items of one bulk request in flight at once, each placed on its own (the "
        "least-loaded site first), so a bulk request fills every site serving the model.",
    )
    embedding_inputs_per_request: int = Field(
        32,
        ge=1,
        description="A list `input` of /v1/embeddings goes to the sites in slices of this many "
        "inputs, each slice placed on its own.",
    )


class TribunalPromptsConfig(StrictConfig):
    """The tribunal's prompt templates (Python format strings)."""

    critic: str = Field(
        DEFAULT_CRITIC_PROMPT,
        description="Each critic's one user message; fields {conversation} (the caller's "
        "messages as text) and {answer} (the current draft).",
    )
    revise: str = Field(
        DEFAULT_REVISE_PROMPT,
        description="The reviser sees the caller's messages, the draft as the assistant's "
        "reply, then this; fields {critiques} (every critic's, numbered), {answer}, "
        "{conversation}.",
    )

    @field_validator("critic")
    @classmethod
    def _critic_fields(cls, template: str) -> str:
        return _known_fields(template, CRITIC_FIELDS)

    @field_validator("revise")
    @classmethod
    def _revise_fields(cls, template: str) -> str:
        return _known_fields(template, REVISE_FIELDS)


class TribunalConfig(StrictConfig):
    """A generate -> critique -> revise workflow, called by its name as a chat model.

    The generator answers the caller's messages; every critic of the panel
    critiques that answer at once (each placed on whichever site serves its
    model); the reviser rewrites the answer with the critiques; `rounds`
    times critique and revise. The answer is the last revision.
    """

    name: str = Field(min_length=1, description="The model id clients call; listed in /v1/models.")
    generator: str = Field(min_length=1, description="Model that writes the first answer.")
    critics: list[str] = Field(
        min_length=1, description="The panel: models that critique each answer, in parallel."
    )
    reviser: str = Field(min_length=1, description="Model that revises the answer.")
    rounds: int = Field(1, ge=1, le=8, description="Critique-and-revise rounds.")
    critic_max_tokens: int = Field(
        256, ge=1, description="Most tokens of one critique (the caller's limit is the answer's)."
    )
    prompts: TribunalPromptsConfig = Field(default_factory=TribunalPromptsConfig)

    @property
    def members(self) -> list[str]:
        """Every model the tribunal calls, each once, in the order it first calls them."""
        return list(dict.fromkeys([self.generator, *self.critics, self.reviser]))


def _known_fields(template: str, known: set[str]) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a format string: {exc}") from None
    unknown = names - known
    if unknown:
        raise ValueError(
            f"unknown field {{{sorted(unknown)[0]}}}; the fields are "
            + ", ".join(f"{{{name}}}" for name in sorted(known))
        )
    return template


class SeededCollectionConfig(StrictConfig):
    """A collection built from files when the gateway starts."""

    name: str = Field(description="The collection.")
    paths: list[AbsolutePath] = Field(
        min_length=1, description="Files and folders (Markdown, text, PDF) to ingest."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_collection_name(name)


class RagConfig(StrictConfig):
    """Retrieval-augmented chat over collections of documents (`/v1/rag/...`).

    A collection is a LanceDB table of chunks on disk, each with its text
    (BM25 full-text index) and its embedding (vector search); a question is
    answered from the chunks both searches rank best, fused (hybrid search).
    """

    path: AbsolutePath = Field(
        Path(".first/rag"),
        validate_default=True,
        description="Folder of the collections, shared by the gateway's replicas.",
    )
    embedding_model: str | None = Field(
        None,
        description="Model that embeds a new collection's chunks when its first ingestion "
        "names none: a model a site serves as an embedding model.",
    )
    chunk_chars: int = Field(1000, ge=100, description="Most characters of one chunk.")
    overlap_chars: int = Field(
        150, ge=0, description="Characters of a chunk repeated at the start of the next."
    )
    top_k: int = Field(4, ge=1, le=50, description="Chunks a question is answered from.")
    prompt: str = Field(
        DEFAULT_RAG_PROMPT,
        description="System message put before the caller's messages; field {sources}: the "
        "chunks found, numbered, each with its title.",
    )
    collections: list[SeededCollectionConfig] = Field(
        default_factory=list,
        description="Collections `first gateway up` ingests from files once it answers "
        "(unchanged files are skipped): a centre's own documentation, say.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_fields(cls, template: str) -> str:
        return _known_fields(template, {"sources"})

    @model_validator(mode="after")
    def _overlap_within_chunk(self) -> RagConfig:
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError("overlap_chars: must be less than chunk_chars")
        return self


def check_collection_name(name: str) -> str:
    """A collection's name, or ValueError saying what one may be."""
    if not COLLECTION_NAME.fullmatch(name) or name == "collections":
        raise ValueError(
            f"{name!r} is not a collection name: 1 to 64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (and not 'collections')"
        )
    return name
