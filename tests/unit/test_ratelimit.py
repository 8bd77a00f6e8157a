"""The token buckets behind the request and token limits (pure, no clock)."""

from serve_app.access.ratelimit import LimitBook
from serve_app.config import LimitsConfig


def book(**limits) -> LimitBook:
    return LimitBook(LimitsConfig(**limits))


def test_a_burst_is_cut_at_the_bucket_then_admitted_at_the_rate():
    limits = book(requests_per_s=10, tokens_per_min=None, model_tokens_per_min=None)
    admitted = sum(limits.admit("ann", "m", now=0.0) is None for _ in range(50))
    assert admitted == 10
    # Over the next 2 s, 20 more: the rate, not the offered load.
    later = sum(limits.admit("ann", "m", now=t / 25) is None for t in range(1, 51))
    assert later == 20


def test_users_have_separate_buckets_and_overrides():
    limits = book(requests_per_s=2, users={"svc": {"requests_per_s": 100}})
    assert sum(limits.admit("ann", "m", 0.0) is None for _ in range(10)) == 2
    assert sum(limits.admit("bob", "m", 0.0) is None for _ in range(10)) == 2
    assert sum(limits.admit("svc", "m", 0.0) is None for _ in range(150)) == 100


def test_refusal_says_which_limit_and_when_to_retry():
    limits = book(requests_per_s=0.5, burst=1)
    assert limits.admit("ann", "m", 0.0) is None
    refusal = limits.admit("ann", "m", 0.1)
    assert refusal is not None
    assert "0.5 requests/s" in refusal.message
    assert refusal.retry_after_s == 2  # 1.9 s rounded up


def test_tokens_are_taken_after_the_request_and_debt_blocks_the_next():
    limits = book(requests_per_s=None, tokens_per_min=600, model_tokens_per_min=None)
    assert limits.admit("ann", "m", 0.0) is None
    limits.record("ann", "m", 900, 0.0)  # 300 over: 30 s of refill at 10 tokens/s
    refusal = limits.admit("ann", "m", 1.0)
    assert refusal is not None and "600 tokens/min" in refusal.message
    assert refusal.retry_after_s == 29
    assert limits.admit("ann", "m", 31.0) is None


def test_a_model_limit_holds_across_users():
    limits = book(
        requests_per_s=None, tokens_per_min=None, model_tokens_per_min=120, models={"big": 60}
    )
    assert limits.admit("ann", "big", 0.0) is None
    limits.record("ann", "big", 61, 0.0)
    refusal = limits.admit("bob", "big", 0.0)
    assert refusal is not None and "'big'" in refusal.message
    assert limits.admit("bob", "small", 0.0) is None


def test_no_limits_admit_everything():
    limits = book(requests_per_s=None, tokens_per_min=None, model_tokens_per_min=None)
    assert all(limits.admit("ann", "m", 0.0) is None for _ in range(1000))
