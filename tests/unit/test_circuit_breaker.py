from __future__ import annotations

from serve_app.routing.circuit_breaker import CircuitBreaker


def test_opens_after_the_threshold_of_failures_in_a_row():
    breaker = CircuitBreaker(failure_threshold=3, open_s=10)
    for t in range(2):
        breaker.record_failure(now=t)
        assert breaker.state(now=t) == "closed"
    breaker.record_failure(now=2)
    assert breaker.state(now=2) == "open"
    assert not breaker.acquire(now=5)


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(failure_threshold=2, open_s=10)
    breaker.record_failure(now=0)
    breaker.record_success()
    breaker.record_failure(now=1)
    assert breaker.state(now=1) == "closed"


def test_half_open_lets_exactly_one_probe_through():
    breaker = CircuitBreaker(failure_threshold=1, open_s=10)
    breaker.record_failure(now=0)
    assert breaker.state(now=11) == "half-open"
    assert breaker.acquire(now=11)
    assert not breaker.acquire(now=11)
    assert not breaker.available(now=11)


def test_a_successful_probe_closes_and_a_failed_one_reopens():
    breaker = CircuitBreaker(failure_threshold=1, open_s=10)
    breaker.record_failure(now=0)
    assert breaker.acquire(now=11)
    breaker.record_failure(now=11)
    assert breaker.state(now=12) == "open"
    assert breaker.acquire(now=22)
    breaker.record_success()
    assert breaker.state(now=22) == "closed"


def test_an_abandoned_probe_lets_the_next_request_probe():
    breaker = CircuitBreaker(failure_threshold=1, open_s=10)
    breaker.record_failure(now=0)
    assert breaker.acquire(now=11)
    breaker.abandon()
    assert breaker.state(now=12) == "half-open"
    assert breaker.acquire(now=12)
    assert not breaker.acquire(now=12)
