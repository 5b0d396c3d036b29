// Test-only hooks: break a KV manager's state on purpose, to check that check_integrity()
// notices. Not used by the engine; a friend of the classes, so their API stays clean.
#pragma once

#include <string>

#include "inflight/kv_cache_manager.h"

namespace inflight::testing {

enum class Corruption {
  kRefCount,        // one more reference on `block` than its tables hold
  kQueueInsert,     // `block` (in use) also appended to the free queue
  kQueueUnlink,     // `block` (free) taken out of the free queue, ref count left at 0
  kTableDuplicate,  // `block` appended once more to the table of request `id`
  kStaleHash,       // `block` marked as cached under a key the cache map does not know
};

void corrupt(KVCacheManager& kv, Corruption what, BlockId block, const std::string& id = "");

}  // namespace inflight::testing
