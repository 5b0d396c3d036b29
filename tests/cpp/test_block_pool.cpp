// BlockPool: free-queue order, ref counts, cache keys and eviction, the integrity checker.
#include "check.h"
#include "inflight/block_pool.h"
#include "inflight/kv_cache_manager.h"
#include "inflight/testing.h"

using namespace inflight;

namespace {

Digest key(int i) {
  std::vector<Token> t = {i};
  return hash_block(nullptr, t, "");
}

}  // namespace

TEST(hands_out_in_order_and_frees_to_the_back) {
  BlockPool p(5);
  CHECK_EQ(p.free_queue(), (std::vector<BlockId>{0, 1, 2, 3, 4}));
  CHECK_EQ(p.pop_free(), 0);
  CHECK_EQ(p.pop_free(), 1);
  CHECK_EQ(p.num_free(), 3);
  p.release(0);
  CHECK_EQ(p.free_queue(), (std::vector<BlockId>{2, 3, 4, 0}));
  p.acquire(1);  // shared
  p.release(1);
  CHECK_EQ(p.ref_count(1), 1);
  p.release(1);
  CHECK_EQ(p.free_queue(), (std::vector<BlockId>{2, 3, 4, 0, 1}));
  p.check_integrity();
  CHECK_THROWS(p.release(1), IntegrityError);
}

TEST(cached_blocks_stay_hits_until_popped) {
  BlockPool p(3);
  BlockId a = p.pop_free(), b = p.pop_free();
  CHECK(p.cache(a, key(1)));
  CHECK(!p.cache(b, key(1)));  // the key belongs to a already
  CHECK(!p.cache(a, key(2)));  // a has its key
  p.release(a);
  p.release(b);
  CHECK_EQ(p.free_queue(), (std::vector<BlockId>{2, 0, 1}));
  CHECK(p.lookup(key(1)) == std::optional<BlockId>(a));
  p.acquire(a);  // a prefix hit takes it from the middle of the queue
  CHECK_EQ(p.free_queue(), (std::vector<BlockId>{2, 1}));
  p.release(a);
  CHECK_EQ(p.pop_free(), 2);
  CHECK_EQ(p.pop_free(), 1);
  CHECK_EQ(p.pop_free(), 0);  // evicted: its key is gone
  CHECK(!p.lookup(key(1)).has_value());
  CHECK(p.hash(0) == nullptr);
  CHECK_EQ(p.num_cached(), size_t{0});
  p.check_integrity();
  CHECK_THROWS(p.pop_free(), IntegrityError);
}

TEST(integrity_checker_notices_corruption) {
  using testing::Corruption;
  struct Case {
    Corruption what;
    BlockId block;
  };
  for (Case c : {Case{Corruption::kRefCount, 0}, Case{Corruption::kQueueInsert, 1},
                 Case{Corruption::kQueueUnlink, 4}, Case{Corruption::kTableDuplicate, 0},
                 Case{Corruption::kStaleHash, 5}}) {
    KVCacheManager kv(8, 4, true);
    SeqBlocks& s = kv.pin("a");
    CHECK(kv.allocate(s, 8, {}));
    kv.check_integrity();
    testing::corrupt(kv, c.what, c.block, "a");
    CHECK_THROWS(kv.check_integrity(), IntegrityError);
  }
}

TEST(bad_sizes) {
  CHECK_THROWS(BlockPool(0), std::invalid_argument);
  CHECK_THROWS(KVCacheManager(4, 0, false), std::invalid_argument);
}

TEST_MAIN()
