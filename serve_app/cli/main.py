"""The `first` command line: run the gateway or a site, inspect a site, build the tiny model.

Every command has `--help`; every failure exits non-zero with one line
that says why.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click

from deployments.config_loading import ConfigError, load_config
from deployments.site_config import SiteConfig
from serve_app.cli.batch import batch
from serve_app.cli.monitor import monitor


def _echo(message: str) -> None:
    click.echo(f"[first] {message}", err=True)


def _load_site(path: str, port: int | None = None) -> SiteConfig:
    try:
        site = load_config(path, SiteConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if port is not None:
        site.serve.port = port
    return site


def _usage_banner(
    headline: str, url: str, models: list[str], where: str = "", api_key: str | None = None
) -> str:
    """What to run against the endpoint that just came up; `where` follows the model list.

    `api_key` is a new key (shown this once) or KEY_FROM_ENVIRONMENT, which the
    examples then name instead of printing its value into a log.
    """
    model = models[0] if models else "MODEL"
    if api_key == KEY_FROM_ENVIRONMENT:
        key_line = "API key: the one in $FIRST_API_KEY\n"
    elif api_key:
        key_line = f"API key: {api_key}   (shown once; to reuse it: export FIRST_API_KEY=<key>)\n"
    else:
        key_line = ""
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    return f"""
{headline} is serving an OpenAI-compatible API at {url}/v1
Models: {", ".join(models)}{where}
{key_line}
  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{api_key or "none"}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello'}}], max_tokens=16).choices[0].message.content)"

Press Ctrl-C to stop.
"""


def _log_keeper_decisions() -> None:
    """Warnings from everything, and the hot-node keeper's decisions, on stderr."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="[first] %(asctime)s %(message)s")
    logging.getLogger("first.keeper").setLevel(logging.INFO)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both lead to a clean shutdown."""
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """FIRST: federated, OpenAI-compatible LLM inference on Ray Serve and vLLM."""


@main.group()
def site() -> None:
    """Run and inspect one site (a Ray cluster serving models)."""


@site.command("up")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Site YAML file (see cluster_configs/local.yaml).",
)
@click.option("--port", type=int, default=None, help="Override serve.port from the config.")
@click.option(
    "--timeout-s",
    type=float,
    default=600.0,
    show_default=True,
    help="How long to wait for every warm model to answer.",
)
def site_up(config_path: str, port: int | None, timeout_s: float) -> None:
    """Start or join Ray, deploy the site's models, and serve until Ctrl-C."""
    from deployments.site_runner import SiteStartError, bring_up, shut_down

    site_config = _load_site(config_path, port)
    if site_config.slurm is not None:
        raise click.ClickException(
            f"{config_path}: this site's models run in Slurm jobs; start one with "
            "`first slurm launch`, or let the gateway start them on demand"
        )
    _stop_on_signals()
    started = time.monotonic()
    try:
        bring_up(site_config, timeout_s, _echo)
        _stop_on_signals()  # ray.init replaces the handlers; Ctrl-C must still stop us
        _echo(f"ready in {time.monotonic() - started:.1f} s")
        models = [m.id for m in site_config.models]
        banner = _usage_banner(f"Site {site_config.name!r}", site_config.base_url, models)
        click.echo(banner, err=True)
        click.echo(f"READY {site_config.base_url}", err=False)
        while True:
            time.sleep(3600)
    except SiteStartError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        _echo("shutting down")
        shut_down(site_config.ray, [site_config.serve.app_name])


@site.command("status")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Site YAML file of a running site.",
)
def site_status_command(config_path: str) -> None:
    """Print the site's per-model status (replicas, requests, readiness) as JSON."""
    from deployments.site_functions import site_status

    site_config = _load_site(config_path)
    status = site_status(site_config.model_dump())
    click.echo(json.dumps(status, indent=2))
    if not status["reachable"]:
        raise click.ClickException(f"site {site_config.name!r} is not reachable: {status['error']}")


@main.group()
def slurm() -> None:
    """Start, stop and inspect a Slurm site's model jobs (each a Ray cluster in an allocation)."""


_SITE_OPTION = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Site YAML file with a `slurm` section.",
)


def _slurm_site(config_path: str, model_id: str | None) -> SiteConfig:
    site_config = _load_site(config_path)
    if site_config.slurm is None:
        raise click.ClickException(f"{config_path}: the site has no `slurm` section")
    known = [m.id for m in site_config.models]
    if model_id is not None and model_id not in known:
        raise click.ClickException(
            f"the site {site_config.name!r} has no model {model_id!r}; models: {', '.join(known)}"
        )
    return site_config


@slurm.command("launch")
@_SITE_OPTION
@click.argument("model_id", metavar="MODEL")
@click.option(
    "--at-least",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs of the model to have queued or running; one more is submitted if fewer.",
)
def slurm_launch(config_path: str, model_id: str, at_least: int) -> None:
    """Submit a job serving MODEL, unless one is already queued or running."""
    from deployments.site_functions import launch
    from deployments.slurm import SlurmError

    site_config = _slurm_site(config_path, model_id)
    try:
        result = launch(site_config.model_dump(), model_id, at_least)
    except SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    ids = ", ".join(job["job_id"] for job in result["jobs"])
    if result["submitted"]:
        _echo(f"submitted job {result['jobs'][-1]['job_id']} for {model_id} (active: {ids})")
    else:
        _echo(f"{model_id} already has job(s) {ids}: nothing submitted")
    click.echo(result["jobs"][-1]["job_id"])


@slurm.command("stop")
@_SITE_OPTION
@click.argument("model_id", metavar="MODEL")
@click.option("--job", "job_id", default=None, help="Cancel only this job of the model.")
def slurm_stop(config_path: str, model_id: str, job_id: str | None) -> None:
    """Cancel MODEL's queued and running jobs (or one of them)."""
    from deployments.site_functions import stop
    from deployments.slurm import SlurmError

    site_config = _slurm_site(config_path, model_id)
    try:
        result = stop(site_config.model_dump(), model_id, job_id)
    except (SlurmError, KeyError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    cancelled = ", ".join(result["cancelled"]) or "none (no job queued or running)"
    _echo(f"cancelled {model_id} job(s): {cancelled}")


@slurm.command("status")
@_SITE_OPTION
@click.argument("model_id", metavar="[MODEL]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the site's status report as JSON.")
def slurm_status(config_path: str, model_id: str | None, as_json: bool) -> None:
    """Show each model's state and jobs: queued (and why), running (nodes, time left), failed."""
    from deployments.site_functions import site_status

    site_config = _slurm_site(config_path, model_id)
    status = site_status(site_config.model_dump())
    if not status["reachable"]:
        raise click.ClickException(f"site {site_config.name!r}: {status['error']}")
    models = [m for m in status["models"] if model_id in (None, m["id"])]
    if as_json:
        click.echo(json.dumps({**status, "models": models}, indent=2))
        return
    click.echo(
        f"{'MODEL':<20} {'STATE':<9} {'JOB':<8} {'JOB STATE':<10} {'NODES':<12} {'LEFT':>9}  WHERE / WHY"
    )
    for entry in models:
        jobs = entry["jobs"] or [None]
        for job in jobs:
            click.echo(_job_row(entry, job))
            if job and job.get("log_tail"):
                click.echo("    " + job["log_tail"].replace("\n", "\n    "))


def _job_row(entry: dict, job: dict | None) -> str:
    if job is None:
        return f"{entry['id']:<20} {entry['state']:<9} -"
    left = job["time_left_s"]
    left_text = "-" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
    where = job["base_url"] or job["reason"] or ""
    return (
        f"{entry['id']:<20} {entry['state']:<9} {job['job_id']:<8} {job['state']:<10} "
        f"{job['nodes'] or '-':<12} {left_text:>9}  {where}"
    )


@main.group()
def gateway() -> None:
    """Run the federating gateway: one OpenAI endpoint over many sites."""


@gateway.command("up")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Federation YAML file (see cluster_configs/local-federation.yaml).",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="Serve the gateway under uvicorn in this process instead of on Ray Serve.",
)
@click.option("--port", type=int, default=None, help="Override gateway.port from the config.")
@click.option(
    "--timeout-s",
    type=float,
    default=600.0,
    show_default=True,
    help="How long to wait for the colocated sites' warm models to answer.",
)
@click.option(
    "--with-key",
    "key_user",
    default=None,
    metavar="USER",
    help="Make an API key for USER and show it in the examples; with $FIRST_API_KEY set, "
    "that key is registered (or reused) instead, so scripted runs are repeatable.",
)
def gateway_up(
    config_path: str, standalone: bool, port: int | None, timeout_s: float, key_user: str | None
) -> None:
    """Start the gateway (and its colocated sites) and serve until Ctrl-C."""
    from deployments.site_runner import shut_down
    from serve_app.config import FederationConfig, load_federation
    from serve_app.hosting import (
        GatewayStartError,
        bring_up_on_serve,
        gateway_url,
        serve_app_names,
        serve_standalone,
        verify_access,
        verify_channels,
    )
    from serve_app.settings import Settings

    try:
        config = load_federation(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if port is not None:
        data = config.model_dump()
        data["gateway"]["port"] = port
        config = FederationConfig.model_validate(data)
    url = gateway_url(config)
    models = sorted({m.id for s in config.sites for m in s.site_config.models})
    settings = Settings.from_environment()
    api_key: str | None = None

    def announce() -> None:
        where = f"   (sites and their state: {url}/health, {url}/v1/models)"
        click.echo(_usage_banner("The gateway", url, models, where, api_key), err=True)
        click.echo(f"READY {url}", err=False)

    _log_keeper_decisions()
    started = time.monotonic()
    try:
        verify_channels(config, settings, _echo)
        verify_access(config, settings)
        # Only once the checks pass: a key made for a gateway that never starts is never shown.
        if key_user:
            api_key = _banner_key(config, key_user, settings.api_key)
        if standalone:
            _echo(f"serving standalone on {url}")
            serve_standalone(config, announce)
            return
        _stop_on_signals()
        try:
            bring_up_on_serve(config, timeout_s, _echo)
            _stop_on_signals()  # ray.init replaces the handlers; Ctrl-C must still stop us
            _echo(f"ready in {time.monotonic() - started:.1f} s")
            announce()
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            _echo("shutting down")
            shut_down(config.gateway.ray, serve_app_names(config))
    except GatewayStartError as exc:
        raise click.ClickException(str(exc)) from None


# Shell syntax: the examples name the variable, so its value is never printed.
KEY_FROM_ENVIRONMENT = "$FIRST_API_KEY"


def _banner_key(config, user: str, given: str | None) -> str:
    """The key `--with-key` shows: $FIRST_API_KEY (registered if new) or a new one."""
    from serve_app.store import new_api_key

    if not config.auth.api_keys:
        raise click.ClickException("--with-key: this gateway accepts no API keys (auth.api_keys)")
    store = _open_store(config)
    if given:
        known = store.find_key(given)
        if known is not None and known.revoked_at is not None:
            raise click.ClickException(f"FIRST_API_KEY is the revoked key {known.key_id}")
        if known is None:
            store.add_key(given, user, [])
            _echo(f"registered FIRST_API_KEY for {user}")
        return KEY_FROM_ENVIRONMENT
    key = new_api_key()
    record = store.add_key(key, user, [])
    _echo(f"made API key {record.key_id} for {user}")
    return key


def _open_store(config):
    from serve_app.store import StoreError, build_store

    try:
        return build_store(config.store)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def keys() -> None:
    """Make, list and revoke API keys (kept hashed in the gateway's store)."""


_FEDERATION_OPTION = click.option(
    "--config",
    "config_path",
    default="cluster_configs/local-federation.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Federation YAML file (its store holds the API keys).",
)


def _store_of(config_path: str):
    from serve_app.config import load_federation

    try:
        config = load_federation(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return _open_store(config)


@keys.command("create")
@_FEDERATION_OPTION
@click.option("--user", required=True, help="Who the key is for (shown in the usage ledger).")
@click.option(
    "--groups",
    default="",
    help="Comma-separated groups the key's holder belongs to (as the access policy names them).",
)
def keys_create(config_path: str, user: str, groups: str) -> None:
    """Make a key and print it once on stdout; only its hash is stored."""
    from serve_app.store import new_api_key

    names = [g.strip() for g in groups.split(",") if g.strip()]
    if not user.strip():
        raise click.ClickException("--user must not be empty")
    store = _store_of(config_path)
    key = new_api_key()
    record = store.add_key(key, user.strip(), names)
    _echo(
        f"key {record.key_id} for {record.user} (groups: {', '.join(names) or 'none'}); "
        "it is shown only now"
    )
    click.echo(key)


@keys.command("list")
@_FEDERATION_OPTION
def keys_list(config_path: str) -> None:
    """List keys: id, user, groups, when made, and whether revoked. Never the keys."""
    rows = _store_of(config_path).list_keys()
    click.echo(f"{'ID':<12} {'USER':<24} {'CREATED (UTC)':<20} {'STATUS':<8} GROUPS")
    for key in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_at))
        status = "revoked" if key.revoked_at else "active"
        click.echo(
            f"{key.key_id:<12} {key.user:<24} {created:<20} {status:<8} {','.join(key.groups)}"
        )


@keys.command("revoke")
@_FEDERATION_OPTION
@click.argument("key_id")
def keys_revoke(config_path: str, key_id: str) -> None:
    """Revoke the key KEY_ID (see `first keys list`); gateways refuse it within seconds."""
    from serve_app.store import StoreError

    try:
        key = _store_of(config_path).revoke_key(key_id)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    _echo(f"key {key.key_id} of {key.user} is revoked")


@main.command("usage")
@_FEDERATION_OPTION
@click.option("--since", default="7d", show_default=True, help="30m, 24h, 7d, 2w or an ISO date.")
@click.option("--until", default=None, help="Same forms (default: now).")
@click.option(
    "--by",
    type=click.Choice(["user", "model", "site", "route", "day"]),
    default="user",
    show_default=True,
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout instead of a table.")
def usage_command(config_path: str, since: str, until: str | None, by: str, as_csv: bool) -> None:
    """Requests, errors and tokens per user, model, site, route or day, from the usage ledger."""
    import csv
    import sys

    from serve_app.usage.report import PeriodError, usage_report

    try:
        report = usage_report(_store_of(config_path), since, until, by, time.time())
    except PeriodError as exc:
        raise click.ClickException(str(exc)) from None
    columns = ["requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"]
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([by, *columns])
        for row in report.data:
            writer.writerow([row.key, *(getattr(row, c) for c in columns)])
        return
    start, end = (
        time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in (report.since, report.until)
    )
    _echo(f"usage from {start} to {end} UTC, by {by}")
    width = max([len(by), *(len(row.key) for row in report.data)])
    click.echo(f"{by.upper():<{width}} " + " ".join(f"{c.upper():>17}" for c in columns))
    for row in report.data:
        click.echo(f"{row.key:<{width}} " + " ".join(f"{getattr(row, c):>17}" for c in columns))


@main.group()
def keeper() -> None:
    """The hot-node keeper: keeps Slurm sites' hot models allocated, grows and shrinks them."""


@keeper.command("run")
@_FEDERATION_OPTION
@click.option("--once", is_flag=True, help="Look at every site once, act, and exit.")
def keeper_run(config_path: str, once: bool) -> None:
    """Watch every Slurm site of the federation and act on each model, until Ctrl-C."""
    import asyncio

    from autoscaling.keeper import Keeper
    from serve_app.config import load_federation
    from serve_app.routing.control_channel import ChannelError, build_channels
    from serve_app.settings import Settings

    try:
        config = load_federation(config_path)
        channels = build_channels(config, Settings.from_environment())
    except (ConfigError, ChannelError) as exc:
        raise click.ClickException(str(exc)) from None
    if not any(s.site_config.slurm for s in config.sites):
        raise click.ClickException(f"{config_path}: no site has a `slurm` section; nothing to keep")
    _log_keeper_decisions()
    keeper_loop = Keeper(config, channels)
    if config.keeper.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.keeper.metrics_port, addr="127.0.0.1")
    _stop_on_signals()
    try:
        asyncio.run(keeper_loop.look_once() if once else keeper_loop.run())
    except KeyboardInterrupt:
        pass
    finally:
        keeper_loop.close()


@main.group()
def model() -> None:
    """Model helpers."""


@model.command("build-tiny")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder to write the model into."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weight seed.")
@click.option(
    "--context", type=click.IntRange(min=64), default=256, show_default=True, help="Context length."
)
@click.option("--hidden-size", type=click.IntRange(min=64), default=128, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
def build_tiny(out: str, seed: int, context: int, hidden_size: int, layers: int) -> None:
    """Build the tiny random-weight Llama used by `make run` and the tests.

    Larger shapes are for benchmarks in which prefill must cost something.
    Heads are 64 wide (what vLLM's CPU attention takes), so --hidden-size
    must be a multiple of 64.
    """
    from deployments.tiny_model import TinyShape, build_tiny_model, model_fingerprint

    if hidden_size % 64:
        raise click.ClickException(f"--hidden-size {hidden_size}: use a multiple of 64")
    heads = hidden_size // 64
    shape = TinyShape(
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(heads // 2, 1),
        intermediate_size=2 * hidden_size,
        context=context,
    )
    path = build_tiny_model(Path(out), seed=seed, shape=shape)
    _echo(f"tiny model written to {path} (sha256 {model_fingerprint(path)[:12]})")


main.add_command(batch)
main.add_command(monitor)
