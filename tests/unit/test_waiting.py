"""eventually(): the one wait of the tests and benchmarks (tests/support/waiting.py)."""

from __future__ import annotations

import time

import pytest

from tests.support.waiting import eventually


def answers(*values):
    """A predicate giving `values` in turn (raising those that are exceptions); its calls."""
    calls: list[float] = []
    pending = iter(values)

    def predicate():
        calls.append(time.monotonic())
        value = next(pending)
        if isinstance(value, BaseException):
            raise value
        return value

    return predicate, calls


def test_the_first_truthy_value_is_returned():
    predicate, calls = answers(None, 0, [], "ready", "later")
    assert eventually(predicate, 5, "ready", interval_s=0.01) == "ready"
    assert len(calls) == 4


def test_at_the_deadline_it_fails_naming_what_it_waited_for_and_the_last_value():
    predicate, calls = answers(*[0] * 1000)
    started = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        eventually(predicate, 0.2, "the site reported down", interval_s=0.05)
    assert time.monotonic() - started >= 0.2
    assert str(failed.value) == (
        "timed out after 0.2 s waiting for the site reported down; last: 0"
    )
    assert failed.value.__cause__ is None
    assert len(calls) >= 2  # called again until the deadline


def test_the_last_call_is_at_the_deadline_not_an_interval_after_it():
    predicate, calls = answers(None, None, None)
    started = time.monotonic()
    with pytest.raises(AssertionError):
        eventually(predicate, 0.2, "never", interval_s=60)
    assert len(calls) == 2
    assert 0.2 <= calls[1] - started < 5  # not the 60 s interval later


def test_the_listed_exceptions_are_retried_and_the_last_one_reported():
    predicate, calls = answers(ConnectionError("refused"), AssertionError("1 of 2"), "up")
    retry_on = (ConnectionError, AssertionError)
    assert eventually(predicate, 5, "up", interval_s=0.01, retry_on=retry_on) == "up"
    assert len(calls) == 3

    still, _ = answers(*[AssertionError("1 of 2 records written")] * 1000)
    with pytest.raises(AssertionError) as failed:
        eventually(still, 0.05, "2 records", interval_s=0.01, retry_on=(AssertionError,))
    assert "waiting for 2 records; last: AssertionError: 1 of 2 records written" in str(
        failed.value
    )
    assert isinstance(failed.value.__cause__, AssertionError)


def test_other_exceptions_propagate_at_once():
    predicate, calls = answers(KeyError("sites"), "never reached")
    with pytest.raises(KeyError):
        eventually(predicate, 5, "a report", interval_s=0.01, retry_on=(ConnectionError,))
    assert len(calls) == 1


def test_an_assert_inside_the_predicate_is_a_failure_unless_listed():
    predicate, calls = answers(AssertionError("HTTP 500: boom"), "never reached")
    with pytest.raises(AssertionError, match="HTTP 500: boom"):
        eventually(predicate, 5, "an answer", interval_s=0.01)
    assert len(calls) == 1
