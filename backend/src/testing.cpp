#include "inflight/testing.h"

namespace inflight::testing {

void corrupt(KVCacheManager& kv, Corruption what, BlockId block, const std::string& id) {
  BlockPool& pool = kv.pool_;
  switch (what) {
    case Corruption::kRefCount:
      ++pool.ref_.at(block);
      break;
    case Corruption::kQueueInsert:
      pool.push_back(block);
      break;
    case Corruption::kQueueUnlink:
      pool.unlink(block);
      break;
    case Corruption::kTableDuplicate: {
      SeqBlocks* s = kv.find(id);
      if (s == nullptr) throw std::invalid_argument("unknown request " + id);
      s->table.push_back(block);
      break;
    }
    case Corruption::kStaleHash:
      pool.hashed_.at(block) = true;
      pool.hash_[block].fill(0xAB);
      break;
  }
}

}  // namespace inflight::testing
