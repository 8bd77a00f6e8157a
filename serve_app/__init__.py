"""The federating gateway: one OpenAI-compatible endpoint over many HPC sites.

Its folders follow a request (DESIGN.md, "Request flow"):

- `routes/`: the HTTP API, one module per family; each route calls one service;
- `access/`: who is calling (API keys, Globus Auth), what they may use, their limits;
- `inference.py`: one request end to end, the path every route of the API takes;
- `routing/`: what the gateway knows of its sites, where a request goes (placement,
  prefix affinity, circuit breaker, cold start) and how it gets there (forwarding,
  the control channel);
- `usage/`: what a request used (metering), the ledger, usage reports;
- `batch/`: the Files and Batches API and the supervisor that runs batches at sites;
- `store/`: where keys and the ledger are kept;
- `config/`: the federation file, one module per section;
- `cli/`: the `first` command line.

Around them: `app.py` assembles the FastAPI app, `services.py` builds what
the routes use, `ingress.py` puts it on Ray Serve, `hosting.py` starts it
(on Serve or standalone); `errors.py`, `middleware.py`, `protocol.py`,
`metrics.py` and `settings.py` serve them all. The import contracts in
pyproject.toml keep each part above the parts it uses. Other folders use the
sub-packages through their own `__all__`; nothing is imported here, so
`first --help` stays quick.
"""

__all__ = [
    "access",
    "batch",
    "cli",
    "config",
    "routing",
    "store",
    "usage",
]
