"""`python -m serve_app.cli`: the `first` command, for an environment without its script."""

from serve_app.cli import main

main()
