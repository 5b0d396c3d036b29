"""Paged KV cache bookkeeping: a ref-counted block pool with optional prefix reuse.

The algorithms live in the C++ core (``backend/src/block_pool.cpp``,
``backend/src/kv_cache_manager.cpp``, exposed as ``inflight._core``); this module gives them
their Python name and the few conveniences built on top.

Free blocks sit in one queue in eviction order (front = evicted first). A freed request's
blocks go to the back tail-first, so its last blocks are evicted before its prefix. A full
block keeps its key while free; it is a prefix-cache hit until it is handed out again.
Keys are SHA-256 chained over the parent block's key, the block's token ids and an extra key
(adapter id or anything else that changes the KV); see :func:`hash_block`.

The API of the pure-Python manager it replaces is unchanged (``prefix_hit``, ``allocate``,
``free``, ``forget``, ``block_table``, ``cache_full_blocks``, ``request_block_counts``,
``num_free_blocks``, ``check_integrity``), and ``ref_cnt``, ``free_queue`` (in eviction
order), ``block_hash``, ``cached`` and ``req_blocks`` are read-only snapshots for tests.
One difference: the hit rate counts a request's prefix lookup once, when its first
allocation succeeds, not on every ``prefix_hit`` call (a request blocked at the head of the
queue is looked up every step).
"""

from __future__ import annotations

from dataclasses import dataclass

from inflight import _core

BlockHash = bytes
IntegrityError = _core.IntegrityError  # an AssertionError
hash_block = _core.hash_block


@dataclass
class KVStats:
    total_blocks: int
    free_blocks: int  # includes cached-but-unreferenced blocks
    used_blocks: int
    cached_blocks: int  # blocks holding a reusable hash (free or in use)
    reused_blocks_total: int
    lookup_blocks_total: int

    @property
    def hit_rate(self) -> float:
        return self.reused_blocks_total / self.lookup_blocks_total if self.lookup_blocks_total else 0.0


class KVCacheManager(_core.KVCacheManager):
    """``KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)``.

    Block ids are handed out in order from the free queue; a request's blocks are
    ``block_table(req_id)``; ``allocate`` returns False, changing nothing, when the pool is
    too small; ``check_integrity`` raises :class:`IntegrityError` on any inconsistency.
    """

    def stats(self) -> KVStats:
        cached, reused, lookups = self._counters()
        free = self.num_free_blocks
        return KVStats(self.num_blocks, free, self.num_blocks - free, cached, reused, lookups)

    def assert_all_free(self) -> None:
        """Idle invariant: no request holds a block (cached blocks count as free)."""
        self.check_integrity()
        held = self.req_blocks
        assert not held, f"requests still hold blocks: {list(held)}"
        assert self.num_free_blocks == self.num_blocks, "blocks leaked"


__all__ = ["BlockHash", "IntegrityError", "KVCacheManager", "KVStats", "hash_block"]
