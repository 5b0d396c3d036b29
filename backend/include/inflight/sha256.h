// SHA-256 (FIPS 180-4): the collision-resistant key of a full KV block. Implemented here so
// the core has no crypto dependency; the digest is stable across runs and machines (no
// seeded hashing), and equals hashlib.sha256 over the same bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

#include "inflight/common.h"

namespace inflight {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t len);
  Digest finish();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Whether this CPU has the x86 SHA extensions, which compress() then uses; sha256_use_hw
// switches them off (or back on, where available) so tests can compare both paths.
bool sha256_hw_available();
void sha256_use_hw(bool on);

// Key of a full block: sha256(parent key, or one zero byte for the first block;
// the block's token ids as little-endian int64; the extra key's bytes). The extra key is the
// slot for anything else that changes the KV (a LoRA adapter id, a cache salt).
Digest hash_block(const Digest* parent, Span<const Token> tokens, std::string_view extra);

// Digests are uniformly distributed: their first 8 bytes make a good table hash.
struct DigestHasher {
  size_t operator()(const Digest& d) const noexcept {
    uint64_t h = 0;
    for (int i = 0; i < 8; ++i) h = (h << 8) | d[i];
    return static_cast<size_t>(h);
  }
};

}  // namespace inflight
