"""Waiting, in tests and benchmarks, for something another process or thread does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns a truthy value, and return that value.

    It is called at once, then `interval_s` after each call returned, and a
    last time at the deadline, `timeout_s` from now. A falsy value means "not
    yet"; so does an exception of a type in `retry_on`: AssertionError for a
    predicate whose condition is an `assert` with a message saying what it saw,
    a client's error for a server that may not answer yet. Any other exception
    propagates at once. Nothing is retried unless listed, AssertionError
    included: a check that fails inside the predicate, or inside a helper it
    calls, is a failure, and must not become one more try.

    At the deadline: AssertionError naming `what` (the condition waited for,
    "west reported down") and the last value or exception seen; the exception
    is its cause.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last: object = exc
        else:
            if value:
                return value
            last = value
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            break
        time.sleep(min(interval_s, left_s))
    cause = last if isinstance(last, BaseException) else None
    seen = repr(last) if cause is None else f"{type(cause).__name__}: {cause}"
    raise AssertionError(
        f"timed out after {timeout_s:g} s waiting for {what}; last: {seen}"
    ) from cause
