"""Who may call the gateway and how much: authentication, the access policy, limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from deployments.config_loading import StrictConfig


class GlobusAuthConfig(StrictConfig):
    """Accept Globus Auth access tokens issued for this gateway (FIRST's sign-in).

    The gateway is a Globus resource server: its confidential client's id and
    secret come from FIRST_GLOBUS_CLIENT_ID / FIRST_GLOBUS_CLIENT_SECRET or the
    secrets file, never from this file.
    """

    scope: str = Field(
        min_length=1,
        description="The gateway's own scope string; a token must carry it in `scope` "
        "(or name `audience` in `aud`).",
    )
    audience: str | None = Field(
        None, description="Resource server name accepted in a token's `aud` (default: none)."
    )
    secrets_file: Path | None = Field(
        None,
        description="YAML file with client_id and client_secret, for sites that keep secrets "
        "in files (the environment wins when both are set).",
    )
    http_timeout_s: float = Field(5.0, gt=0, description="One call to Globus Auth or Groups.")
    max_retries: int = Field(1, ge=0, description="Retries of a failed call to Globus.")


class CredentialCacheConfig(StrictConfig):
    """How long a checked credential is trusted without asking again."""

    max_s: float = Field(
        600.0, gt=0, description="Longest a validated Globus token is trusted (capped by its exp)."
    )
    failure_s: float = Field(
        10.0, ge=0, description="How long a refused credential is remembered as refused."
    )
    api_key_s: float = Field(
        10.0, gt=0, description="How long an API key is trusted; a revoked key stops this soon."
    )


class AuthConfig(StrictConfig):
    """Who may call: API keys from the store, Globus Auth tokens, or (tests only) anyone."""

    required: bool = Field(
        True,
        description="False: no credential is checked and every caller is 'anonymous' (closed "
        "networks and tests only).",
    )
    api_keys: bool = Field(True, description="Accept API keys made with `first keys create`.")
    globus: GlobusAuthConfig | None = Field(None, description="Accept Globus Auth tokens.")
    cache: CredentialCacheConfig = Field(default_factory=CredentialCacheConfig)
    max_credential_bytes: int = Field(
        4096, ge=64, description="Longer Authorization headers are refused with 401."
    )


class ModelAccessConfig(StrictConfig):
    groups: list[str] = Field(
        min_length=1, description="Only members of one of these groups see and use the model."
    )


class PolicyConfig(StrictConfig):
    """What an authenticated caller may do. API keys carry the groups given at creation."""

    identity_domains: list[str] = Field(
        default_factory=list,
        description="Globus logins whose username ends in @DOMAIN for one of these are allowed "
        "(with identity_providers: either allowlist suffices; both empty: any).",
    )
    identity_providers: list[str] = Field(
        default_factory=list, description="Globus identity provider ids whose logins are allowed."
    )
    groups: list[str] = Field(
        default_factory=list,
        description="Callers must belong to one of these groups (Globus group ids, or the "
        "groups of an API key); empty: any caller.",
    )
    models: dict[str, ModelAccessConfig] = Field(
        default_factory=dict, description="Models restricted to some groups, by model id."
    )
    admin_groups: list[str] = Field(
        default_factory=list,
        description="Members of these groups may read everyone's usage (GET /v1/usage).",
    )

    @property
    def uses_groups(self) -> bool:
        return bool(self.groups or self.models or self.admin_groups)


class CacheIsolationConfig(StrictConfig):
    """Each caller's own slice of the sites' prefix caches (vLLM's `cache_salt`)."""

    enabled: bool = Field(
        True,
        description="Salt every request a site gets with a key of its caller, so that no "
        "request hits KV blocks another caller's prompt left: a hit makes the first token "
        "faster, which would tell a user that someone else sent the same prefix.",
    )
    shared_groups: list[str] = Field(
        default_factory=list,
        description="Groups whose members share one salt, and so one another's cached "
        "prefixes (a project with a long system prompt in common). A caller in several "
        "takes the first listed.",
    )


class UserLimitsConfig(StrictConfig):
    requests_per_s: float | None = Field(None, gt=0, description="Overrides the default.")
    tokens_per_min: int | None = Field(None, gt=0, description="Overrides the default.")
    max_in_flight: int | None = Field(None, gt=0, description="Overrides the default.")


class LimitsConfig(StrictConfig):
    """Per-user and per-model limits, shared by every ingress replica. null: no limit."""

    requests_per_s: float | None = Field(10.0, gt=0, description="Requests per second per user.")
    burst: float | None = Field(
        None, gt=0, description="Requests a user may send at once (default: one second's worth)."
    )
    tokens_per_min: int | None = Field(
        60_000, gt=0, description="Prompt plus completion tokens per minute per user."
    )
    model_tokens_per_min: int | None = Field(
        None,
        gt=0,
        description="Tokens per minute per model, all users together (none by default: "
        "one busy GPU can produce more than any figure that fits every model).",
    )
    max_in_flight: int | None = Field(
        256,
        gt=0,
        description="Requests one user may have open at once, over every replica; past it "
        "429 at once. Below a site's max_in_flight (1,024), so no one user fills a site and "
        "leaves the others its 503s; as many as vLLM batches on a GPU (max_num_seqs 256).",
    )
    users: dict[str, UserLimitsConfig] = Field(
        default_factory=dict, description="Limits for particular users (service accounts)."
    )
    models: dict[str, int] = Field(
        default_factory=dict, description="Tokens per minute for particular models."
    )
    default_max_tokens: int = Field(
        1024,
        ge=1,
        description="Completion tokens that a request which sets no max_tokens reserves at "
        "admission; what it did not use goes back when it ends (and more is taken if it "
        "used more).",
    )

    def for_user(self, user: str) -> UserLimitsConfig:
        """The user's effective request, token and in-flight limits."""
        override = self.users.get(user, UserLimitsConfig())
        return UserLimitsConfig(
            requests_per_s=override.requests_per_s or self.requests_per_s,
            tokens_per_min=override.tokens_per_min or self.tokens_per_min,
            max_in_flight=override.max_in_flight or self.max_in_flight,
        )

    def for_model(self, model: str) -> int | None:
        return self.models.get(model, self.model_tokens_per_min)
