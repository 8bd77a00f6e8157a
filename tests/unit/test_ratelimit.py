"""The token buckets behind the request and token limits (pure, no clock)."""

from serve_app.access.ratelimit import LimitBook
from serve_app.config import LimitsConfig


def book(**limits) -> LimitBook:
    return LimitBook(LimitsConfig(**limits))


def test_a_burst_is_cut_at_the_bucket_then_admitted_at_the_rate():
    limits = book(requests_per_s=10, tokens_per_min=None, model_tokens_per_min=None)
    admitted = sum(limits.admit("ann", "m", 1, now=0.0) is None for _ in range(50))
    assert admitted == 10
    # Over the next 2 s, 20 more: the rate, not the offered load.
    later = sum(limits.admit("ann", "m", 1, now=t / 25) is None for t in range(1, 51))
    assert later == 20


def test_users_have_separate_buckets_and_overrides():
    limits = book(requests_per_s=2, users={"svc": {"requests_per_s": 100}})
    assert sum(limits.admit("ann", "m", 1, 0.0) is None for _ in range(10)) == 2
    assert sum(limits.admit("bob", "m", 1, 0.0) is None for _ in range(10)) == 2
    assert sum(limits.admit("svc", "m", 1, 0.0) is None for _ in range(150)) == 100


def test_refusal_says_which_limit_and_when_to_retry():
    limits = book(requests_per_s=0.5, burst=1)
    assert limits.admit("ann", "m", 1, 0.0) is None
    refusal = limits.admit("ann", "m", 1, 0.1)
    assert refusal is not None
    assert "0.5 requests/s" in refusal.message
    assert refusal.retry_after_s == 2  # 1.9 s rounded up


def test_a_request_reserves_its_tokens_at_admission_and_settles_at_the_end():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert limits.admit("ann", "m", 400, 0.0) is None
    refusal = limits.admit("ann", "m", 400, 0.0)  # 200 left: it does not fit
    assert refusal is not None and "600 tokens/min" in refusal.message
    assert "may use 400" in refusal.message
    assert refusal.retry_after_s == 20  # 200 more at 10 tokens/s
    assert limits.admit("ann", "m", 200, 0.0) is None  # what is left fits
    limits.settle("ann", "m", 400, 100, 0.0)  # the first used 100: 300 come back
    assert limits.admit("ann", "m", 300, 0.0) is None
    assert limits.admit("ann", "m", 1, 0.0) is not None


def test_concurrent_requests_cannot_pass_a_token_limit_together():
    limits = book(requests_per_s=None, tokens_per_min=3000, model_tokens_per_min=None)
    admitted = sum(limits.admit("ann", "m", 120, 0.0) is None for _ in range(64))
    assert admitted == 25  # 25 x 120 = 3,000: the 26th must wait


def test_using_more_than_reserved_is_debt_that_blocks_the_next():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert limits.admit("ann", "m", 100, 0.0) is None
    limits.settle("ann", "m", 100, 900, 0.0)  # 300 over: 30 s of refill at 10 tokens/s
    refusal = limits.admit("ann", "m", 1, 1.0)
    assert refusal is not None and refusal.retry_after_s == 30
    assert limits.admit("ann", "m", 1, 31.0) is None


def test_a_reservation_larger_than_the_bucket_waits_for_a_full_one():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert limits.admit("ann", "m", 5000, 0.0) is None  # full: let in, into debt
    assert limits.admit("ann", "m", 5000, 30.0) is not None
    limits.settle("ann", "m", 5000, 50, 30.0)  # it used 50: the bucket is full again
    assert limits.admit("ann", "m", 5000, 30.0) is None


def test_a_model_limit_holds_across_users():
    limits = book(
        requests_per_s=None, tokens_per_min=None, model_tokens_per_min=120, models={"big": 60}
    )
    assert limits.admit("ann", "big", 50, 0.0) is None
    refusal = limits.admit("bob", "big", 50, 0.0)
    assert refusal is not None and "'big'" in refusal.message
    assert limits.admit("bob", "small", 50, 0.0) is None


def test_no_limits_admit_everything():
    limits = book(requests_per_s=None, tokens_per_min=None, model_tokens_per_min=None)
    assert all(limits.admit("ann", "m", 1, 0.0) is None for _ in range(1000))
