"""KVCacheManager exact state: block ids, ref counts, free-queue order, prefix hits, LRU
eviction and the integrity checker (block size 4, 11 blocks)."""

from __future__ import annotations

import pytest
from inflight.engine.kv_cache import KVCacheManager, hash_block

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


def test_prefix_hit_always_leaves_a_token_to_compute() -> None:
    kv = _kv(prefix_caching=True)
    a = list(range(8))  # exactly 2 full blocks
    _run(kv, "a", a)
    kv.free("a")
    assert kv.prefix_hit("b", a) == [0]  # the last block holds the token whose logits we need
    assert kv.prefix_hit("c", a + [9]) == [0, 1]
    assert kv.prefix_hit("d", [0, 1, 2, 3, 9, 9, 9, 9, 9]) == [0]  # diverges in block 2
    assert kv.prefix_hit("e", [5, 1, 2, 3, 4, 5, 6, 7, 8]) == []


def test_hashes_chain_on_the_parent() -> None:
    kv = _kv(prefix_caching=True)
    _run(kv, "a", [1, 1, 1, 1, 2, 2, 2, 2, 0])
    kv.free("a")
    # block 2 alone matches a's second block, but its parent differs: no hit
    assert kv.prefix_hit("b", [3, 3, 3, 3, 2, 2, 2, 2, 0]) == []
    assert hash_block(None, [2, 2, 2, 2]) != hash_block(hash_block(None, [1, 1, 1, 1]), [2, 2, 2, 2])
    assert hash_block(None, [1, 2]) != hash_block(None, [1, 2], extra="lora-1")


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


def test_reset_prefix_cache() -> None:
    kv = _kv(prefix_caching=True)
    a = list(range(9))
    _run(kv, "a", a)
    kv.free("a")
    kv.reset_prefix_cache()
    assert kv.prefix_hit("b", a) == [] and not kv.cached
    kv.assert_all_free()


def test_prefix_caching_disabled_never_hits() -> None:
    kv = _kv(prefix_caching=False)
    a = list(range(20))
    _run(kv, "a", a)
    kv.free("a")
    assert kv.prefix_hit("b", a) == [] and not kv.cached


def test_snapshots_cannot_corrupt_the_pool() -> None:
    # The pool lives in the C++ core; ref_cnt, free_queue and req_blocks are copies.
    kv = _kv()
    kv.allocate("a", 8)
    kv.ref_cnt[1] += 1
    kv.free_queue.append(0)
    kv.req_blocks["a"].append(0)
    assert kv.ref_cnt[:3] == [1, 1, 0] and kv.block_table("a") == [0, 1]
    kv.check_integrity()


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
