"""The Grafana dashboards, generated from code with grafanalib.

`python -m monitoring.dashboards` rewrites monitoring/dashboards/*.json; a
test fails when the committed JSON and this code disagree, and another runs
every panel's PromQL against a real Prometheus that scraped the test stack.

Every Prometheus panel reads the data source picked in the `datasource`
variable and filters on `$model` and `$site`. The top-users table cannot
come from Prometheus (no user is ever a label there): it reads the usage
ledger through the gateway's `GET /v1/usage`, with Grafana's Infinity data
source plugin and an admin API key (`policy.admin_groups`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    TimeSeries,
)

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = "${datasource}"
SELECT = 'model=~"$model", site=~"$site"'
RATE = "$__rate_interval"
WIDTH, HEIGHT = 12, 8


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: a time series unless `stat`; `unit` is Grafana's unit id."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    stat: bool = False
    description: str = ""


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{SELECT}}}[{RATE}])))"


TOKENS = f"first_tokens_total{{{SELECT}}}"

OVERVIEW = (
    Panel(
        "Requests per second by model and site",
        (
            Query(
                f"sum by (model, site) (rate(first_requests_total{{{SELECT}}}[{RATE}]))",
                "{{model}} @ {{site}}",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Error ratio (5xx) by model",
        (
            Query(
                f'sum by (model) (rate(first_requests_total{{status=~"5..", {SELECT}}}[{RATE}]))'
                f" / sum by (model) (rate(first_requests_total{{{SELECT}}}[{RATE}]))",
                "{{model}}",
            ),
        ),
        "percentunit",
    ),
    Panel(
        "Request latency p50 / p99 by model",
        (
            Query(_quantile(0.5, "first_request_duration_seconds", "model"), "p50 {{model}}"),
            Query(_quantile(0.99, "first_request_duration_seconds", "model"), "p99 {{model}}"),
        ),
        "s",
    ),
    Panel(
        "Time to first token p50 / p99 (streams) against the objective",
        (
            Query(_quantile(0.5, "first_time_to_first_token_seconds", "model"), "p50 {{model}}"),
            Query(_quantile(0.99, "first_time_to_first_token_seconds", "model"), "p99 {{model}}"),
            Query("max(first_time_to_first_token_objective_seconds)", "objective"),
        ),
        "s",
    ),
    Panel(
        "Tokens per second by model and site",
        (Query(f"sum by (model, site) (rate({TOKENS}[{RATE}]))", "{{model}} @ {{site}}"),),
        "short",
    ),
    Panel(
        "Tokens in the last 24 hours by model and site",
        (Query(f"sum by (model, site) (increase({TOKENS}[1d]))", "{{model}} @ {{site}}"),),
        "short",
        stat=True,
    ),
    Panel(
        "Requests in flight per site",
        (Query('sum by (site) (first_site_requests_in_flight{site=~"$site"})', "{{site}}"),),
    ),
    Panel(
        "Sites up and circuit breakers (0 closed, 1 half-open, 2 open)",
        (
            Query('max by (site) (first_site_up{site=~"$site"})', "up {{site}}"),
            Query('max by (site) (first_site_circuit_state{site=~"$site"})', "circuit {{site}}"),
        ),
    ),
    Panel(
        "Retries and failovers",
        (
            Query(
                f'sum by (site, reason) (rate(first_site_retries_total{{site=~"$site"}}[{RATE}]))',
                "retry {{site}} {{reason}}",
            ),
            Query(
                f"sum by (site) (rate(first_failovers_total{{{SELECT}}}[{RATE}]))",
                "failover to {{site}}",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Refused: authentication and rate limits",
        (
            Query(f"sum by (code) (rate(first_auth_failures_total[{RATE}]))", "auth {{code}}"),
            Query(
                f"sum by (route) (rate(first_rate_limit_rejections_total[{RATE}]))",
                "429 {{route}}",
            ),
        ),
        "reqps",
    ),
)

REPLICAS = (
    Panel(
        "Replicas per model (site reports)",
        (
            Query(
                f"max by (site, model, state) (first_model_replicas{{{SELECT}}})",
                "{{model}} @ {{site}} {{state}}",
            ),
        ),
    ),
    Panel(
        "Requests queued in Serve per model",
        (
            Query(
                f"max by (site, model) (first_model_queued_requests{{{SELECT}}})",
                "{{model}} @ {{site}}",
            ),
        ),
    ),
    Panel(
        "Healthy Serve replicas per deployment (Ray)",
        (
            Query(
                "sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
                "{{application}} / {{deployment}}",
            ),
        ),
    ),
    Panel(
        "Requests running and waiting in vLLM engines",
        (
            Query("sum by (model_name) (ray_vllm_num_requests_running)", "running {{model_name}}"),
            Query("sum by (model_name) (ray_vllm_num_requests_waiting)", "waiting {{model_name}}"),
        ),
    ),
    Panel(
        "vLLM KV cache usage",
        (Query("max by (model_name) (ray_vllm_kv_cache_usage_perc)", "{{model_name}}"),),
        "percentunit",
    ),
    Panel(
        "vLLM tokens per second (prompt and generation)",
        (
            Query(
                f"sum by (model_name) (rate(ray_vllm_prompt_tokens_total[{RATE}]))",
                "prompt {{model_name}}",
            ),
            Query(
                f"sum by (model_name) (rate(ray_vllm_generation_tokens_total[{RATE}]))",
                "generation {{model_name}}",
            ),
        ),
    ),
)

SLURM = (
    Panel(
        "Slurm jobs by model and state",
        (
            Query(
                f"max by (site, model, state) (first_slurm_jobs{{{SELECT}}})",
                "{{model}} @ {{site}} {{state}}",
            ),
        ),
    ),
    Panel(
        "Allocation hours in the last 24 hours",
        (
            Query(
                "sum by (site, model) (sum_over_time(max by (site, model) "
                f'(first_slurm_jobs{{state="running", {SELECT}}})[1d:1m])) / 60',
                "{{model}} @ {{site}}",
            ),
        ),
        "h",
        stat=True,
    ),
    Panel(
        "Hot models and their running replicas",
        (
            Query(
                f"max by (site, model) (first_model_hot{{{SELECT}}})", "hot {{model}} @ {{site}}"
            ),
            Query(
                f'max by (site, model) (first_model_replicas{{state="running", {SELECT}}})',
                "running {{model}} @ {{site}}",
            ),
        ),
    ),
    Panel(
        "Keeper decisions by reason",
        (
            Query(
                f"sum by (site, model, action, reason) (increase(first_keeper_decisions_total{{{SELECT}}}[1h]))",
                "{{action}} {{model}} @ {{site}}: {{reason}}",
            ),
        ),
    ),
    Panel(
        "Cold starts by outcome",
        (
            Query(
                f"sum by (site, model, outcome) (increase(first_cold_starts_total{{{SELECT}}}[1h]))",
                "{{model}} @ {{site}} {{outcome}}",
            ),
        ),
    ),
)

BATCH = (
    Panel(
        "Batches by state",
        (Query("max by (state) (first_batches)", "{{state}}"),),
    ),
    Panel(
        "Batch requests per second by outcome",
        (
            Query(
                f'sum by (model, outcome) (rate(first_batch_requests_total{{model=~"$model"}}[{RATE}]))',
                "{{model}} {{outcome}}",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Batch requests in the last 24 hours",
        (
            Query(
                'sum by (outcome) (increase(first_batch_requests_total{model=~"$model"}[1d]))',
                "{{outcome}}",
            ),
        ),
        stat=True,
    ),
)

USERS = (
    Panel(
        "Tokens per day, whole federation",
        (Query(f"sum(increase({TOKENS}[1d]))", "tokens"),),
        stat=True,
    ),
    Panel(
        "Tokens per second by model",
        (Query(f"sum by (model) (rate({TOKENS}[{RATE}]))", "{{model}}"),),
    ),
)
# The usage ledger through the gateway (Infinity data source, admin key): never in Prometheus.
TOP_USERS_URL = "${gateway}/v1/usage?by=user&since=${__range_s}s"


def _template(name: str, query: str, label: str) -> Template:
    return Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
    )


def _variables(extra: tuple[Template, ...] = ()) -> Templating:
    return Templating(
        list=[
            Template(name="datasource", label="Prometheus", query="prometheus", type="datasource"),
            _template("model", "label_values(first_requests_total, model)", "Model"),
            _template("site", "label_values(first_site_up, site)", "Site"),
            *extra,
        ]
    )


def _grafana_panel(panel: Panel, position: GridPos):
    targets = [
        Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, q in enumerate(panel.queries)
    ]
    kind = Stat if panel.stat else TimeSeries
    options = {"format": panel.unit} if panel.stat else {"unit": panel.unit}
    return kind(
        title=panel.title,
        description=panel.description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=position,
        **options,
    )


def _positions(count: int) -> Iterator[GridPos]:
    for index in range(count):
        yield GridPos(h=HEIGHT, w=WIDTH, x=(index % 2) * WIDTH, y=(index // 2) * HEIGHT)


def _dashboard(uid: str, title: str, panels: tuple[Panel, ...], extra=(), more=()) -> Dashboard:
    built = [_grafana_panel(p, pos) for p, pos in zip(panels, _positions(len(panels)), strict=True)]
    return Dashboard(
        uid=uid,
        title=title,
        tags=["first"],
        timezone="utc",
        refresh="30s",
        templating=_variables(extra),
        panels=[*built, *more],
    ).auto_panel_ids()


def _top_users_table(y: int) -> Table:
    return Table(
        title="Top users by tokens over the dashboard's time range (usage ledger)",
        description="GET /v1/usage?by=user through Grafana's Infinity data source, with an API "
        "key of a policy.admin_groups member as Bearer token.",
        dataSource="${ledger}",
        targets=[
            {
                "refId": "A",
                "datasource": "${ledger}",
                "type": "json",
                "source": "url",
                "format": "table",
                "url": TOP_USERS_URL,
                "url_options": {"method": "GET"},
                "root_selector": "data",
            }
        ],
        gridPos=GridPos(h=12, w=24, x=0, y=y),
    )


def dashboards() -> dict[str, Dashboard]:
    """File name (without .json) -> dashboard."""
    ledger = (
        Template(
            name="ledger",
            label="Usage ledger",
            query="yesoreyeram-infinity-datasource",
            type="datasource",
        ),
        Template(
            name="gateway", label="Gateway URL", query="http://127.0.0.1:8000", type="textbox"
        ),
    )
    users_height = HEIGHT * ((len(USERS) + 1) // 2)
    return {
        "federation-overview": _dashboard("first-overview", "FIRST: federation overview", OVERVIEW),
        "replicas-autoscaling": _dashboard(
            "first-replicas", "FIRST: replicas and autoscaling", REPLICAS
        ),
        "slurm-hot-nodes": _dashboard("first-slurm", "FIRST: Slurm jobs and hot nodes", SLURM),
        "batch": _dashboard("first-batch", "FIRST: batch inference", BATCH),
        "top-users": _dashboard(
            "first-users",
            "FIRST: top users by tokens",
            USERS,
            extra=ledger,
            more=[_top_users_table(users_height)],
        ),
    }


def render(dashboard: Dashboard) -> str:
    return (
        json.dumps(dashboard.to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"
    )


def main() -> None:
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for name, dashboard in dashboards().items():
        path = DASHBOARDS_DIR / f"{name}.json"
        path.write_text(render(dashboard))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
