"""Workflows on top of single requests, each through the gateway's own request path
(placement, limits, ledger), never to a site directly: bulk requests."""
