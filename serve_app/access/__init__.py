"""Who is calling and what they may do: authentication, the access policy, rate limits."""

from serve_app.access.auth import AuthConfigError, Authenticator, build_authenticator
from serve_app.access.policy import ANONYMOUS, Policy, Principal, describe_caller
from serve_app.access.ratelimit import (
    Admission,
    LimitBook,
    LocalRateLimiter,
    NoRateLimiter,
    RateLimiter,
    Refusal,
    refuse,
)

__all__ = [
    "ANONYMOUS",
    "Admission",
    "AuthConfigError",
    "Authenticator",
    "LimitBook",
    "LocalRateLimiter",
    "NoRateLimiter",
    "Policy",
    "Principal",
    "RateLimiter",
    "Refusal",
    "build_authenticator",
    "describe_caller",
    "refuse",
]
