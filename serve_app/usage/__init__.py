"""What requests used: metering a request as it passes, the usage ledger, usage reports."""

from serve_app.usage.ledger import UsageLedger
from serve_app.usage.metering import Meter
from serve_app.usage.report import PeriodError, UsageReport, parse_time, usage_report

__all__ = ["Meter", "PeriodError", "UsageLedger", "UsageReport", "parse_time", "usage_report"]
