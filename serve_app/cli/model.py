"""`first model`: helpers for models, such as the tiny random-weight Llama of the tests."""

from __future__ import annotations

from pathlib import Path

import click

from serve_app.cli.common import echo


@click.group()
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
@click.option(
    "--embedding",
    is_flag=True,
    help="The tiny embedding model instead (served with runner: pooling); shape options "
    "do not apply.",
)
def build_tiny(  # noqa: PLR0913 (click options)
    out: str, seed: int, context: int, hidden_size: int, layers: int, embedding: bool
) -> None:
    """Build the tiny random-weight Llama used by `make run` and the tests.

    Larger shapes are for benchmarks in which prefill must cost something.
    Heads are 64 wide (what vLLM's CPU attention takes), so --hidden-size
    must be a multiple of 64.
    """
    from deployments.tiny_model import (
        TinyShape,
        build_tiny_embedding_model,
        build_tiny_model,
        model_fingerprint,
    )

    if embedding:
        path = build_tiny_embedding_model(Path(out), seed=seed)
        echo(f"tiny embedding model written to {path} (sha256 {model_fingerprint(path)[:12]})")
        return

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
    echo(f"tiny model written to {path} (sha256 {model_fingerprint(path)[:12]})")
