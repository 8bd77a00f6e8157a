"""What the gateway keeps (API keys, usage records, stored responses) and the interfaces
it keeps them behind.

Callers depend on `KeyStore`, `UsageStore` and `ResponseStore` only, so a server database can
replace the SQLite default (serve_app/store/sqlite.py) without touching them.
API keys are random 256-bit strings, so one round of SHA-256 is enough to
store them safely (no password-style stretching needed, and a lookup stays
cheap); the key itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from deployments.errors import FirstError

KEY_PREFIX = "first-"
CredentialKind = Literal["api-key", "globus", "anonymous"]


class ApiKey(BaseModel):
    key_id: str
    user: str
    groups: list[str]
    created_at: float
    revoked_at: float | None = None


class UsageRecord(BaseModel):
    """One request, as the centre's allocation reports need it. Never a credential."""

    time: float
    request_id: str
    user: str
    credential: CredentialKind
    route: str
    model: str
    site: str | None
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float
    prompt: str | None = None
    completion: str | None = None


UsageGrouping = Literal["user", "model", "site", "route", "day"]


class UsageSummary(BaseModel):
    """Usage of one user, model, site, route or UTC day over a period."""

    key: str = Field(description="The user, model, site, route or day (YYYY-MM-DD, UTC).")
    requests: int
    errors: int = Field(description="Requests answered with a 4xx or 5xx status.")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StoredResponse(BaseModel):
    """A Responses API response as the gateway keeps it, owned by one user: the response,
    the request's input items, and the conversation as chat messages (its output last),
    which a next turn with `previous_response_id` continues on whichever site."""

    id: str
    user: str
    created_at: float
    response: dict
    input_items: list[dict]
    conversation: list[dict]


class StoreError(FirstError):
    """A store operation that cannot be done; the message is for the user."""


class KeyStore(Protocol):
    def add_key(self, key: str, user: str, groups: list[str]) -> ApiKey: ...
    def find_key(self, key: str) -> ApiKey | None: ...
    def list_keys(self) -> list[ApiKey]: ...
    def revoke_key(self, key_id: str) -> ApiKey: ...
    def delete_key(self, key_id: str) -> None: ...


class UsageStore(Protocol):
    def append_usage(self, records: Iterable[UsageRecord]) -> None: ...
    def usage(self, user: str | None = None) -> list[UsageRecord]: ...
    def usage_summary(
        self, since: float, until: float, by: UsageGrouping
    ) -> list[UsageSummary]: ...


class ResponseStore(Protocol):
    """Responses by id, each visible to its owner only: another user's id is not found."""

    def put_response(self, stored: StoredResponse) -> None: ...
    def get_response(self, response_id: str, user: str) -> StoredResponse | None: ...
    def delete_response(self, response_id: str, user: str) -> bool: ...


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()
