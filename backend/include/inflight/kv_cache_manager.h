// Paged KV cache bookkeeping per request on top of the BlockPool: block tables, prefix reuse
// (longest cached prefix of full blocks, keyed by chained SHA-256), per-request reuse counts.
//
// Requests are keyed by their string id (the Python API and the Triton outputs speak ids).
// The scheduler pins an entry for the request's lifetime and keeps a reference to it, so its
// per-step calls skip the id lookup; std::unordered_map never moves its elements, and a
// pinned entry is never erased, so the reference stays valid.
#pragma once

#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inflight/block_pool.h"
#include "inflight/common.h"
#include "inflight/sha256.h"

namespace inflight {

struct SeqBlocks {
  std::vector<BlockId> table;
  bool allocated = false;      // holds a table: allocate() since the last free()
  std::vector<Digest> hashes;  // chained keys of the full blocks, computed lazily
  int32_t num_offered = 0;     // leading table blocks already offered to the prefix cache
  int32_t pending_lookup = 0;  // full blocks covered by the last prefix lookup (hit-rate base)
  int32_t reused = 0;          // Triton kv_cache_reused_blocks
  int32_t fresh = 0;           // Triton kv_cache_alloc_new_blocks (accumulates over preemptions)
  bool has_counts = false;     // reused/fresh are reported until forget()
  int32_t pins = 0;            // > 0 while the scheduler holds the request
};

struct KVCounters {
  int64_t reused_blocks_total = 0;
  int64_t lookup_blocks_total = 0;
};

class KVCacheManager {
 public:
  KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t num_blocks() const { return pool_.num_blocks(); }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int32_t num_free_blocks() const { return pool_.num_free(); }
  int64_t blocks_needed(int64_t num_tokens) const { return blocks_for(num_tokens, block_size_); }
  const BlockPool& pool() const { return pool_; }
  const KVCounters& counters() const { return counters_; }

  // ---- entries ----
  SeqBlocks* find(const std::string& id);
  const SeqBlocks* find(const std::string& id) const;
  SeqBlocks& pin(const std::string& id);
  void unpin(const std::string& id);

  // ---- per entry (the scheduler's hot path) ----
  // Cached blocks of the longest cached prefix of `tokens`; at least one token is always left
  // to compute (its logits are needed). Records the lookup for the hit rate, counted once the
  // request's first allocation succeeds (a request blocked at the queue head is looked up
  // every step, but counts once).
  void match_prefix(SeqBlocks& s, Span<const Token> tokens, std::string_view extra,
                    std::vector<BlockId>& out);
  // Grow the table to hold num_tokens tokens in all; `prefix` (from match_prefix, first
  // allocation only) is shared. False, changing nothing, when the pool is too small;
  // std::invalid_argument for a prefix that is not this request's current hit.
  bool allocate(SeqBlocks& s, int64_t num_tokens, Span<const BlockId> prefix);
  // Drop the table's references; unreferenced blocks join the free queue tail first, so the
  // request's last blocks are evicted before its prefix.
  void free(SeqBlocks& s);
  // Offer the blocks full of computed tokens to the prefix cache (incremental).
  void cache_full_blocks(SeqBlocks& s, Span<const Token> tokens, int64_t num_computed,
                         std::string_view extra);
  // Blocks of `prefix` that sit in the free queue (a hit on them takes them out of it).
  int32_t num_evictable(Span<const BlockId> prefix) const;

  // ---- by id (the Python API) ----
  std::vector<BlockId> prefix_hit(const std::string& id, Span<const Token> tokens, std::string_view extra);
  bool allocate(const std::string& id, int64_t num_tokens, Span<const BlockId> prefix);
  void free(const std::string& id);
  void cache_full_blocks(const std::string& id, Span<const Token> tokens, int64_t num_computed,
                         std::string_view extra);
  void forget(const std::string& id);  // drop the reuse counts once they are reported
  std::vector<BlockId> block_table(const std::string& id) const;
  std::tuple<int32_t, int32_t, int32_t> request_block_counts(const std::string& id) const;
  std::vector<std::pair<std::string, std::vector<BlockId>>> tables() const;  // allocated ones

  void reset_prefix_cache();
  // Pool invariants plus: every table's blocks are distinct, ref counts equal the number of
  // tables holding each block, unallocated entries hold nothing. Raises IntegrityError.
  void check_integrity() const;

 private:
  friend void testing::corrupt(KVCacheManager&, testing::Corruption, BlockId, const std::string&);
  void validate_prefix(const SeqBlocks& s, Span<const BlockId> prefix) const;
  const Digest& hash_at(SeqBlocks& s, Span<const Token> tokens, size_t i, std::string_view extra);
  void maybe_erase(const std::string& id);

  int32_t block_size_;
  bool prefix_caching_;
  BlockPool pool_;
  KVCounters counters_;
  std::unordered_map<std::string, SeqBlocks> seqs_;
};

}  // namespace inflight
