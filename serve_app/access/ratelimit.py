"""Request and token limits per user and per model, as token buckets.

- Requests: each user's bucket holds `burst` requests and refills at
  `requests_per_s`; a request takes one or is refused.
- Tokens: at admission a request reserves what it may use, its prompt
  (estimated from its characters: no tokenizer here) plus its `max_tokens`,
  from the user's and the model's token buckets, all or none; it is
  refused while a bucket lacks that much. When it ends the difference is
  settled: unused tokens go back, a prompt longer than estimated is taken.
  Reserving at admission is what keeps concurrent requests from passing a
  limit together: checking a bucket at admission and taking the tokens
  only at the end (LiteLLM's and FIRST's design) let a burst of 64
  requests through at 2.5x the budget before the first was counted.
- Requests in flight: a user holds one place of `max_in_flight` from
  admission to the end of the request, so one caller's flood is refused
  with 429 (over its share) before it fills the sites and everyone gets
  503s. A place whose end never arrives (its replica died) lapses after
  `PLACE_LEASE_S`.

The buckets (`LimitBook`) are pure and keyed by user and model. Limits must
hold across every ingress replica, so on Ray Serve one `LimitBook` lives in
a single Serve deployment that all replicas ask (serve_app/ingress.py);
standalone, the one process keeps it itself (`LocalRateLimiter`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from serve_app.config import LimitsConfig, UserLimitsConfig
from serve_app.errors import RateLimitError


@dataclass
class TokenBucket:
    rate_per_s: float
    capacity: float
    level: float
    updated: float

    @classmethod
    def full(cls, rate_per_s: float, capacity: float, now: float) -> TokenBucket:
        return cls(rate_per_s, capacity, capacity, now)

    def refill(self, now: float) -> None:
        elapsed = max(now - self.updated, 0.0)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is in the bucket (0: now)."""
        return max(amount - self.level, 0.0) / self.rate_per_s


# Longer than any request may run (sites' timeouts.total_s is 900 s by default).
PLACE_LEASE_S = 3600.0


@dataclass(frozen=True)
class Admission:
    """What admission took for a request: given back, or settled, when it ends."""

    reserved_tokens: int = 0
    holds_place: bool = False  # one of the user's max_in_flight


NOTHING_HELD = Admission()


@dataclass(frozen=True)
class Refusal:
    """Why a request must wait, and for how long."""

    message: str
    retry_after_s: int


class LimitBook:
    """Every user's and model's buckets. Not thread-safe: one owner calls it."""

    def __init__(self, limits: LimitsConfig):
        self.limits = limits
        self._user_limits: dict[str, UserLimitsConfig] = {}
        self._requests: dict[str, TokenBucket] = {}
        self._user_tokens: dict[str, TokenBucket] = {}
        self._model_tokens: dict[str, TokenBucket] = {}
        self._places: dict[str, deque[float]] = {}  # per user: when each place was taken

    def admit(self, user: str, model: str, tokens: int, now: float) -> Admission | Refusal:
        """Take one request for `user` on `model`, a place in flight, and `tokens` for it,
        all or none; or say why not.

        A reservation larger than a whole bucket waits until that bucket is
        full, and then takes it into debt: it is let in once a minute's
        worth of tokens is there, instead of never.
        """
        mine = self._limits_of(user)
        places = None
        if mine.max_in_flight is not None:
            places = self._places_of(user, now)
            if len(places) >= mine.max_in_flight:
                message = f"Rate limit exceeded: {user} has {len(places)} requests in flight."
                return Refusal(message, 1)  # a place frees as soon as one of them ends
        if mine.requests_per_s is not None:
            burst = self.limits.burst or max(mine.requests_per_s, 1.0)
            bucket = _bucket(self._requests, user, mine.requests_per_s, burst, now)
            if bucket.level < 1:
                return _refusal(f"{user} is over {mine.requests_per_s:g} requests/s", bucket, 1)
        buckets = self._token_buckets(user, model, now)
        for what, bucket in buckets:
            needed = min(tokens, bucket.capacity)
            if bucket.level < needed:
                return _refusal(f"{what}; this request may use {tokens}", bucket, needed)
        if mine.requests_per_s is not None:
            self._requests[user].level -= 1
        for _, bucket in buckets:
            bucket.level -= tokens
        if places is not None:
            places.append(now)
        return Admission(tokens, holds_place=places is not None)

    def settle(self, user: str, model: str, admission: Admission, used: int, now: float) -> None:
        """A request admitted with `admission` ended having used `used` tokens."""
        reserved = admission.reserved_tokens
        for _, bucket in self._token_buckets(user, model, now):
            bucket.level = min(bucket.capacity, bucket.level + reserved - used)
        places = self._places.get(user)
        if admission.holds_place and places:
            places.popleft()  # places are alike: the oldest goes, so a lapsed one goes first
            if not places:
                del self._places[user]

    def _places_of(self, user: str, now: float) -> deque[float]:
        """The user's places in flight, less those that lapsed."""
        places = self._places.setdefault(user, deque())
        while places and places[0] < now - PLACE_LEASE_S:
            places.popleft()
        return places

    def _limits_of(self, user: str) -> UserLimitsConfig:
        """The user's effective limits, worked out once: every request asks."""
        mine = self._user_limits.get(user)
        if mine is None:
            mine = self._user_limits[user] = self.limits.for_user(user)
        return mine

    def _token_buckets(self, user: str, model: str, now: float) -> list[tuple[str, TokenBucket]]:
        found = []
        per_user = self._limits_of(user).tokens_per_min
        if per_user is not None:
            bucket = _bucket(self._user_tokens, user, per_user / 60, per_user, now)
            found.append((f"{user} is over {per_user} tokens/min", bucket))
        per_model = self.limits.for_model(model)
        if per_model is not None:
            bucket = _bucket(self._model_tokens, model, per_model / 60, per_model, now)
            found.append((f"the model {model!r} is over {per_model} tokens/min", bucket))
        return found


def _bucket(
    buckets: dict[str, TokenBucket], key: str, rate_per_s: float, capacity: float, now: float
) -> TokenBucket:
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = TokenBucket.full(rate_per_s, capacity, now)
    else:
        bucket.refill(now)
    return bucket


def _refusal(what: str, bucket: TokenBucket, amount: float) -> Refusal:
    wait_s = bucket.wait_s(amount)
    return Refusal(f"Rate limit exceeded: {what}.", max(1, math.ceil(wait_s)))


def refuse(refusal: Refusal) -> RateLimitError:
    return RateLimitError(
        f"{refusal.message} Retry after {refusal.retry_after_s} s.",
        retry_after_s=refusal.retry_after_s,
    )


class RateLimiter(Protocol):
    """Admission (a place in flight, a token reservation) before a request, its
    settlement after."""

    async def admit(self, user: str, model: str, tokens: int) -> Admission:
        """Raise RateLimitError (429) if `user` must wait; else what was taken."""

    async def settle(self, user: str, model: str, admission: Admission, used: int) -> None: ...


def admitted(answer: Admission | Refusal) -> Admission:
    """The book's answer as the limiter's: a refusal raised as the 429 it is."""
    if isinstance(answer, Refusal):
        raise refuse(answer)
    return answer


class LocalRateLimiter:
    """The limits of one process: the standalone gateway, where there is one replica."""

    def __init__(self, limits: LimitsConfig):
        self.book = LimitBook(limits)

    async def admit(self, user: str, model: str, tokens: int) -> Admission:
        return admitted(self.book.admit(user, model, tokens, time.monotonic()))

    async def settle(self, user: str, model: str, admission: Admission, used: int) -> None:
        self.book.settle(user, model, admission, used, time.monotonic())


class NoRateLimiter:
    """`limits: null` in the config."""

    async def admit(self, user: str, model: str, tokens: int) -> Admission:
        return NOTHING_HELD

    async def settle(self, user: str, model: str, admission: Admission, used: int) -> None:
        return None
