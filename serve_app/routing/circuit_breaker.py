"""A per-site circuit breaker: stop sending to a site that keeps failing, probe it later.

Closed: requests flow. After `failure_threshold` failures in a row it opens
and refuses for `open_s`; then it lets one probe request through
(half-open). The probe's success closes it; its failure opens it again.
Time is passed in, so the states are unit-tested without sleeping.
"""

from __future__ import annotations

from typing import Literal

CircuitState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_s: float):
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    def state(self, now: float) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.open_s:
            return "open"
        return "half-open"

    def available(self, now: float) -> bool:
        """Whether a request could be sent now (without claiming the probe)."""
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.probing)

    def acquire(self, now: float) -> bool:
        """Claim the right to send one request; in half-open only one probe gets it."""
        if not self.available(now):
            return False
        if self.state(now) == "half-open":
            self.probing = True
        return True

    def abandon(self) -> None:
        """The request that held the probe ended without a verdict (its client left):
        let the next request probe instead of refusing every request from now on."""
        self.probing = False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.failure_threshold:
            self.opened_at = now
        self.probing = False
