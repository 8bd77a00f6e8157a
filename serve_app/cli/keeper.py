"""`first keeper run`: the hot-node keeper beside the gateway, until Ctrl-C."""

from __future__ import annotations

import click

from serve_app.cli.common import federation_option, log_keeper_decisions, stop_on_signals


@click.group()
def keeper() -> None:
    """The hot-node keeper: keeps Slurm sites' hot models allocated, grows and shrinks them."""


@keeper.command("run")
@federation_option()
@click.option("--once", is_flag=True, help="Look at every site once, act, and exit.")
def keeper_run(config_path: str, once: bool) -> None:
    """Watch every Slurm site of the federation and act on each model, until Ctrl-C."""
    import asyncio

    from serve_app.config import load_federation
    from serve_app.services import build_keeper
    from serve_app.settings import Settings

    config = load_federation(config_path)
    if not config.slurm_sites:
        raise click.ClickException(f"{config_path}: no site has a `slurm` section; nothing to keep")
    keeper_loop = build_keeper(config, Settings.from_environment())
    log_keeper_decisions()
    if config.keeper.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.keeper.metrics_port, addr="127.0.0.1")
    stop_on_signals()
    try:
        asyncio.run(keeper_loop.look_once() if once else keeper_loop.run())
    except KeyboardInterrupt:
        pass
    finally:
        keeper_loop.close()
