#include "inflight/kv_cache_manager.h"

#include <algorithm>

namespace inflight {

KVCacheManager::KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching), pool_(num_blocks) {
  if (block_size < 1) throw std::invalid_argument("block_size must be >= 1, got " + std::to_string(block_size));
}

// ---- entries ----------------------------------------------------------------------------

SeqBlocks* KVCacheManager::find(const std::string& id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

const SeqBlocks* KVCacheManager::find(const std::string& id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

SeqBlocks& KVCacheManager::pin(const std::string& id) {
  SeqBlocks& s = seqs_[id];
  ++s.pins;
  return s;
}

void KVCacheManager::unpin(const std::string& id) {
  SeqBlocks* s = find(id);
  if (s == nullptr || s->pins == 0) throw std::invalid_argument("unpin of an unpinned request " + id);
  --s->pins;
  maybe_erase(id);
}

void KVCacheManager::maybe_erase(const std::string& id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  const SeqBlocks& s = it->second;
  if (s.pins == 0 && !s.allocated && !s.has_counts && s.hashes.empty()) seqs_.erase(it);
}

// ---- per entry ----------------------------------------------------------------------------

const Digest& KVCacheManager::hash_at(SeqBlocks& s, Span<const Token> tokens, size_t i,
                                      std::string_view extra) {
  // hashes are a chain: compute every missing one up to block i
  while (s.hashes.size() <= i) {
    size_t j = s.hashes.size();
    const Digest* parent = j == 0 ? nullptr : &s.hashes[j - 1];
    Span<const Token> block(tokens.data() + j * block_size_, static_cast<size_t>(block_size_));
    s.hashes.push_back(hash_block(parent, block, extra));
  }
  return s.hashes[i];
}

void KVCacheManager::match_prefix(SeqBlocks& s, Span<const Token> tokens, std::string_view extra,
                                  std::vector<BlockId>& out) {
  out.clear();
  if (!prefix_caching_ || tokens.size() == 0) return;
  size_t limit = (tokens.size() - 1) / block_size_;
  for (size_t i = 0; i < limit; ++i) {
    auto b = pool_.lookup(hash_at(s, tokens, i, extra));
    if (!b) break;
    out.push_back(*b);
  }
  s.pending_lookup = static_cast<int32_t>(limit);
}

int32_t KVCacheManager::num_evictable(Span<const BlockId> prefix) const {
  int32_t n = 0;
  for (BlockId b : prefix) n += pool_.ref_count(b) == 0 ? 1 : 0;
  return n;
}

void KVCacheManager::validate_prefix(const SeqBlocks& s, Span<const BlockId> prefix) const {
  if (prefix.empty()) return;
  if (!prefix_caching_) throw std::invalid_argument("prefix blocks given but prefix caching is disabled");
  if (!s.table.empty()) {
    throw std::invalid_argument("prefix blocks can only be given to a request's first allocation");
  }
  // Block i of the prefix must hold the key of this request's block i right now: that rules
  // out repeated ids (chained keys differ per position) and hits evicted since the lookup.
  for (size_t i = 0; i < prefix.size(); ++i) {
    BlockId b = prefix[i];
    if (b < 0 || b >= num_blocks()) throw std::out_of_range("prefix block id out of range: " + std::to_string(b));
    const Digest* h = pool_.hash(b);
    if (i >= s.hashes.size() || h == nullptr || *h != s.hashes[i]) {
      throw std::invalid_argument("prefix block " + std::to_string(b) + " at position " + std::to_string(i) +
                                  " is not this request's cached block there (pass prefix_hit()'s result, "
                                  "before any other allocation)");
    }
  }
}

bool KVCacheManager::allocate(SeqBlocks& s, int64_t num_tokens, Span<const BlockId> prefix) {
  validate_prefix(s, prefix);
  int64_t need = blocks_needed(num_tokens) - static_cast<int64_t>(s.table.size() + prefix.size());
  if (need > pool_.num_free() - num_evictable(prefix)) return false;
  if (!s.allocated) {  // first allocation (again, after a preemption)
    s.allocated = true;
    s.has_counts = true;
    s.reused = static_cast<int32_t>(prefix.size());
    s.num_offered = static_cast<int32_t>(prefix.size());  // hits are cached already
    counters_.reused_blocks_total += static_cast<int64_t>(prefix.size());
    counters_.lookup_blocks_total += s.pending_lookup;
    s.pending_lookup = 0;
  }
  for (BlockId b : prefix) {
    pool_.acquire(b);
    s.table.push_back(b);
  }
  for (int64_t i = 0; i < need; ++i) s.table.push_back(pool_.pop_free());
  s.fresh += static_cast<int32_t>(std::max<int64_t>(need, 0));
  return true;
}

void KVCacheManager::free(SeqBlocks& s) {
  for (auto it = s.table.rbegin(); it != s.table.rend(); ++it) pool_.release(*it);
  s.table.clear();
  s.allocated = false;
  s.hashes.clear();
  s.num_offered = 0;
  s.pending_lookup = 0;
}

void KVCacheManager::cache_full_blocks(SeqBlocks& s, Span<const Token> tokens, int64_t num_computed,
                                       std::string_view extra) {
  if (!prefix_caching_) return;
  int64_t computed = std::min<int64_t>(num_computed, static_cast<int64_t>(tokens.size()));
  auto full = static_cast<int32_t>(std::min<int64_t>(computed / block_size_, static_cast<int64_t>(s.table.size())));
  for (int32_t i = s.num_offered; i < full; ++i) pool_.cache(s.table[i], hash_at(s, tokens, i, extra));
  s.num_offered = std::max(s.num_offered, full);
}

// ---- by id --------------------------------------------------------------------------------

std::vector<BlockId> KVCacheManager::prefix_hit(const std::string& id, Span<const Token> tokens,
                                                std::string_view extra) {
  std::vector<BlockId> out;
  if (!prefix_caching_) return out;
  match_prefix(seqs_[id], tokens, extra, out);
  maybe_erase(id);
  return out;
}

bool KVCacheManager::allocate(const std::string& id, int64_t num_tokens, Span<const BlockId> prefix) {
  SeqBlocks& s = seqs_[id];
  try {
    validate_prefix(s, prefix);
  } catch (...) {
    maybe_erase(id);  // a rejected call leaves no entry behind
    throw;
  }
  bool ok = allocate(s, num_tokens, prefix);
  maybe_erase(id);
  return ok;
}

void KVCacheManager::free(const std::string& id) {
  if (SeqBlocks* s = find(id)) {
    free(*s);
    maybe_erase(id);
  }
}

void KVCacheManager::cache_full_blocks(const std::string& id, Span<const Token> tokens,
                                       int64_t num_computed, std::string_view extra) {
  if (SeqBlocks* s = find(id); s != nullptr && s->allocated) cache_full_blocks(*s, tokens, num_computed, extra);
}

void KVCacheManager::forget(const std::string& id) {
  if (SeqBlocks* s = find(id)) {
    s->has_counts = false;
    s->reused = s->fresh = 0;
    maybe_erase(id);
  }
}

std::vector<BlockId> KVCacheManager::block_table(const std::string& id) const {
  const SeqBlocks* s = find(id);
  return s == nullptr ? std::vector<BlockId>{} : s->table;
}

std::tuple<int32_t, int32_t, int32_t> KVCacheManager::request_block_counts(const std::string& id) const {
  const SeqBlocks* s = find(id);
  if (s == nullptr) return {0, 0, 0};
  return {s->reused, s->fresh, s->reused + s->fresh};
}

std::vector<std::pair<std::string, std::vector<BlockId>>> KVCacheManager::tables() const {
  std::vector<std::pair<std::string, std::vector<BlockId>>> out;
  for (const auto& kv : seqs_) {
    if (kv.second.allocated) out.emplace_back(kv.first, kv.second.table);
  }
  return out;
}

void KVCacheManager::reset_prefix_cache() {
  pool_.reset_prefix_cache();
  for (auto& kv : seqs_) kv.second.num_offered = 0;  // their full blocks may be cached again
}

void KVCacheManager::check_integrity() const {
  pool_.check_integrity();
  std::vector<int32_t> refs(pool_.num_blocks(), 0);
  std::vector<int64_t> seen(pool_.num_blocks(), -1);
  int64_t table_no = 0;
  for (const auto& kv : seqs_) {
    const SeqBlocks& s = kv.second;
    check(s.allocated || s.table.empty(),
          [&] { return "request " + kv.first + " holds blocks without a table"; });
    for (BlockId b : s.table) {
      check(b >= 0 && b < pool_.num_blocks(),
            [&] { return "request " + kv.first + " holds an invalid block id"; });
      check(seen[b] != table_no,
            [&] { return "block " + std::to_string(b) + " appears twice in the table of " + kv.first; });
      seen[b] = table_no;
      ++refs[b];
    }
    check(s.num_offered <= static_cast<int32_t>(s.table.size()) || !s.allocated,
          [&] { return "request " + kv.first + ": more blocks offered to the cache than it holds"; });
    ++table_no;
  }
  for (BlockId b = 0; b < pool_.num_blocks(); ++b) {
    check(refs[b] == pool_.ref_count(b),
          [&] { return "ref counts disagree with block tables: block " + std::to_string(b) +
                                             " has ref count " + std::to_string(pool_.ref_count(b)) +
                                             " but is held by " + std::to_string(refs[b]) + " table(s)"; });
  }
}

}  // namespace inflight
