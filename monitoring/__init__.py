"""Prometheus configuration, alert rules and Grafana dashboards for a FIRST federation."""

from monitoring.prometheus import ALERT_RULES, DASHBOARDS_DIR, prometheus_config

__all__ = ["ALERT_RULES", "DASHBOARDS_DIR", "prometheus_config"]
