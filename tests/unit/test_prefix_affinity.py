"""Prefix-aware placement: requests sharing a prompt prefix meet at one site, within a load bound."""

from __future__ import annotations

from collections import Counter

from serve_app.routing.placement import Candidate, Placer
from serve_app.routing.prefix_affinity import PrefixMemory, prefix_blocks, rendezvous_order

SYSTEM = "You are a careful assistant for the climate group. " * 12  # ~600 characters


def blocks(text: str) -> list[bytes]:
    return prefix_blocks(text, block_chars=64, max_blocks=64)


def idle(*sites: str) -> list[Candidate]:
    return [Candidate(site, ready_replicas=1) for site in sites]


def test_prompts_share_exactly_the_hashes_of_the_blocks_they_share():
    a = blocks(SYSTEM + "What is the forecast for Monday?")
    b = blocks(SYSTEM + "Summarise this report, please, in detail.")
    shared = len(SYSTEM) // 64
    assert a[:shared] == b[:shared]
    assert a[shared:] != b[shared:]
    assert blocks("short") == []  # a partial block has no hash


def test_rendezvous_order_is_the_same_in_every_process_and_for_any_site_order():
    key = blocks(SYSTEM)[0]
    assert rendezvous_order(key, ["a", "b", "c"]) == rendezvous_order(key, ["c", "a", "b"])


def test_a_conversation_follows_the_site_that_served_its_earlier_turns():
    placer = Placer("prefix-aware")
    turn_1 = SYSTEM + "user: hello there, how do I read a NetCDF file quickly?"
    # The first turn went to 'b' (say, 'a' was busy then).
    placer.remember(blocks(turn_1), "b")
    turn_2 = turn_1 + "assistant: use xarray.open_dataset. user: and then plot it?"
    for _ in range(10):
        assert placer.order(idle("a", "b", "c"), blocks(turn_2))[0].site == "b"


def test_a_new_prefix_goes_where_rendezvous_hashing_sends_it_in_every_replica():
    prefix = blocks(SYSTEM + "a question nobody asked before, long enough for a block")
    replica_1, replica_2 = Placer("prefix-aware"), Placer("prefix-aware")
    first = {replica_1.order(idle("a", "b", "c"), prefix)[0].site for _ in range(5)}
    second = {replica_2.order(idle("c", "b", "a"), prefix)[0].site for _ in range(5)}
    assert first == second == {rendezvous_order(prefix[0], ["a", "b", "c"])[0]}


def _place_hot_prefix(placer: Placer, requests: int) -> Counter:
    """`requests` with one prefix at two idle sites, none finishing: where they went."""
    prefix = blocks(SYSTEM)
    in_flight: Counter = Counter()
    for _ in range(requests):
        candidates = [Candidate(s, ready_replicas=1, in_flight=in_flight[s]) for s in ("a", "b")]
        chosen = placer.order(candidates, prefix)[0]
        mean = sum(c.load for c in candidates) / 2
        assert chosen.load <= placer.load_bound * mean + 1.0
        placer.remember(prefix, chosen.site)
        in_flight[chosen.site] += 1
    return in_flight


def test_a_hot_prefix_spills_over_once_its_site_is_past_the_load_bound():
    assert sorted(_place_hot_prefix(Placer("prefix-aware", load_bound=1e9), 40).values()) == [40]
    bounded = _place_hot_prefix(Placer("prefix-aware", load_bound=1.25), 40)
    # Every choice stayed within 1.25x the mean load plus one: the two sites share it.
    assert min(bounded.values()) >= 15, bounded


def test_without_a_prefix_prefix_aware_is_least_loaded():
    busy = Candidate("a", ready_replicas=1, in_flight=6)
    calm = Candidate("b", ready_replicas=1, in_flight=1)
    assert Placer("prefix-aware").order([busy, calm], None)[0].site == "b"
    assert Placer("prefix-aware").order([busy, calm], [])[0].site == "b"


def test_a_site_without_a_ready_replica_is_never_the_affine_choice():
    prefix = blocks(SYSTEM)
    placer = Placer("prefix-aware")
    placer.remember(prefix, "a")
    cold = Candidate("a", ready_replicas=0)
    warm = Candidate("b", ready_replicas=1, in_flight=3)
    assert placer.order([cold, warm], prefix)[0].site == "b"


def test_the_memory_forgets_the_least_recently_used_blocks_first():
    memory = PrefixMemory(capacity=4)
    old, new = blocks("x" * 64 * 3), blocks("y" * 64 * 3)
    memory.remember(old, "a")
    memory.remember(new, "b")
    assert len(memory) == 4
    assert memory.longest_match(new, {"a", "b"}) == ("b", 3)
    assert memory.longest_match(old, {"a", "b"}) == ("a", 3)  # its last block is kept
    assert memory.longest_match(old[:2], {"a", "b"}) is None


def test_the_placer_keeps_the_memory_it_is_given():
    memory = PrefixMemory(capacity=4)  # empty, so of length 0
    placer = Placer("prefix-aware", memory=memory)
    placer.remember(blocks(SYSTEM), "a")
    assert placer.memory is memory
    assert len(memory) == 4
