"""`first gateway up`: the federating gateway, on Ray Serve or standalone, until Ctrl-C."""

from __future__ import annotations

import threading
import time

import click

from serve_app.cli.common import (
    KEY_FROM_ENVIRONMENT,
    config_option,
    echo,
    log_keeper_decisions,
    port_option,
    serve_until_signal,
    start_timeout_option,
    usage_banner,
)


@click.group()
def gateway() -> None:
    """Run the federating gateway: one OpenAI endpoint over many sites."""


@gateway.command("up")
@config_option("Federation YAML file (see cluster_configs/local-federation.yaml).")
@click.option(
    "--standalone",
    is_flag=True,
    help="Serve the gateway under uvicorn in this process instead of on Ray Serve.",
)
@port_option("gateway.port")
@start_timeout_option("the colocated sites' warm models")
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
        bring_up_on_serve,
        drain_on_serve,
        gateway_url,
        serve_app_names,
        serve_standalone,
        verify_access,
        verify_channels,
    )
    from serve_app.settings import Settings

    config = load_federation(config_path)
    if port is not None:
        data = config.model_dump()
        data["gateway"]["port"] = port
        config = FederationConfig.model_validate(data)
    url = gateway_url(config)
    served = {m.id: m for s in config.sites for m in s.site_config.models}
    # The examples use the first: a chat model, not an embedding model.
    models = sorted(served, key=lambda model: (served[model].embeds, model))
    models += [tribunal.name for tribunal in config.tribunals]
    settings = Settings.from_environment()
    api_key: str | None = None

    def announce() -> None:
        where = f"   (sites and their state: {url}/health, {url}/v1/models)"
        where += f"\nChat page: {url}/chat   (docs/chat.md)"
        if not standalone:
            where += f"\nPer-request logs: {config.gateway.ray.serve_logs_path()}/"
        click.echo(usage_banner("The gateway", url, models, where, api_key), err=True)
        click.echo(f"READY {url}", err=False)
        if config.rag.collections:
            # Beside the serving loop (the standalone gateway calls this from within it).
            key = settings.api_key if api_key == KEY_FROM_ENVIRONMENT else api_key
            threading.Thread(target=seed_collections, args=(config, url, key), daemon=True).start()

    log_keeper_decisions()
    verify_channels(config, settings, echo)
    verify_access(config, settings)
    # Only once the checks pass: a key made for a gateway that never starts is never shown.
    if key_user:
        api_key = _banner_key(config, key_user, settings.api_key)
    if standalone:
        echo(f"serving standalone on {url}")
        serve_standalone(config, announce)
        return

    def stop() -> None:
        try:
            drain_on_serve(config, echo)
        finally:  # a second Ctrl-C ends the drain, not the shutdown
            shut_down(config.gateway.ray, serve_app_names(config))

    serve_until_signal(lambda: bring_up_on_serve(config, timeout_s, echo), announce, stop)


def seed_collections(config, url: str, api_key: str | None) -> None:
    """Ingest `rag.collections` through the gateway's own API, as `first rag ingest` would;
    unchanged files are skipped, so a restart costs a read of each file."""
    from serve_app.cli.client import GatewayClient
    from serve_app.cli.rag import ingest_files

    if api_key is None and config.auth.required:
        names = ", ".join(c.name for c in config.rag.collections)
        echo(f"rag.collections ({names}) not ingested: no API key (--with-key or $FIRST_API_KEY)")
        return
    gateway = GatewayClient(url, api_key, timeout_s=600)
    for collection in config.rag.collections:
        started = time.monotonic()
        try:
            totals = ingest_files(gateway, collection.name, collection.paths, None, progress=False)
        except click.ClickException as exc:
            echo(f"rag collection {collection.name} not ingested: {exc.message}")
            continue
        echo(
            f"rag collection {collection.name}: {totals['documents']} documents "
            f"({totals['changed']} new or changed), {totals['chunks']} chunks, "
            f"{time.monotonic() - started:.1f} s"
        )


def _banner_key(config, user: str, given: str | None) -> str:
    """The key `--with-key` shows: $FIRST_API_KEY (registered if new) or a new one."""
    from serve_app.store import build_store, new_api_key

    if not config.auth.api_keys:
        raise click.ClickException("--with-key: this gateway accepts no API keys (auth.api_keys)")
    store = build_store(config.store)
    if given:
        known = store.find_key(given)
        if known is not None and known.revoked_at is not None:
            raise click.ClickException(f"FIRST_API_KEY is the revoked key {known.key_id}")
        if known is None:
            store.add_key(given, user, [])
            echo(f"registered FIRST_API_KEY for {user}")
        return KEY_FROM_ENVIRONMENT
    key = new_api_key()
    record = store.add_key(key, user, [])
    echo(f"made API key {record.key_id} for {user}")
    return key


@gateway.command("tunnel-config")
@config_option("Federation YAML file with ssh-tunnel sites.")
@click.option(
    "--user",
    default="first-tunnel",
    show_default=True,
    help="The gateway host's account for site tunnels.",
)
@click.option(
    "--authorized-keys", "keys_only", is_flag=True, help="Print only the account's authorized_keys."
)
def gateway_tunnel_config(config_path: str, user: str, keys_only: bool) -> None:
    """Print the sshd_config Match block and authorized_keys for the sites' SSH tunnels.

    The account may only forward each site's own port back to the gateway host: no
    shell, no command, no TTY (docs/sites.md).
    """
    from serve_app.config import load_federation
    from serve_app.routing.tunnels import authorized_keys, sshd_match_block

    try:
        keys = authorized_keys(load_federation(config_path))
    except ValueError as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    if not keys:
        raise click.ClickException(f"{config_path}: no site has transport ssh-tunnel")
    if keys_only:
        click.echo(keys, nl=False)
        return
    click.echo(
        f"# sshd_config (for example /etc/ssh/sshd_config.d/first-tunnel.conf)\n"
        f"{sshd_match_block(user)}\n# ~{user}/.ssh/authorized_keys\n{keys}",
        nl=False,
    )
