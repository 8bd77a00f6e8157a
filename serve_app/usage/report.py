"""Usage over a period, for allocation reports: `first usage` and GET /v1/usage.

Both read the usage ledger (one record per request, batch lines included)
and sum requests, errors and tokens per user, model, site, route or UTC day.
"""

from __future__ import annotations

import datetime
import re

from pydantic import BaseModel

from deployments.errors import FirstError
from serve_app.store import UsageGrouping, UsageStore, UsageSummary

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PeriodError(FirstError):
    """A bad `since` or `until`; `param` says which."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


class UsageReport(BaseModel):
    object: str = "list"
    since: float
    until: float
    by: UsageGrouping
    data: list[UsageSummary]


def parse_time(text: str, now: float) -> float:
    """Unix time of `text`: a span back from now (`90m`, `24h`, `7d`, `2w`) or an ISO date.

    ValueError names what is accepted.
    """
    text = text.strip()
    if match := _RELATIVE.match(text):
        return now - float(match[1]) * _UNIT_S[match[2]]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a span back from now (30m, 24h, 7d, 2w) nor an ISO date "
            "(2026-11-01 or 2026-11-01T08:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def usage_report(
    store: UsageStore, since: str, until: str | None, by: UsageGrouping, now: float
) -> UsageReport:
    try:
        start = parse_time(since, now)
    except ValueError as exc:
        raise PeriodError("since", str(exc)) from None
    try:
        end = parse_time(until, now) if until else now
    except ValueError as exc:
        raise PeriodError("until", str(exc)) from None
    if end <= start:
        raise PeriodError("until", f"the period is empty: {since!r} is not before {until!r}")
    return UsageReport(since=start, until=end, by=by, data=store.usage_summary(start, end, by))
