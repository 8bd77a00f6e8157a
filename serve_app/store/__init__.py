"""Where the gateway keeps API keys, the usage ledger and stored responses: interfaces, and
SQLite behind them."""

from serve_app.store.interfaces import (
    KEY_PREFIX,
    ApiKey,
    CredentialKind,
    KeyStore,
    ResponseStore,
    StoredResponse,
    StoreError,
    UsageGrouping,
    UsageRecord,
    UsageStore,
    UsageSummary,
    hash_credential,
    new_api_key,
)
from serve_app.store.sqlite import SqliteStore, build_store, connect

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "CredentialKind",
    "KeyStore",
    "ResponseStore",
    "SqliteStore",
    "StoreError",
    "StoredResponse",
    "UsageGrouping",
    "UsageRecord",
    "UsageStore",
    "UsageSummary",
    "build_store",
    "connect",
    "hash_credential",
    "new_api_key",
]
