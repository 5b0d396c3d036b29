"""The KV cache manager (the C++ block pool behind inflight.engine.kv_cache): exact state after
every operation in the style of vLLM's test_prefix_caching.py (block size 4, 11 blocks: block
ids, ref counts, free-queue order after frees and evictions), prefix hits and LRU eviction,
the chained SHA-256 block keys, the reuse counters and the integrity checker."""

from __future__ import annotations

import hashlib
import struct

import pytest
from inflight import _core
from inflight.engine.kv_cache import IntegrityError, KVCacheManager, hash_block

BS, NB = 4, 11


def _kv(prefix_caching: bool = False) -> KVCacheManager:
    return KVCacheManager(NB, BS, prefix_caching)


def _free(kv: KVCacheManager) -> list[int]:
    return list(kv.free_queue)


def _run(kv: KVCacheManager, rid: str, tokens: list[int]) -> list[int]:
    """Admit a request the way the scheduler does (prefix hit, allocate, compute, cache)."""
    hit = kv.prefix_hit(rid, tokens)
    assert kv.allocate(rid, len(tokens), hit)
    kv.cache_full_blocks(rid, tokens, len(tokens))
    kv.check_integrity()
    return kv.block_table(rid)


def test_blocks_are_handed_out_in_order() -> None:
    kv = _kv()
    assert kv.allocate("a", 10)  # 3 blocks
    assert kv.block_table("a") == [0, 1, 2]
    assert kv.allocate("b", 4)  # exactly one block
    assert kv.block_table("b") == [3]
    assert kv.allocate("a", 12)  # still 3 blocks
    assert kv.block_table("a") == [0, 1, 2]
    assert kv.allocate("a", 13)  # grows by one
    assert kv.block_table("a") == [0, 1, 2, 4]
    assert kv.ref_cnt == [1, 1, 1, 1, 1] + [0] * 6
    assert _free(kv) == [5, 6, 7, 8, 9, 10]
    assert kv.num_free_blocks == 6
    assert kv.request_block_counts("a") == (0, 4, 4)
    kv.check_integrity()


def test_failed_allocation_changes_nothing() -> None:
    kv = _kv()
    assert kv.allocate("a", 30)  # 8 blocks
    before = (list(kv.ref_cnt), _free(kv), dict(kv.req_blocks))
    assert not kv.allocate("b", 13)  # needs 4, 3 free
    assert not kv.allocate("a", 45)  # needs 12 in all
    assert (list(kv.ref_cnt), _free(kv), dict(kv.req_blocks)) == before
    assert "b" not in kv.req_blocks
    assert kv.allocate("b", 12)  # exactly the 3 left
    assert kv.num_free_blocks == 0
    kv.check_integrity()


def test_free_returns_tail_blocks_first() -> None:
    kv = _kv()
    kv.allocate("a", 12)  # [0, 1, 2]
    kv.allocate("b", 8)  # [3, 4]
    kv.allocate("a", 16)  # [0, 1, 2, 5]
    kv.free("a")
    # appended tail-first: a's last block is evicted before its first
    assert _free(kv) == [6, 7, 8, 9, 10, 5, 2, 1, 0]
    assert kv.ref_cnt == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    kv.free("b")
    assert _free(kv) == [6, 7, 8, 9, 10, 5, 2, 1, 0, 4, 3]
    kv.assert_all_free()
    assert kv.allocate("c", 8)
    assert kv.block_table("c") == [6, 7]  # the front of the queue
    kv.free("c")
    kv.free("unknown")  # a no-op
    kv.assert_all_free()


def test_shared_prefix_ref_counts() -> None:
    kv = _kv(prefix_caching=True)
    a = list(range(100, 110))  # 2 full blocks + 2 tokens
    assert _run(kv, "a", a) == [0, 1, 2]
    assert len(kv.cached) == 2 and kv.block_hash[2] is None  # the partial block is not cached
    b = a[:8] + [7, 7, 7]  # same 2 full blocks, different tail
    assert kv.prefix_hit("b", b) == [0, 1]
    assert _run(kv, "b", b) == [0, 1, 3]
    assert kv.ref_cnt[:4] == [2, 2, 1, 1]
    assert kv.request_block_counts("b") == (2, 1, 3)
    kv.free("a")
    assert kv.ref_cnt[:4] == [1, 1, 0, 1]
    assert _free(kv) == [4, 5, 6, 7, 8, 9, 10, 2]
    kv.free("b")
    assert _free(kv) == [4, 5, 6, 7, 8, 9, 10, 2, 3, 1, 0]
    kv.assert_all_free()


def test_prefix_hit_after_the_request_ended_reuses_its_blocks() -> None:
    kv = _kv(prefix_caching=True)
    a = list(range(200, 213))  # 3 full blocks + 1
    assert _run(kv, "a", a) == [0, 1, 2, 3]
    kv.free("a")
    assert _free(kv) == [4, 5, 6, 7, 8, 9, 10, 3, 2, 1, 0]
    assert kv.prefix_hit("b", a) == [0, 1, 2]
    assert _run(kv, "b", a) == [0, 1, 2, 4]  # reused prefix, a fresh block for the tail
    assert _free(kv) == [5, 6, 7, 8, 9, 10, 3]
    assert kv.ref_cnt[:5] == [1, 1, 1, 0, 1]
    stats = kv.stats()
    assert (stats.reused_blocks_total, stats.used_blocks, stats.cached_blocks) == (3, 4, 3)
    kv.free("b")
    kv.assert_all_free()






def test_cached_blocks_are_evicted_in_lru_order() -> None:
    kv = _kv(prefix_caching=True)
    x = [10] * 8 + [0]
    y = [20] * 8 + [0]
    z = [30] * 8 + [0]
    assert _run(kv, "x", x) == [0, 1, 2]
    assert _run(kv, "y", y) == [3, 4, 5]
    kv.free("x")  # free queue: 6..10, then x's blocks tail-first
    kv.free("y")
    assert _free(kv) == [6, 7, 8, 9, 10, 2, 1, 0, 5, 4, 3]
    assert len(kv.cached) == 4  # two full blocks each
    # z needs 3 blocks: taken from the never-used ones first, nothing cached is evicted
    assert _run(kv, "z", z) == [6, 7, 8]
    assert len(kv.cached) == 6
    kv.free("z")
    assert _free(kv) == [9, 10, 2, 1, 0, 5, 4, 3, 8, 7, 6]
    # 7 blocks: 9, 10, 2 (x's tail, uncached), then x's cached blocks 1, 0 and y's tail 5, 4
    assert kv.allocate("big", 28)
    assert kv.block_table("big") == [9, 10, 2, 1, 0, 5, 4]
    assert kv.prefix_hit("x2", x) == []  # x was least recently used: evicted
    assert kv.prefix_hit("y2", y) == [3]  # y's second block went, its first is still there
    assert kv.prefix_hit("z2", z) == [6, 7]  # z was used last: fully cached
    assert all(kv.block_hash[b] is None for b in kv.block_table("big"))
    kv.check_integrity()
    kv.free("big")
    for rid in ("x2", "y2", "z2"):
        kv.free(rid)
    kv.assert_all_free()




def test_prefix_caching_disabled_never_hits() -> None:
    kv = _kv(prefix_caching=False)
    a = list(range(20))
    _run(kv, "a", a)
    kv.free("a")
    assert kv.prefix_hit("b", a) == [] and not kv.cached




def test_bad_prefix_blocks_are_rejected_and_change_nothing() -> None:
    kv = _kv(prefix_caching=True)
    a = list(range(9))
    _run(kv, "a", a)  # blocks 0, 1 cached, 2 partial
    state = (kv.ref_cnt, kv.free_queue, kv.req_blocks)
    kv.prefix_hit("b", a)
    bad: list[list[int]] = [[0, 0], [1, 0], [2], [0, 1, 2], [99], [-1]]
    for prefix in bad:
        with pytest.raises((ValueError, IndexError)):
            kv.allocate("b", 12, prefix)
        assert (kv.ref_cnt, kv.free_queue, kv.req_blocks) == state, prefix
        kv.check_integrity()
    assert kv.allocate("b", 12, [0, 1])  # the real hit is accepted
    with pytest.raises(ValueError):  # prefixes only on a request's first allocation
        kv.allocate("b", 16, [0])
    with pytest.raises(ValueError):  # and only with prefix caching on
        _kv(prefix_caching=False).allocate("c", 4, [0])
    kv.check_integrity()


def test_assert_all_free_detects_a_holder() -> None:
    kv = _kv()
    kv.allocate("a", 1)
    with pytest.raises(AssertionError, match="still hold"):
        kv.assert_all_free()
    kv.free("a")
    kv.assert_all_free()


def test_blocks_needed_and_bad_sizes() -> None:
    kv = _kv()
    assert [kv.blocks_needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="num_blocks"):
        KVCacheManager(0, 4)



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
