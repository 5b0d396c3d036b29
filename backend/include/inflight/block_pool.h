// The physical KV block pool: ref counts, the free queue in eviction order, and the map of
// cached (hashed) blocks that prefix reuse looks up.
//
// Free queue: an intrusive doubly linked list over block ids (prev/next arrays, a sentinel
// at index num_blocks), so a prefix hit can take a cached block out of the middle in O(1)
// and the queue never allocates. Front = evicted first. A block with ref count 0 is in the
// queue, always; a free block keeps its hash (stays a cache hit) until it is handed out
// again, which is the moment it is evicted.
#pragma once

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "inflight/common.h"
#include "inflight/sha256.h"

namespace inflight {

class KVCacheManager;
namespace testing {
enum class Corruption;
void corrupt(KVCacheManager& kv, Corruption what, BlockId block, const std::string& id);
}  // namespace testing

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t num_free() const { return num_free_; }
  int32_t ref_count(BlockId b) const { return ref_.at(b); }
  const Digest* hash(BlockId b) const { return hashed_.at(b) ? &hash_[b] : nullptr; }
  size_t num_cached() const { return cached_.size(); }

  // Front of the free queue, evicting its cached content; returned with ref count 1.
  // Precondition: num_free() > 0.
  BlockId pop_free();
  // One more reference to b; a free b (a cached prefix block) leaves the queue.
  void acquire(BlockId b);
  // One reference less; at zero, b joins the back of the free queue.
  void release(BlockId b);

  std::optional<BlockId> lookup(const Digest& h) const;
  // Registers b's content under h unless b already has a hash or h maps to another block
  // (two requests computed the same prefix concurrently: the first one stays canonical).
  bool cache(BlockId b, const Digest& h);
  void reset_prefix_cache();

  std::vector<BlockId> free_queue() const;  // eviction order, front first
  std::vector<std::pair<Digest, BlockId>> cached_blocks() const;
  // Queue links vs ref counts vs hash map; raises IntegrityError.
  void check_integrity() const;

 private:
  friend void testing::corrupt(KVCacheManager&, testing::Corruption, BlockId, const std::string&);
  void unlink(BlockId b);
  void push_back(BlockId b);

  int32_t num_blocks_;
  int32_t num_free_ = 0;
  std::vector<BlockId> prev_, next_;  // size num_blocks + 1; index num_blocks is the sentinel
  std::vector<int32_t> ref_;
  std::vector<Digest> hash_;
  std::vector<bool> hashed_;
  std::unordered_map<Digest, BlockId, DigestHasher> cached_;
};

}  // namespace inflight
