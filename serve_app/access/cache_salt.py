"""Each caller's cache salt: a key that keeps their prompts' KV blocks their own.

vLLM's prefix cache lets a request reuse the KV blocks of any earlier prompt
with the same start, and the first token then comes faster: that tells a user
whether someone else sent that prefix (a known side channel). A request
carrying `cache_salt` only meets blocks made under the same salt. The gateway
sets it on every request it forwards, derived from the caller (or their
shared group) with a secret only the gateway holds, so a salt names no one
and no caller can choose another's.
"""

from __future__ import annotations

import hashlib
import hmac

from serve_app.access.policy import Principal
from serve_app.config import CacheIsolationConfig


class CacheSalter:
    def __init__(self, config: CacheIsolationConfig, secret: str):
        self.config = config
        self._secret = secret.encode()
        self._salts: dict[str, str] = {}

    def salt(self, caller: Principal) -> str | None:
        """The caller's salt; None when isolation is off."""
        if not self.config.enabled:
            return None
        shared = next((g for g in self.config.shared_groups if g in caller.groups), None)
        owner = f"group:{shared}" if shared is not None else f"user:{caller.user}"
        salt = self._salts.get(owner)
        if salt is None:
            digest = hmac.new(self._secret, owner.encode(), hashlib.sha256).hexdigest()
            # 128 bits: vLLM allows up to 128 characters, and no '/', '@' or '\\'.
            salt = self._salts[owner] = digest[:32]
        return salt
