"""Settings read from the environment: the gateway's secrets, under the FIRST_ prefix.

Everything else is in the federation file. Secrets are not, so they can come
from a secret store or a Slurm job's environment instead of a file in git.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "FIRST_"


@dataclass(frozen=True)
class Settings:
    globus_client_id: str | None = None
    globus_client_secret: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            globus_client_id=environ.get(f"{PREFIX}GLOBUS_CLIENT_ID") or None,
            globus_client_secret=environ.get(f"{PREFIX}GLOBUS_CLIENT_SECRET") or None,
        )
