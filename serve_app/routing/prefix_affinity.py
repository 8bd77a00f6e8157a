"""Which site already holds a prompt's prefix in its KV cache: the memory behind prefix-aware placement.

A prompt is cut into blocks of `block_chars` characters, each hashed
together with every block before it (as vLLM hashes its KV blocks), so two
prompts share the hashes of exactly the blocks they share from the start:
a system prompt, a document, the earlier turns of a conversation.

- `PrefixMemory` remembers, for the most recent block hashes, the site that
  last served a request holding them (least recently used forgotten first);
  the longest remembered prefix names the site whose cache most likely
  still holds it.
- A prompt whose prefix nobody remembers (a new conversation, or a
  conversation another ingress replica served) goes to the site that
  rendezvous hashing of its first block picks: every replica of the
  gateway picks the same site for the same first block without sharing any
  state, so a system prompt's conversations meet at one site.

Either choice only stands while that site is not overloaded
(serve_app/routing/placement.py bounds it); otherwise least-loaded decides.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable


def prefix_blocks(text: str, block_chars: int, max_blocks: int, seed: bytes = b"") -> list[bytes]:
    """Chained hashes of the whole blocks at the start of `text` (a partial last block has none).

    `seed` starts the chain: the caller's cache salt, so that affinity follows the
    caches a request can actually hit.
    """
    hashes: list[bytes] = []
    chained = seed
    data = text.encode("utf-8", "surrogatepass")
    size = block_chars  # bytes of UTF-8: close enough to characters for a cache key
    for start in range(0, min(len(data) // size, max_blocks) * size, size):
        chained = hashlib.blake2b(chained + data[start : start + size], digest_size=12).digest()
        hashes.append(chained)
    return hashes


def rendezvous_order(key: bytes, sites: Iterable[str]) -> list[str]:
    """Sites by highest random weight for `key`: the same order in every process."""

    def weight(site: str) -> bytes:
        return hashlib.blake2b(key + site.encode(), digest_size=8).digest()

    return sorted(sites, key=weight, reverse=True)


class PrefixMemory:
    """Block hash -> the site that last served it, for the `capacity` most recent blocks."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._sites: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sites)

    def longest_match(self, blocks: list[bytes], sites: set[str]) -> tuple[str, int] | None:
        """The site among `sites` holding the longest prefix of `blocks`, and how many blocks."""
        for count in range(len(blocks), 0, -1):
            site = self._sites.get(blocks[count - 1])
            if site in sites:
                return site, count
        return None

    def remember(self, blocks: list[bytes], site: str) -> None:
        for block in blocks:
            self._sites[block] = site
            self._sites.move_to_end(block)
        while len(self._sites) > self.capacity:
            self._sites.popitem(last=False)
