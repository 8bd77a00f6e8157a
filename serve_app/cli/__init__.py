"""The `first` command line, one module per command group (`first --help` lists them)."""

from serve_app.cli.main import main

__all__ = ["main"]
