// KVCacheManager exact state (block size 4, 11 blocks), as in vLLM's test_prefix_caching.py.
#include <algorithm>
#include <numeric>

#include "check.h"
#include "inflight/kv_cache_manager.h"

using namespace inflight;
using Blocks = std::vector<BlockId>;

namespace {

std::vector<int32_t> refs(const KVCacheManager& kv) {
  std::vector<int32_t> out;
  for (BlockId b = 0; b < kv.num_blocks(); ++b) out.push_back(kv.pool().ref_count(b));
  return out;
}

Blocks admit(KVCacheManager& kv, const std::string& id, const std::vector<Token>& toks) {
  Blocks hit = kv.prefix_hit(id, toks, "");
  CHECK(kv.allocate(id, static_cast<int64_t>(toks.size()), hit));
  kv.cache_full_blocks(id, toks, static_cast<int64_t>(toks.size()), "");
  kv.check_integrity();
  return kv.block_table(id);
}

}  // namespace

TEST(shared_prefix_free_and_evict) {
  KVCacheManager kv(11, 4, true);
  std::vector<Token> a(14);
  std::iota(a.begin(), a.end(), 100);
  CHECK_EQ(admit(kv, "a", a), (Blocks{0, 1, 2, 3}));
  std::vector<Token> b(a.begin(), a.begin() + 8);
  b.insert(b.end(), 5, 99);
  CHECK_EQ(kv.prefix_hit("b", b, ""), (Blocks{0, 1}));
  CHECK_EQ(admit(kv, "b", b), (Blocks{0, 1, 4, 5}));
  CHECK_EQ(refs(kv), (std::vector<int32_t>{2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0}));
  CHECK(kv.request_block_counts("b") == std::make_tuple(2, 2, 4));
  kv.free("a");  // tail first
  CHECK_EQ(kv.pool().free_queue(), (Blocks{6, 7, 8, 9, 10, 3, 2}));
  std::vector<Token> c(a.begin(), a.begin() + 12);
  c.push_back(7);
  CHECK_EQ(admit(kv, "c", c), (Blocks{0, 1, 2, 6}));  // 2 leaves the middle of the queue
  CHECK_EQ(kv.pool().free_queue(), (Blocks{7, 8, 9, 10, 3}));
  kv.free("b");
  kv.free("c");
  CHECK_EQ(kv.pool().free_queue(), (Blocks{7, 8, 9, 10, 3, 5, 4, 6, 2, 1, 0}));
  CHECK(kv.allocate("d", 20, {}));
  CHECK(kv.allocate("e", 12, {}));
  CHECK_EQ(kv.block_table("e"), (Blocks{5, 4, 6}));  // 4 was b's cached block: evicted
  CHECK_EQ(kv.prefix_hit("a2", a, ""), (Blocks{0, 1, 2}));
  CHECK_EQ(kv.prefix_hit("b2", b, ""), (Blocks{0, 1}));
  CHECK(!kv.allocate("f", 16, {}));
  CHECK_EQ(kv.pool().free_queue(), (Blocks{2, 1, 0}));
  kv.check_integrity();
}

TEST(prefix_must_be_the_current_hit) {
  KVCacheManager kv(11, 4, true);
  std::vector<Token> a(13);
  std::iota(a.begin(), a.end(), 0);
  admit(kv, "a", a);
  Blocks dup = {0, 0};
  CHECK_THROWS(kv.allocate("b", 12, dup), std::invalid_argument);
  CHECK(kv.find("b") == nullptr);  // a rejected call leaves no entry
  Blocks hit = kv.prefix_hit("c", a, "");
  kv.free("a");
  kv.reset_prefix_cache();
  CHECK_THROWS(kv.allocate("c", 13, hit), std::invalid_argument);
  kv.check_integrity();
}

TEST(entries_live_while_pinned_or_reported) {
  KVCacheManager kv(4, 4, false);
  SeqBlocks& s = kv.pin("x");
  CHECK(kv.allocate(s, 5, {}));
  kv.free(s);
  kv.unpin("x");
  CHECK(kv.find("x") != nullptr);  // its reuse counts are not reported yet
  CHECK(kv.request_block_counts("x") == std::make_tuple(0, 2, 2));
  kv.forget("x");
  CHECK(kv.find("x") == nullptr);
  CHECK_THROWS(kv.unpin("x"), std::invalid_argument);
}

TEST(hit_rate_counts_on_admission) {
  KVCacheManager kv(11, 4, true);
  std::vector<Token> a(13);
  std::iota(a.begin(), a.end(), 0);
  admit(kv, "a", a);
  kv.free("a");
  for (int i = 0; i < 3; ++i) kv.prefix_hit("b", a, "");
  CHECK_EQ(kv.counters().lookup_blocks_total, int64_t{3});
  admit(kv, "b", a);
  CHECK_EQ(kv.counters().lookup_blocks_total, int64_t{6});
  CHECK_EQ(kv.counters().reused_blocks_total, int64_t{3});
}

TEST_MAIN()
