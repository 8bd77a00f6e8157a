"""Authentication: the bearer credential of a request becomes a `Principal`, or a 401/403/503.

Two kinds of credential arrive the same way (`Authorization: Bearer ...`):
API keys made with `first keys create` (looked up, hashed, in the store) and
Globus Auth access tokens (introspected by Globus Auth, as FIRST does). A
credential is tried as an API key first: the lookup is local and cheap, and
a key set through FIRST_API_KEY may look like anything.

Checking costs a round trip (or three, with groups), so verdicts are cached
by a hash of the credential, never the credential itself: a valid token for
at most its remaining life and `cache.max_s`, a refused one for
`cache.failure_s`. Concurrent requests with the same new credential share
one check. When Globus Auth cannot be reached, a token checked before keeps
working until it expires, and a new one gets 503 (it may well be valid).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

import globus_sdk
from globus_sdk.transport import RequestsTransport, RetryConfig

from deployments.errors import FirstError
from serve_app.access.policy import ANONYMOUS, Policy, Principal
from serve_app.config import AuthConfig, GlobusAuthConfig
from serve_app.errors import (
    AuthenticationError,
    AuthUnavailableError,
    GatewayError,
    PermissionDeniedError,
)
from serve_app.settings import PREFIX, Settings
from serve_app.store import KEY_PREFIX, KeyStore, hash_credential

logger = logging.getLogger(__name__)
# RFC 6750 b64token: the characters a bearer credential may have.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_CACHE_SWEEP_SIZE = 100_000
GROUPS_SCOPE = str(globus_sdk.GroupsClient.scopes.view_my_groups_and_memberships)
SIGN_IN_HINT = (
    "Pass an API key or a Globus Auth access token as 'Authorization: Bearer <credential>' "
    "(the OpenAI SDK's api_key)."
)


class GlobusIntrospector:
    """Globus Auth as FIRST uses it: introspect the token, then the caller's groups."""

    def __init__(self, config: GlobusAuthConfig, client_id: str, client_secret: str):
        self.config = config
        self._transport = RequestsTransport(http_timeout=config.http_timeout_s)
        self._retries = RetryConfig(max_retries=config.max_retries)
        # Base URLs come from globus-sdk's own settings (GLOBUS_SDK_SERVICE_URL_AUTH, ...).
        self._auth = globus_sdk.ConfidentialAppAuthClient(
            client_id, client_secret, transport=self._transport, retry_config=self._retries
        )

    def introspect(self, token: str, with_groups: bool) -> Principal:
        """The token's identity; 401 if dead, 403 if not for us, 503 if Globus is unreachable."""
        info = self._call(
            lambda: self._auth.oauth2_token_introspect(
                token, include="session_info,identity_set_detail"
            )
        )
        if not info.get("active"):
            raise AuthenticationError(
                f"The credential is neither a known API key nor an active Globus token. "
                f"{SIGN_IN_HINT}"
            )
        expires_at = float(info.get("exp") or 0)
        if expires_at <= time.time():
            raise AuthenticationError("The Globus token has expired. Sign in again.")
        scopes = str(info.get("scope") or "").split()
        audience = info.get("aud") or []
        if self.config.scope not in scopes and not (
            self.config.audience and self.config.audience in audience
        ):
            raise PermissionDeniedError(
                "The Globus token was not issued for this service: it lacks the scope "
                f"{self.config.scope}."
            )
        identity = _primary_identity(info)
        groups = self._groups(token) if with_groups else frozenset()
        return Principal(
            user=str(info.get("username") or identity.get("username") or info.get("sub")),
            credential="globus",
            groups=groups,
            identity_id=info.get("sub"),
            name=info.get("name") or identity.get("name"),
            email=info.get("email") or identity.get("email"),
            identity_provider=_identity_provider(info, identity),
            expires_at=expires_at,
        )

    def _groups(self, token: str) -> frozenset[str]:
        tokens = self._call(
            lambda: self._auth.oauth2_get_dependent_tokens(token, scope=GROUPS_SCOPE)
        )
        try:
            groups_token = tokens.by_resource_server[globus_sdk.GroupsClient.resource_server]
        except KeyError:
            # Our scope was registered without the Groups dependency: no groups known.
            logger.warning(
                "Globus Auth gave no Groups token; the service scope lacks the "
                "view_my_groups_and_memberships dependency"
            )
            return frozenset()
        groups = globus_sdk.GroupsClient(
            authorizer=globus_sdk.AccessTokenAuthorizer(groups_token["access_token"]),
            transport=self._transport,
            retry_config=self._retries,
        )
        return frozenset(
            g["id"] for g in self._call(lambda: groups.get_my_groups(statuses="active"))
        )

    @staticmethod
    def _call(call):
        try:
            return call()
        except globus_sdk.NetworkError as exc:
            raise AuthUnavailableError(
                f"Globus Auth cannot be reached ({type(exc).__name__}); new sign-ins cannot be "
                "checked right now. Retry later.",
                retry_after_s=10,
            ) from None
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status == 400:  # invalid_grant: Globus refused the user's token
                raise AuthenticationError(f"The Globus token was refused. {SIGN_IN_HINT}") from None
            logger.error("Globus answered HTTP %s to the gateway (%s)", exc.http_status, exc.code)
            raise AuthUnavailableError(
                f"Globus Auth refused the gateway's own request (HTTP {exc.http_status}); "
                "new sign-ins cannot be checked right now.",
                retry_after_s=10,
            ) from None


def _primary_identity(info) -> dict:
    for identity in info.get("identity_set_detail") or []:
        if identity.get("sub", identity.get("id")) == info.get("sub"):
            return identity
    return {}


def _identity_provider(info, identity: dict) -> str | None:
    if identity.get("identity_provider"):
        return identity["identity_provider"]
    login = (info.get("session_info") or {}).get("authentications", {}).get(info.get("sub"), {})
    return login.get("idp")


@dataclass
class _Verdict:
    """A cached outcome: a caller, or the error to answer with, until `fresh_until`."""

    caller: Principal | None
    error: GatewayError | None
    fresh_until: float


class Authenticator:
    """Credentials to callers, with a per-replica cache and one check per new credential."""

    def __init__(
        self,
        config: AuthConfig,
        policy: Policy,
        keys: KeyStore | None,
        globus: GlobusIntrospector | None,
    ):
        self.config = config
        self.policy = policy
        self.keys = keys if config.api_keys else None
        self.globus = globus
        self._cache: dict[str, _Verdict] = {}
        self._checking: dict[str, asyncio.Task[_Verdict]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        token = self._bearer(authorization)
        if token is None:
            return ANONYMOUS
        digest = hash_credential(token)
        now = time.monotonic()
        verdict = self._cache.get(digest)
        if verdict is None or verdict.fresh_until <= now:
            verdict = await self._check_once(digest, token, verdict)
        if verdict.error is not None:
            raise verdict.error
        assert verdict.caller is not None
        return verdict.caller

    def _bearer(self, authorization: str | None) -> str | None:
        if not self.config.required:
            return None
        if not authorization:
            raise AuthenticationError(f"Missing credential. {SIGN_IN_HINT}")
        if len(authorization) > self.config.max_credential_bytes:
            raise AuthenticationError(
                f"The Authorization header is longer than {self.config.max_credential_bytes} "
                "bytes; no valid credential is that long."
            )
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise AuthenticationError(f"Malformed Authorization header. {SIGN_IN_HINT}")
        return match.group(1)

    async def _check_once(self, digest: str, token: str, stale: _Verdict | None) -> _Verdict:
        """One check per credential at a time; the others wait for its verdict.

        The check runs as its own task, so a client that leaves does not fail
        the others waiting on it.
        """
        task = self._checking.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._check_and_remember(digest, token, stale))
            self._checking[digest] = task
            task.add_done_callback(lambda _: self._checking.pop(digest, None))
        return await asyncio.shield(task)

    async def _check_and_remember(
        self, digest: str, token: str, stale: _Verdict | None
    ) -> _Verdict:
        verdict = await asyncio.to_thread(self._check, token)
        if isinstance(verdict.error, AuthUnavailableError):
            if stale is None or not stale.caller or (stale.caller.expires_at or 0) <= time.time():
                return verdict  # not remembered: the next request asks again
            # A caller checked before stays in until their token ends; ask again a bit later.
            verdict = _Verdict(stale.caller, None, time.monotonic() + self.config.cache.failure_s)
        self._remember(digest, verdict)
        return verdict

    def _remember(self, digest: str, verdict: _Verdict) -> None:
        if len(self._cache) >= _CACHE_SWEEP_SIZE:
            now = time.monotonic()
            self._cache = {d: v for d, v in self._cache.items() if v.fresh_until > now}
        self._cache[digest] = verdict

    def _check(self, token: str) -> _Verdict:
        """Runs in a worker thread: the store and globus-sdk block."""
        cache = self.config.cache
        try:
            caller, ttl_s = self._identify(token)
            self.policy.admit(caller)
        except AuthUnavailableError as exc:
            return _Verdict(None, exc, 0.0)
        except GatewayError as exc:
            return _Verdict(None, exc, time.monotonic() + cache.failure_s)
        return _Verdict(caller, None, time.monotonic() + ttl_s)

    def _identify(self, token: str) -> tuple[Principal, float]:
        cache = self.config.cache
        if self.keys is not None:
            key = self.keys.find_key(token)
            if key is not None:
                if key.revoked_at is not None:
                    raise AuthenticationError(f"The API key {key.key_id} has been revoked.")
                groups = frozenset(key.groups)
                return Principal(key.user, "api-key", groups, key_id=key.key_id), cache.api_key_s
        # Our own keys are never sent to Globus, even unknown or mistyped ones.
        if self.globus is not None and not token.startswith(KEY_PREFIX):
            caller = self.globus.introspect(token, with_groups=self.policy.needs_groups)
            remaining_s = (caller.expires_at or 0) - time.time()
            return caller, min(cache.max_s, remaining_s)
        raise AuthenticationError(f"Unknown API key. {SIGN_IN_HINT}")


def build_authenticator(
    config: AuthConfig, policy: Policy, keys: KeyStore | None, settings: Settings
) -> Authenticator:
    """The authenticator the config asks for; AuthConfigError if Globus lacks its secrets."""
    globus = None
    if config.globus is not None:
        settings = settings.with_secrets_file(config.globus.secrets_file)
        if not (settings.globus_client_id and settings.globus_client_secret):
            raise AuthConfigError(
                f"auth.globus needs the gateway's Globus client: set {PREFIX}GLOBUS_CLIENT_ID "
                f"and {PREFIX}GLOBUS_CLIENT_SECRET, or auth.globus.secrets_file"
            )
        globus = GlobusIntrospector(
            config.globus, settings.globus_client_id, settings.globus_client_secret
        )
    return Authenticator(config, policy, keys, globus)


class AuthConfigError(FirstError):
    """Authentication cannot be set up as configured; the message is one line."""
