"""`first monitor`: Prometheus for a running federation, with the alert rules and dashboards.

`first monitor up` writes the configuration (monitoring/prometheus.py), has
`promtool` check it, runs Prometheus in the foreground until Ctrl-C, and
says where to look. `first monitor config` only prints the configuration,
for a centre's own Prometheus.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import click
import httpx

from monitoring import ALERT_RULES, DASHBOARDS_DIR, prometheus_config
from serve_app.cli.common import federation_option

READY_TIMEOUT_S = 60.0

_CONFIG_OPTION = federation_option("Federation config of the gateway to watch.")
_GATEWAY_OPTION = click.option(
    "--gateway",
    "gateway_url",
    default=None,
    help="The gateway's URL, if not the one its config says (e.g. `first gateway up --port`).",
)
_INTERVAL_OPTION = click.option(
    "--scrape-interval",
    "scrape_interval_s",
    type=click.FloatRange(min=1),
    default=15.0,
    show_default=True,
    help="Seconds between scrapes (and rule evaluations).",
)


@click.group()
def monitor() -> None:
    """Prometheus, alerts and Grafana dashboards for the gateway and its sites."""


def _render(config_path: str, gateway_url: str | None, scrape_interval_s: float) -> str:
    from serve_app.config import load_federation
    from serve_app.hosting import gateway_url as url_of

    config = load_federation(config_path)
    ray_temp_dir = Path(config.gateway.ray.temp_dir or "/tmp/ray")
    keeper = config.keeper
    apart = keeper.metrics_port and not (keeper.in_gateway and config.slurm_sites)
    return prometheus_config(
        gateway_url or url_of(config),
        ray_temp_dir,
        scrape_interval_s,
        f"127.0.0.1:{keeper.metrics_port}" if apart else None,
    )


@monitor.command("config")
@_CONFIG_OPTION
@_GATEWAY_OPTION
@_INTERVAL_OPTION
def monitor_config(config_path: str, gateway_url: str | None, scrape_interval_s: float) -> None:
    """Print prometheus.yml for the gateway of CONFIG (alert rules included)."""
    click.echo(_render(config_path, gateway_url, scrape_interval_s), nl=False)


@monitor.command("up")
@_CONFIG_OPTION
@_GATEWAY_OPTION
@_INTERVAL_OPTION
@click.option("--port", type=int, default=9090, show_default=True, help="Prometheus's port.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".first/monitoring"),
    show_default=True,
    help="Where the configuration and Prometheus's data go.",
)
def monitor_up(
    config_path: str, gateway_url: str | None, scrape_interval_s: float, port: int, workdir: Path
) -> None:
    """Run Prometheus against the running gateway and its sites until Ctrl-C."""
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise click.ClickException(f"{tool} is not installed (make monitor installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(_render(config_path, gateway_url, scrape_interval_s))
    checked = subprocess.run(
        ["promtool", "check", "config", str(config_file)], capture_output=True, text=True
    )
    if checked.returncode != 0:
        reason = (checked.stderr or checked.stdout).strip().splitlines()[-1]
        raise click.ClickException(f"promtool rejects {config_file}: {reason}")
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    click.echo(f"starting Prometheus on {url} (log: {log_path})", err=True)
    with open(log_path, "w") as log:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    signal.signal(signal.SIGTERM, lambda *_: prometheus.terminate())
    try:
        _wait_ready(prometheus, url, log_path)
        click.echo(_where_to_look(url, config_file), err=True)
        click.echo(f"READY {url}")
        prometheus.wait()
    except KeyboardInterrupt:
        pass
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()


def _wait_ready(prometheus: subprocess.Popen, url: str, log_path: Path) -> None:
    from deployments.site_runner import poll_until_ok

    def ready() -> httpx.Response:
        if prometheus.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise click.ClickException(f"Prometheus exited: {' '.join(tail)}")
        return httpx.get(f"{url}/-/ready", timeout=2)

    failure = poll_until_ok(ready, time.monotonic() + READY_TIMEOUT_S, interval_s=0.5)
    if failure is not None:
        raise click.ClickException(
            f"Prometheus did not become ready in {READY_TIMEOUT_S:.0f} s (last: {failure})"
        )


def _where_to_look(url: str, config_file: Path) -> str:
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    names = "\n".join(f"     {path}" for path in dashboards)
    return f"""
Prometheus is scraping the gateway and its sites ({config_file}).
   targets: {url}/targets    alerts: {url}/alerts    rules: {ALERT_RULES}
   query:   {url}/graph?g0.expr=sum+by+(model)+(rate(first_requests_total[5m]))

Grafana dashboards (import each in Grafana: Dashboards > New > Import > Upload JSON,
and pick a Prometheus data source that points at {url}):
{names}
Ctrl-C stops Prometheus.
"""
