"""The C++ KV block pool (inflight._core via inflight.engine.kv_cache): exact state after
every operation in the style of vLLM's test_prefix_caching.py (block size 4, 11 blocks:
block ids, ref counts, free-queue order after frees and evictions), the block keys, the
reuse counters and the integrity checker."""

from __future__ import annotations

import hashlib
import struct

import pytest
from inflight import _core
from inflight.engine.kv_cache import IntegrityError, KVCacheManager, hash_block

BS, NB = 4, 11


def _state(kv: KVCacheManager) -> tuple[list[int], list[int], list[int]]:
    """(ref counts, free queue front first, cached block ids)."""
    return list(kv.ref_cnt), list(kv.free_queue), sorted(kv.cached.values())


def _admit(kv: KVCacheManager, rid: str, tokens: list[int]) -> list[int]:
    """What the scheduler does for a new request: look up, allocate, compute, cache."""
    hit = kv.prefix_hit(rid, tokens)
    assert kv.allocate(rid, len(tokens), hit)
    kv.cache_full_blocks(rid, tokens, len(tokens))
    kv.check_integrity()
    return kv.block_table(rid)


def test_shared_prefix_free_and_evict_exact_state() -> None:
    kv = KVCacheManager(NB, BS, enable_prefix_caching=True)
    a = list(range(100, 114))  # 14 tokens: 3 full blocks + 2
    assert _admit(kv, "a", a) == [0, 1, 2, 3]
    assert _state(kv) == ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10], [0, 1, 2])

    b = a[:8] + [99] * 5  # shares a's first two blocks
    assert kv.prefix_hit("b", b) == [0, 1]
    assert _admit(kv, "b", b) == [0, 1, 4, 5]
    assert kv.request_block_counts("b") == (2, 2, 4)
    assert _state(kv) == ([2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0], [6, 7, 8, 9, 10], [0, 1, 2, 4])

    kv.free("a")  # tail first: 3 then 2 join the queue; 0 and 1 are still b's
    assert _state(kv) == ([1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], [6, 7, 8, 9, 10, 3, 2], [0, 1, 2, 4])

    c = a[:12] + [7]  # hits a's three full blocks; block 2 comes back out of the queue
    assert kv.prefix_hit("c", c) == [0, 1, 2]
    assert _admit(kv, "c", c) == [0, 1, 2, 6]
    assert kv.request_block_counts("c") == (3, 1, 4)
    assert _state(kv) == ([2, 2, 1, 0, 1, 1, 1, 0, 0, 0, 0], [7, 8, 9, 10, 3], [0, 1, 2, 4])

    kv.free("b")
    kv.free("c")
    assert _state(kv) == ([0] * 11, [7, 8, 9, 10, 3, 5, 4, 6, 2, 1, 0], [0, 1, 2, 4])
    kv.assert_all_free()

    # d takes 5 blocks from the front: none of them cached, nothing evicted
    assert _admit(kv, "d", [5] * 20) == [7, 8, 9, 10, 3]
    assert kv.free_queue == [5, 4, 6, 2, 1, 0]
    # e takes 3 more: 5, then 4 (b's cached block: evicted), then 6
    assert kv.allocate("e", 12)
    assert kv.block_table("e") == [5, 4, 6]
    assert kv.block_hash[4] is None and 4 not in kv.cached.values()
    assert kv.free_queue == [2, 1, 0]
    assert kv.prefix_hit("a2", a) == [0, 1, 2]  # a's prefix survived
    assert kv.prefix_hit("b2", b) == [0, 1]  # b's own block went
    assert not kv.allocate("f", 16)  # 4 blocks, 3 free: nothing changes
    assert kv.free_queue == [2, 1, 0] and "f" not in kv.req_blocks
    kv.check_integrity()


def test_free_queue_order_without_reuse() -> None:
    kv = KVCacheManager(NB, BS)
    assert kv.allocate("a", 9) and kv.block_table("a") == [0, 1, 2]
    assert kv.allocate("b", 4) and kv.block_table("b") == [3]
    assert kv.allocate("a", 13) and kv.block_table("a") == [0, 1, 2, 4]
    kv.free("a")
    assert kv.free_queue == [5, 6, 7, 8, 9, 10, 4, 2, 1, 0]
    assert kv.allocate("c", 8) and kv.block_table("c") == [5, 6]
    kv.free("b")
    kv.free("c")
    assert kv.free_queue == [7, 8, 9, 10, 4, 2, 1, 0, 3, 6, 5]
    assert kv.request_block_counts("a") == (0, 4, 4)
    kv.forget("a")
    assert kv.request_block_counts("a") == (0, 0, 0)
    kv.assert_all_free()


def test_block_keys_are_chained_sha256() -> None:
    def ref(parent: bytes | None, tokens: list[int], extra: str = "") -> bytes:
        h = hashlib.sha256(parent or b"\0")
        h.update(struct.pack(f"<{len(tokens)}q", *tokens))
        h.update(extra.encode())
        return h.digest()

    for tokens in ([], [1], [1, 2, 3, 4], list(range(-70, 70)), [2**62, -(2**62)]):
        assert hash_block(None, tokens) == ref(None, tokens)
        assert hash_block(ref(None, [9]), tokens, "lora-7") == ref(ref(None, [9]), tokens, "lora-7")
    kv = KVCacheManager(NB, BS, True)
    _admit(kv, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    k0 = hash_block(None, [1, 2, 3, 4])
    assert kv.cached == {k0: 0, hash_block(k0, [5, 6, 7, 8]): 1}
    assert kv.block_hash[:3] == [k0, hash_block(k0, [5, 6, 7, 8]), None]
    with pytest.raises(ValueError, match="32 bytes"):
        hash_block(b"short", [1])


def test_extra_key_separates_caches() -> None:
    kv = KVCacheManager(NB, BS, True)
    toks = list(range(9))
    assert kv.allocate("a", 9, kv.prefix_hit("a", toks, "adapter-1"))
    kv.cache_full_blocks("a", toks, 9, "adapter-1")
    kv.free("a")
    assert kv.prefix_hit("b", toks, "adapter-2") == []
    assert kv.prefix_hit("c", toks, "adapter-1") == [0, 1]


def test_prefix_hit_leaves_one_token_and_stops_at_a_miss() -> None:
    kv = KVCacheManager(NB, BS, True)
    _admit(kv, "a", list(range(12)) + [0])
    kv.free("a")
    assert kv.prefix_hit("x", list(range(12))) == [0, 1]  # not the last full block
    assert kv.prefix_hit("y", list(range(12)) + [5]) == [0, 1, 2]
    assert kv.prefix_hit("z", [0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11, 0]) == [0]


def test_hit_rate_counts_a_lookup_once_on_admission() -> None:
    kv = KVCacheManager(NB, BS, True)
    a = list(range(13))
    _admit(kv, "a", a)
    kv.free("a")
    for _ in range(3):  # a request blocked at the queue head is looked up every step
        kv.prefix_hit("b", a)
    assert kv.stats().lookup_blocks_total == 3  # a's own admission: 3 blocks looked up
    _admit(kv, "b", a)
    s = kv.stats()
    assert (s.reused_blocks_total, s.lookup_blocks_total) == (3, 6)
    assert s.hit_rate == 0.5


def test_allocate_rejects_a_prefix_that_is_not_the_current_hit() -> None:
    kv = KVCacheManager(NB, BS, True)
    a = list(range(13))
    _admit(kv, "a", a)
    before = _state(kv)
    with pytest.raises(ValueError, match="not this request's cached block"):
        kv.allocate("b", 12, [0, 0])  # repeated id
    assert kv.prefix_hit("c", a) == [0, 1, 2]
    with pytest.raises(ValueError):
        kv.allocate("c", 13, [1, 0, 2])  # out of order
    with pytest.raises(IndexError):
        kv.allocate("c", 13, [0, 1, 99])
    assert _state(kv) == before and "b" not in kv.req_blocks
    kv.free("a")
    kv.reset_prefix_cache()
    with pytest.raises(ValueError):  # evicted since the lookup
        kv.allocate("c", 13, [0, 1, 2])
    assert kv.allocate("c", 13, [])
    with pytest.raises(ValueError, match="first allocation"):
        kv.allocate("c", 16, [0])
    off = KVCacheManager(NB, BS, False)
    with pytest.raises(ValueError, match="disabled"):
        off.allocate("a", 4, [0])
    kv.check_integrity()


def test_cached_blocks_stay_hits_until_handed_out_again() -> None:
    kv = KVCacheManager(5, BS, True)
    x = [1] * 8 + [0]
    _admit(kv, "x", x)  # [0, 1, 2]
    kv.free("x")
    assert kv.free_queue == [3, 4, 2, 1, 0]
    assert kv.allocate("y", 12) and kv.block_table("y") == [3, 4, 2]  # 2 was not cached
    assert kv.prefix_hit("x2", x) == [0, 1]
    assert kv.allocate("z", 4) and kv.block_table("z") == [1]  # evicts x's second block
    assert kv.prefix_hit("x3", x) == [0]
    kv.check_integrity()


def test_reset_prefix_cache_forgets_keys_but_not_tables() -> None:
    kv = KVCacheManager(NB, BS, True)
    a = list(range(9))
    _admit(kv, "a", a)
    kv.reset_prefix_cache()
    assert not kv.cached and kv.block_table("a") == [0, 1, 2]
    kv.cache_full_blocks("a", a, 9)  # the running request's blocks can be cached again
    assert sorted(kv.cached.values()) == [0, 1]
    kv.check_integrity()


@pytest.mark.parametrize(("what", "block", "message"), [
    ("ref_count", 1, "ref counts disagree"),
    ("queue_insert", 0, "block 0: free queue vs ref count"),
    ("queue_unlink", 5, "block 5: free queue vs ref count"),
    ("table_duplicate", 0, "twice in the table of a"),
    ("stale_hash", 6, "cache map"),
])
def test_check_integrity_notices_each_corruption(what: str, block: int, message: str) -> None:
    kv = KVCacheManager(NB, BS, True)
    _admit(kv, "a", list(range(9)))
    _core._testing_corrupt(kv, what, block, "a")
    with pytest.raises(IntegrityError, match=message):
        kv.check_integrity()
    assert issubclass(IntegrityError, AssertionError)


def test_snapshots_are_copies() -> None:
    kv = KVCacheManager(NB, BS)
    kv.allocate("a", 8)
    kv.ref_cnt[0] = 5
    kv.free_queue.clear()
    kv.req_blocks["a"].append(9)
    assert kv.ref_cnt[0] == 1 and len(kv.free_queue) == 9 and kv.block_table("a") == [0, 1]
    kv.check_integrity()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        KVCacheManager(0, 4)
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(4, 0)
    kv = KVCacheManager(NB, BS)
    assert [kv.blocks_needed(n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert kv.block_table("nobody") == [] and kv.request_block_counts("nobody") == (0, 0, 0)
    kv.free("nobody")
    kv.forget("nobody")
    kv.assert_all_free()
