"""Settings read from the environment: the gateway's secrets, under the FIRST_ prefix.

Everything else is in the federation file. Secrets are not, so they can come
from a secret store, a Slurm job's environment, or a secrets file outside
the repository (`auth.globus.secrets_file`), never from YAML in git.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from deployments.errors import FirstError

PREFIX = "FIRST_"


class SecretsError(FirstError):
    """A secrets file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Settings:
    globus_client_id: str | None = None
    globus_client_secret: str | None = None
    api_key: str | None = None
    # The key callers' cache salts are derived with (serve_app/access/cache_salt.py).
    cache_salt_secret: str | None = None
    # The key an endpoint-engine channel and the site's endpoint that dials in share.
    endpoint_key: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            globus_client_id=environ.get(f"{PREFIX}GLOBUS_CLIENT_ID") or None,
            globus_client_secret=environ.get(f"{PREFIX}GLOBUS_CLIENT_SECRET") or None,
            api_key=environ.get(f"{PREFIX}API_KEY") or None,
            cache_salt_secret=environ.get(f"{PREFIX}CACHE_SALT_SECRET") or None,
            endpoint_key=environ.get(f"{PREFIX}ENDPOINT_KEY") or None,
        )

    def with_cache_salt_secret(self) -> Settings:
        """These settings with a cache salt secret: the environment's, or a new one.

        A new one lives as long as the gateway (caches from before a restart go
        unused); gateways that must agree (several hosts) share one in the
        environment.
        """
        if self.cache_salt_secret:
            return self
        return replace(self, cache_salt_secret=secrets.token_hex(32))

    def with_secrets_file(self, path: Path | None) -> Settings:
        """Fill the Globus client id and secret from `path` where the environment has none."""
        if path is None or (self.globus_client_id and self.globus_client_secret):
            return self
        try:
            secrets = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SecretsError(f"cannot read the secrets file {path}: {exc}") from None
        if not isinstance(secrets, dict):
            raise SecretsError(f"{path}: expected client_id and client_secret")
        return replace(
            self,
            globus_client_id=self.globus_client_id or secrets.get("client_id"),
            globus_client_secret=self.globus_client_secret or secrets.get("client_secret"),
        )
