"""Usage reports: sums per user, model, site, route or day over a period, from the ledger."""

from __future__ import annotations

import datetime

import pytest

from serve_app.store import SqliteStore, UsageRecord
from serve_app.usage.report import PeriodError, parse_time, usage_report

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC).timestamp()
DAY = 86400.0


def record(user: str, model: str, ago_s: float, tokens=(10, 5), **fields) -> UsageRecord:
    values = {
        "request_id": "r",
        "credential": "api-key",
        "route": "/v1/chat/completions",
        "site": "a",
        "status": 200,
        "latency_s": 0.1,
        **fields,
    }
    return UsageRecord(
        time=NOW - ago_s,
        user=user,
        model=model,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        **values,
    )


@pytest.fixture
def store(tmp_path) -> SqliteStore:
    store = SqliteStore(tmp_path / "first.db")
    store.append_usage(
        [
            record("ann", "m1", 60),
            record("ann", "m2", 3600, tokens=(100, 50)),
            record("bob", "m1", 120, status=429, tokens=(0, 0), site=None),
            record("bob", "m1", 2 * DAY),  # outside the last day
        ]
    )
    return store


def test_a_day_by_user_sums_requests_errors_and_tokens_most_tokens_first(store):
    report = usage_report(store, "1d", None, "user", NOW)
    assert [(r.key, r.requests, r.errors, r.total_tokens) for r in report.data] == [
        ("ann", 2, 0, 165),
        ("bob", 1, 1, 0),
    ]
    assert report.until == NOW and report.since == NOW - DAY


def test_other_groupings_and_periods(store):
    by_model = usage_report(store, "7d", None, "model", NOW).data
    assert {(r.key, r.requests) for r in by_model} == {("m1", 3), ("m2", 1)}
    by_site = usage_report(store, "7d", None, "site", NOW).data
    assert {r.key for r in by_site} == {"a", "-"}
    by_day = usage_report(store, "2026-11-20", "2026-11-26T00:00", "day", NOW).data
    assert [(r.key, r.requests) for r in by_day] == [("2026-11-25", 1)]


def test_times_are_spans_back_from_now_or_iso_dates():
    assert parse_time("30m", NOW) == NOW - 1800
    assert parse_time("2w", NOW) == NOW - 14 * DAY
    assert parse_time("2026-11-27T12:00", NOW) == NOW
    assert parse_time("2026-11-27T13:00+01:00", NOW) == NOW


@pytest.mark.parametrize(
    ("since", "until", "param"),
    [("last week", None, "since"), ("1d", "soon", "until"), ("1d", "3d", "until")],
)
def test_a_bad_period_names_its_field(store, since, until, param):
    with pytest.raises(PeriodError) as caught:
        usage_report(store, since, until, "user", NOW)
    assert caught.value.param == param and str(caught.value).startswith(f"{param}: ")
