"""The token buckets behind the request and token limits (pure, no clock)."""

from serve_app.access.ratelimit import PLACE_LEASE_S, Admission, LimitBook, Refusal
from serve_app.config import LimitsConfig


def book(**limits) -> LimitBook:
    return LimitBook(LimitsConfig(**limits))


def test_a_burst_is_cut_at_the_bucket_then_admitted_at_the_rate():
    limits = book(requests_per_s=10, tokens_per_min=None, model_tokens_per_min=None)
    admitted = sum(isinstance(limits.admit("ann", "m", 1, now=0.0), Admission) for _ in range(50))
    assert admitted == 10
    # Over the next 2 s, 20 more: the rate, not the offered load.
    later = sum(
        isinstance(limits.admit("ann", "m", 1, now=t / 25), Admission) for t in range(1, 51)
    )
    assert later == 20


def test_users_have_separate_buckets_and_overrides():
    limits = book(requests_per_s=2, users={"svc": {"requests_per_s": 100}})
    assert sum(isinstance(limits.admit("ann", "m", 1, 0.0), Admission) for _ in range(10)) == 2
    assert sum(isinstance(limits.admit("bob", "m", 1, 0.0), Admission) for _ in range(10)) == 2
    assert sum(isinstance(limits.admit("svc", "m", 1, 0.0), Admission) for _ in range(150)) == 100


def test_refusal_says_which_limit_and_when_to_retry():
    limits = book(requests_per_s=0.5, burst=1)
    assert isinstance(limits.admit("ann", "m", 1, 0.0), Admission)
    refusal = limits.admit("ann", "m", 1, 0.1)
    assert refusal is not None
    assert "0.5 requests/s" in refusal.message
    assert refusal.retry_after_s == 2  # 1.9 s rounded up


def test_a_request_reserves_its_tokens_at_admission_and_settles_at_the_end():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert isinstance(limits.admit("ann", "m", 400, 0.0), Admission)
    refusal = limits.admit("ann", "m", 400, 0.0)  # 200 left: it does not fit
    assert isinstance(refusal, Refusal) and "600 tokens/min" in refusal.message
    assert "may use 400" in refusal.message
    assert refusal.retry_after_s == 20  # 200 more at 10 tokens/s
    assert isinstance(limits.admit("ann", "m", 200, 0.0), Admission)  # what is left fits
    limits.settle("ann", "m", Admission(400), 100, 0.0)  # the first used 100: 300 come back
    assert isinstance(limits.admit("ann", "m", 300, 0.0), Admission)
    assert isinstance(limits.admit("ann", "m", 1, 0.0), Refusal)


def test_concurrent_requests_cannot_pass_a_token_limit_together():
    limits = book(requests_per_s=None, tokens_per_min=3000, model_tokens_per_min=None)
    admitted = sum(isinstance(limits.admit("ann", "m", 120, 0.0), Admission) for _ in range(64))
    assert admitted == 25  # 25 x 120 = 3,000: the 26th must wait


def test_using_more_than_reserved_is_debt_that_blocks_the_next():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert isinstance(limits.admit("ann", "m", 100, 0.0), Admission)
    limits.settle("ann", "m", Admission(100), 900, 0.0)  # 300 over: 30 s of refill at 10 tokens/s
    refusal = limits.admit("ann", "m", 1, 1.0)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s == 30
    assert isinstance(limits.admit("ann", "m", 1, 31.0), Admission)


def test_a_reservation_larger_than_the_bucket_waits_for_a_full_one():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert isinstance(limits.admit("ann", "m", 5000, 0.0), Admission)  # full: let in, into debt
    assert isinstance(limits.admit("ann", "m", 5000, 30.0), Refusal)
    limits.settle("ann", "m", Admission(5000), 50, 30.0)  # it used 50: the bucket is full again
    assert isinstance(limits.admit("ann", "m", 5000, 30.0), Admission)


def test_a_model_limit_holds_across_users():
    limits = book(
        requests_per_s=None, tokens_per_min=None, model_tokens_per_min=120, models={"big": 60}
    )
    assert isinstance(limits.admit("ann", "big", 50, 0.0), Admission)
    refusal = limits.admit("bob", "big", 50, 0.0)
    assert isinstance(refusal, Refusal) and "'big'" in refusal.message
    assert isinstance(limits.admit("bob", "small", 50, 0.0), Admission)


def test_no_limits_admit_everything():
    limits = book(
        requests_per_s=None, tokens_per_min=None, model_tokens_per_min=None, max_in_flight=None
    )
    assert all(isinstance(limits.admit("ann", "m", 1, 0.0), Admission) for _ in range(1000))


def test_a_user_holds_at_most_max_in_flight_places_until_requests_end():
    limits = book(
        requests_per_s=None,
        tokens_per_min=None,
        max_in_flight=3,
        users={"svc": {"max_in_flight": 5}},
    )
    held = [limits.admit("ann", "m", 10, 0.0) for _ in range(3)]
    assert all(isinstance(a, Admission) and a.holds_place for a in held)
    refusal = limits.admit("ann", "m", 10, 0.0)
    assert isinstance(refusal, Refusal) and "3 requests in flight" in refusal.message
    assert refusal.retry_after_s == 1
    assert isinstance(limits.admit("bob", "m", 10, 0.0), Admission)  # per user
    assert sum(isinstance(limits.admit("svc", "m", 1, 0.0), Admission) for _ in range(9)) == 5
    limits.settle("ann", "m", held[0], 10, 1.0)  # one ends: one place frees
    assert isinstance(limits.admit("ann", "m", 10, 1.0), Admission)
    assert isinstance(limits.admit("ann", "m", 10, 1.0), Refusal)


def test_a_place_whose_end_never_comes_lapses():
    """Its gateway replica died mid-request: the place must not be held for ever."""
    limits = book(requests_per_s=None, tokens_per_min=None, max_in_flight=1)
    assert isinstance(limits.admit("ann", "m", 1, 0.0), Admission)
    assert isinstance(limits.admit("ann", "m", 1, PLACE_LEASE_S - 1), Refusal)
    assert isinstance(limits.admit("ann", "m", 1, PLACE_LEASE_S + 1), Admission)


def test_a_request_the_limiter_never_admitted_frees_no_place():
    limits = book(requests_per_s=None, tokens_per_min=None, max_in_flight=1)
    assert isinstance(limits.admit("ann", "m", 1, 0.0), Admission)
    limits.settle("ann", "m", Admission(0, holds_place=False), 5, 0.0)  # limiter was down
    assert isinstance(limits.admit("ann", "m", 1, 0.0), Refusal)
