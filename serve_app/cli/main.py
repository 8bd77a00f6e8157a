"""The `first` command line: run the gateway or a site, inspect a site, build the tiny model.

Every command has `--help`; every failure exits non-zero with one line
that says why: commands raise `FirstError` (or click's own errors), and the
root group turns a `FirstError` into that line.
"""

from __future__ import annotations

import click

from deployments.errors import FirstError
from serve_app.cli.batch import batch
from serve_app.cli.bulk import bulk
from serve_app.cli.gateway import gateway
from serve_app.cli.keeper import keeper
from serve_app.cli.keys import keys, usage
from serve_app.cli.model import model
from serve_app.cli.monitor import monitor
from serve_app.cli.rag import rag
from serve_app.cli.site import site
from serve_app.cli.slurm import slurm


class FirstGroup(click.Group):
    """The root group: an operator error anywhere below is one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FirstError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=FirstGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """FIRST: federated, OpenAI-compatible LLM inference on Ray Serve and vLLM."""


for command in (site, slurm, gateway, keys, usage, keeper, model, batch, bulk, rag, monitor):
    main.add_command(command)
