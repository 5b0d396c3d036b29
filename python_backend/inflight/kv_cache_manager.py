"""Paged KV cache bookkeeping: a ref-counted block pool with optional prefix reuse.

The scheduler talks to it through five calls (`prefix_hit`, `allocate`, `free`,
`block_table`, `num_free_blocks`); the C++ core replaces this module behind the same calls.

Free blocks sit in one queue in eviction order (front = evicted first). A freed request's
blocks go to the back tail-first, so its last blocks are evicted before its prefix. A full
block keeps its hash while free; it is a prefix-cache hit until it is handed out again.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass

from .config import blocks_for

BlockHash = bytes


def hash_block(parent: BlockHash | None, tokens: list[int] | tuple[int, ...], extra: str = "") -> BlockHash:
    """Collision-resistant key: sha256 over the parent's key, the block's tokens and an
    extra key (adapter id or anything else that changes the KV)."""
    h = hashlib.sha256(parent or b"\0")
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    h.update(extra.encode())
    return h.digest()


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


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[BlockHash, int] = {}
        self.req_blocks: dict[str, list[int]] = {}
        self.req_hashes: dict[str, list[BlockHash]] = {}
        self.req_new_blocks: dict[str, int] = {}  # blocks freshly allocated (not reused)
        self.req_reused_blocks: dict[str, int] = {}
        self._reused_total = 0
        self._lookup_total = 0

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def block_table(self, req_id: str) -> list[int]:
        return self.req_blocks.get(req_id, [])

    def blocks_needed(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.block_size)

    def request_block_counts(self, req_id: str) -> tuple[int, int, int]:
        """(reused, newly allocated, total) blocks of a request: the Triton kv-reuse outputs."""
        reused = self.req_reused_blocks.get(req_id, 0)
        new = self.req_new_blocks.get(req_id, 0)
        return reused, new, reused + new

    def stats(self) -> KVStats:
        return KVStats(self.num_blocks, len(self.free_queue), self.num_blocks - len(self.free_queue),
                       len(self.cached), self._reused_total, self._lookup_total)

    # ---- prefix reuse --------------------------------------------------------------------
    def _hashes(self, req_id: str, token_ids: list[int], extra: str) -> list[BlockHash]:
        hashes = self.req_hashes.setdefault(req_id, [])
        bs = self.block_size
        for i in range(len(hashes), len(token_ids) // bs):
            hashes.append(hash_block(hashes[-1] if hashes else None, token_ids[i * bs:(i + 1) * bs], extra))
        return hashes

    def prefix_hit(self, req_id: str, token_ids: list[int], extra: str = "") -> list[int]:
        """Cached blocks for the longest cached prefix of token_ids. At least one token is
        always left to compute (its logits are needed)."""
        if not self.enable_prefix_caching:
            return []
        hashes = self._hashes(req_id, token_ids, extra)
        limit = (len(token_ids) - 1) // self.block_size
        hit: list[int] = []
        for h in hashes[:limit]:
            b = self.cached.get(h)
            if b is None:
                break
            hit.append(b)
        self._lookup_total += limit
        return hit

    def cache_full_blocks(self, req_id: str, token_ids: list[int], num_computed: int, extra: str = "") -> None:
        """Register the request's blocks that are full of computed tokens for reuse."""
        if not self.enable_prefix_caching:
            return
        blocks = self.req_blocks.get(req_id, [])
        hashes = self._hashes(req_id, token_ids[:num_computed], extra)
        for i in range(min(len(hashes), len(blocks))):
            b = blocks[i]
            if self.block_hash[b] is None and hashes[i] not in self.cached:
                self.block_hash[b] = hashes[i]
                self.cached[hashes[i]] = b

    # ---- allocation ----------------------------------------------------------------------
    def allocate(self, req_id: str, num_tokens: int, prefix_blocks: list[int] | None = None) -> bool:
        """Make the request's table hold ``num_tokens`` tokens in all; ``prefix_blocks`` (from
        prefix_hit, first allocation only) are shared. Returns False, changing nothing, when
        the free pool is too small."""
        table = self.req_blocks.get(req_id, [])
        prefix = prefix_blocks or []
        need = blocks_for(num_tokens, self.block_size) - len(table) - len(prefix)
        # prefix blocks that sit in the free queue leave it when touched
        evictable_hits = sum(1 for b in prefix if self.ref_cnt[b] == 0)
        if need > len(self.free_queue) - evictable_hits:
            return False
        if req_id not in self.req_blocks:
            self.req_blocks[req_id] = table
            self.req_reused_blocks[req_id] = len(prefix)
            self._reused_total += len(prefix)
        for b in prefix:
            if self.ref_cnt[b] == 0:
                del self.free_queue[b]
            self.ref_cnt[b] += 1
            table.append(b)
        for _ in range(max(need, 0)):
            b, _v = self.free_queue.popitem(last=False)
            if self.block_hash[b] is not None:  # evict its cached content
                del self.cached[self.block_hash[b]]  # type: ignore[arg-type]
                self.block_hash[b] = None
            self.ref_cnt[b] = 1
            table.append(b)
        self.req_new_blocks[req_id] = self.req_new_blocks.get(req_id, 0) + max(need, 0)
        return True

    def free(self, req_id: str) -> None:
        """Drop the request's references; unreferenced blocks join the free queue tail-first."""
        table = self.req_blocks.pop(req_id, [])
        self.req_hashes.pop(req_id, None)
        for b in reversed(table):
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.free_queue[b] = None

    def forget(self, req_id: str) -> None:
        """Drop per-request counters once the request's outputs are reported."""
        self.req_new_blocks.pop(req_id, None)
        self.req_reused_blocks.pop(req_id, None)

    def reset_prefix_cache(self) -> None:
        for h, b in list(self.cached.items()):
            self.block_hash[b] = None
            del self.cached[h]

    # ---- invariants ----------------------------------------------------------------------
    def check_integrity(self) -> None:
        """Raise AssertionError on any inconsistency between tables, ref counts and queues."""
        counts = [0] * self.num_blocks
        for table in self.req_blocks.values():
            assert len(set(table)) == len(table), "a block appears twice in one table"
            for b in table:
                counts[b] += 1
        assert counts == self.ref_cnt, "ref counts disagree with block tables"
        free = set(self.free_queue)
        for b in range(self.num_blocks):
            assert (self.ref_cnt[b] == 0) == (b in free), f"block {b}: free queue vs ref count"
        for h, b in self.cached.items():
            assert self.block_hash[b] == h, f"block {b}: cache map vs block hash"
        assert sum(1 for h in self.block_hash if h is not None) == len(self.cached)

    def assert_all_free(self) -> None:
        """Idle invariant: no request holds a block (cached blocks count as free)."""
        self.check_integrity()
        assert not self.req_blocks, f"requests still hold blocks: {list(self.req_blocks)}"
        assert len(self.free_queue) == self.num_blocks, "blocks leaked"
