#include "inflight/block_pool.h"

#include <string>

namespace inflight {

BlockPool::BlockPool(int32_t num_blocks)
    : num_blocks_(num_blocks),
      prev_(num_blocks + 1),
      next_(num_blocks + 1),
      ref_(num_blocks, 0),
      hash_(num_blocks),
      hashed_(num_blocks, false) {
  if (num_blocks < 1) throw std::invalid_argument("num_blocks must be >= 1, got " + std::to_string(num_blocks));
  prev_[num_blocks_] = next_[num_blocks_] = num_blocks_;  // empty list: sentinel to itself
  for (BlockId b = 0; b < num_blocks_; ++b) push_back(b);  // ids handed out in order
}

void BlockPool::unlink(BlockId b) {
  next_[prev_[b]] = next_[b];
  prev_[next_[b]] = prev_[b];
  --num_free_;
}

void BlockPool::push_back(BlockId b) {
  BlockId last = prev_[num_blocks_];
  next_[last] = b;
  prev_[b] = last;
  next_[b] = num_blocks_;
  prev_[num_blocks_] = b;
  ++num_free_;
}

BlockId BlockPool::pop_free() {
  check(num_free_ > 0, "pop_free on an empty free queue");
  BlockId b = next_[num_blocks_];
  unlink(b);
  if (hashed_[b]) {  // evict: its content is about to be overwritten
    cached_.erase(hash_[b]);
    hashed_[b] = false;
  }
  ref_[b] = 1;
  return b;
}

void BlockPool::acquire(BlockId b) {
  if (ref_.at(b)++ == 0) unlink(b);
}

void BlockPool::release(BlockId b) {
  check(ref_.at(b) > 0, [&] { return "release of block " + std::to_string(b) + " with ref count 0"; });
  if (--ref_[b] == 0) push_back(b);
}

std::optional<BlockId> BlockPool::lookup(const Digest& h) const {
  auto it = cached_.find(h);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

bool BlockPool::cache(BlockId b, const Digest& h) {
  if (hashed_.at(b) || cached_.count(h)) return false;
  hash_[b] = h;
  hashed_[b] = true;
  cached_.emplace(h, b);
  return true;
}

void BlockPool::reset_prefix_cache() {
  for (auto& kv : cached_) hashed_[kv.second] = false;
  cached_.clear();
}

std::vector<BlockId> BlockPool::free_queue() const {
  std::vector<BlockId> out;
  out.reserve(num_free_);
  for (BlockId b = next_[num_blocks_]; b != num_blocks_; b = next_[b]) out.push_back(b);
  return out;
}

std::vector<std::pair<Digest, BlockId>> BlockPool::cached_blocks() const {
  return {cached_.begin(), cached_.end()};
}

void BlockPool::check_integrity() const {
  std::vector<bool> queued(num_blocks_, false);
  int32_t n = 0;
  BlockId prev = num_blocks_;
  for (BlockId b = next_[num_blocks_]; b != num_blocks_; b = next_[b]) {
    check(b >= 0 && b < num_blocks_, "free queue holds an invalid block id");
    check(!queued[b], [&] { return "block " + std::to_string(b) + " is twice in the free queue"; });
    check(prev_[b] == prev, [&] { return "free queue: broken back link at block " + std::to_string(b); });
    queued[b] = true;
    prev = b;
    check(++n <= num_blocks_, "free queue is longer than the pool");
  }
  check(prev_[num_blocks_] == prev, "free queue: broken tail link");
  check(n == num_free_, "free queue length disagrees with the free count");
  for (BlockId b = 0; b < num_blocks_; ++b) {
    check(ref_[b] >= 0, [&] { return "block " + std::to_string(b) + " has a negative ref count"; });
    check((ref_[b] == 0) == queued[b],
          [&] { return "block " + std::to_string(b) + ": free queue vs ref count"; });
  }
  size_t hashed = 0;
  for (BlockId b = 0; b < num_blocks_; ++b) hashed += hashed_[b] ? 1 : 0;
  check(hashed == cached_.size(), "hashed blocks disagree with the cache map");
  for (const auto& kv : cached_) {
    check(hashed_[kv.second] && hash_[kv.second] == kv.first,
          [&] { return "block " + std::to_string(kv.second) + ": cache map vs block hash"; });
  }
}

}  // namespace inflight
