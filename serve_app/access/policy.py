"""Who may use the gateway and which models: pure decisions over a caller's identity.

The caller (`Principal`) comes from auth.py, whichever credential it used;
both kinds go through the same checks here. Globus logins are also held to
the identity allowlists (their username domain or identity provider); API
keys are issued by the centre itself, so only their groups count.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import LimitsConfig, PolicyConfig
from serve_app.errors import PermissionDeniedError
from serve_app.protocol import CallerLimits, WhoAmI
from serve_app.store import CredentialKind


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `expires_at` (epoch seconds) only for Globus tokens."""

    user: str
    credential: CredentialKind
    groups: frozenset[str] = frozenset()
    identity_id: str | None = None
    name: str | None = None
    email: str | None = None
    identity_provider: str | None = None
    expires_at: float | None = None
    key_id: str | None = None


ANONYMOUS = Principal(user="anonymous", credential="anonymous")


class Policy:
    def __init__(self, config: PolicyConfig):
        self.config = config
        self._domains = {d.lower().lstrip("@") for d in config.identity_domains}
        self._providers = set(config.identity_providers)
        self._groups = set(config.groups)

    @property
    def needs_groups(self) -> bool:
        """Whether a Globus caller's groups must be looked up (a round trip to Groups)."""
        return self.config.uses_groups

    def admit(self, caller: Principal) -> None:
        """403 unless the caller's login and groups let them use the gateway at all."""
        if caller.credential == "globus" and (self._domains or self._providers):
            domain = caller.user.rpartition("@")[2].lower()
            if domain not in self._domains and caller.identity_provider not in self._providers:
                raise PermissionDeniedError(
                    f"Logins from {domain or 'this identity provider'} may not use this "
                    "service. Sign in with an identity from an allowed institution."
                )
        if self._groups and not self._groups & caller.groups:
            raise PermissionDeniedError(
                f"{caller.user} is not a member of a group allowed to use this service."
            )

    def require_admin(self, caller: Principal) -> None:
        if not set(self.config.admin_groups) & caller.groups:
            raise PermissionDeniedError(
                f"{caller.user} is not a member of a group allowed to read usage reports."
            )

    def may_use(self, caller: Principal, model: str) -> bool:
        access = self.config.models.get(model)
        return access is None or bool(caller.groups & set(access.groups))

    def require_model(self, caller: Principal, model: str) -> None:
        if not self.may_use(caller, model):
            raise PermissionDeniedError(
                f"The model {model!r} is restricted to some groups, and {caller.user} is in "
                "none of them.",
                param="model",
            )


def describe_caller(caller: Principal, models: list[str], limits: LimitsConfig | None) -> WhoAmI:
    """`GET /whoami`: the caller as the gateway sees them, the `models` they may use, their limits."""
    return WhoAmI(
        user=caller.user,
        credential=caller.credential,
        identity_id=caller.identity_id,
        name=caller.name,
        email=caller.email,
        identity_provider=caller.identity_provider,
        key_id=caller.key_id,
        groups=sorted(caller.groups),
        models=models,
        limits=None
        if limits is None
        else CallerLimits(
            **limits.for_user(caller.user).model_dump(),
            model_tokens_per_min={m: limits.for_model(m) for m in models},
        ),
    )
