"""`first keys` and `first usage`: the operator's side of the gateway's store."""

from __future__ import annotations

import time

import click

from serve_app.cli.common import echo, federation_option

_STORE_CONFIG = federation_option("Federation YAML file (its store holds keys and usage).")


def _store_of(config_path: str):
    from serve_app.config import load_federation
    from serve_app.store import build_store

    return build_store(load_federation(config_path).store)


@click.group()
def keys() -> None:
    """Make, list and revoke API keys (kept hashed in the gateway's store)."""


@keys.command("create")
@_STORE_CONFIG
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
    echo(
        f"key {record.key_id} for {record.user} (groups: {', '.join(names) or 'none'}); "
        "it is shown only now"
    )
    click.echo(key)


@keys.command("list")
@_STORE_CONFIG
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
@_STORE_CONFIG
@click.argument("key_id")
def keys_revoke(config_path: str, key_id: str) -> None:
    """Revoke the key KEY_ID (see `first keys list`); gateways refuse it within seconds."""
    key = _store_of(config_path).revoke_key(key_id)
    echo(f"key {key.key_id} of {key.user} is revoked")


@click.command("usage")
@_STORE_CONFIG
@click.option("--since", default="7d", show_default=True, help="30m, 24h, 7d, 2w or an ISO date.")
@click.option("--until", default=None, help="Same forms (default: now).")
@click.option(
    "--by",
    type=click.Choice(["user", "model", "site", "route", "day"]),
    default="user",
    show_default=True,
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout instead of a table.")
def usage(config_path: str, since: str, until: str | None, by: str, as_csv: bool) -> None:
    """Requests, errors and tokens per user, model, site, route or day, from the usage ledger."""
    import csv
    import sys

    from serve_app.usage.report import usage_report

    report = usage_report(_store_of(config_path), since, until, by, time.time())
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
    echo(f"usage from {start} to {end} UTC, by {by}")
    width = max([len(by), *(len(row.key) for row in report.data)])
    click.echo(f"{by.upper():<{width}} " + " ".join(f"{c.upper():>17}" for c in columns))
    for row in report.data:
        click.echo(f"{row.key:<{width}} " + " ".join(f"{getattr(row, c):>17}" for c in columns))
