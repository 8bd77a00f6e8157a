"""Cache salts: one per caller, or per shared group; none of them names its owner."""

from __future__ import annotations

from serve_app.access.cache_salt import CacheSalter
from serve_app.access.policy import Principal
from serve_app.config import CacheIsolationConfig
from serve_app.routing.prefix_affinity import prefix_blocks


def caller(user: str, *groups: str) -> Principal:
    return Principal(user=user, credential="api-key", groups=frozenset(groups))


def test_each_caller_has_a_salt_of_their_own_that_names_no_one():
    salter = CacheSalter(CacheIsolationConfig(), "secret")
    ann, bob = salter.salt(caller("ann@x.org")), salter.salt(caller("bob@x.org"))
    assert ann and bob and ann != bob
    assert ann == salter.salt(caller("ann@x.org", "g1"))  # groups not shared: still hers
    assert "ann" not in ann and len(ann) == 32 and ann.isalnum()
    # Another secret, other salts: nobody can work out someone's salt without it.
    assert CacheSalter(CacheIsolationConfig(), "other").salt(caller("ann@x.org")) != ann


def test_members_of_a_shared_group_share_one_salt():
    salter = CacheSalter(CacheIsolationConfig(shared_groups=["team", "lab"]), "secret")
    cara, dan = salter.salt(caller("cara", "lab", "team")), salter.salt(caller("dan", "team"))
    assert cara == dan  # the first listed group both are in
    assert salter.salt(caller("eve", "lab")) not in (cara, None)
    assert salter.salt(caller("fay")) not in (cara, None)


def test_isolation_off_sets_no_salt():
    assert CacheSalter(CacheIsolationConfig(enabled=False), "secret").salt(caller("ann")) is None


def test_prefix_affinity_keys_on_the_salted_prefix():
    text = "a shared system prompt " * 20
    plain = prefix_blocks(text, 32, 8)
    assert prefix_blocks(text, 32, 8, b"salt-a") == prefix_blocks(text, 32, 8, b"salt-a")
    assert not set(prefix_blocks(text, 32, 8, b"salt-a")) & set(plain)
    assert not set(prefix_blocks(text, 32, 8, b"salt-a")) & set(prefix_blocks(text, 32, 8, b"b"))
