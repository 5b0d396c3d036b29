// SHA-256 against the FIPS 180-4 test vectors, and the block-key chaining.
#include <string>

#include "check.h"
#include "inflight/sha256.h"

using namespace inflight;

namespace {

std::string hex(const Digest& d) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : d) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

std::string sha(const std::string& s) {
  Sha256 h;
  h.update(s.data(), s.size());
  return hex(h.finish());
}

}  // namespace

void fips_vectors_once() {
  CHECK_EQ(sha(""), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_EQ(sha("abc"), std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK_EQ(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
           std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  Sha256 h;  // one million 'a', fed in uneven pieces to cross block boundaries
  std::string chunk(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  CHECK_EQ(hex(h.finish()), std::string("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
  for (size_t n = 0; n < 200; ++n) {  // every padding case, both lengths around a block edge
    std::string msg(n, char('a' + n % 26));
    Sha256 one;
    one.update(msg.data(), n);
    Sha256 split;
    split.update(msg.data(), n / 3);
    split.update(msg.data() + n / 3, n - n / 3);
    CHECK(one.finish() == split.finish());
  }
}

TEST(fips_vectors_portable_and_hardware) {
  sha256_use_hw(false);
  fips_vectors_once();
  std::string portable = sha(std::string(1000, 'x'));
  sha256_use_hw(true);  // the SHA extensions, where this CPU has them
  std::printf("      (x86 SHA extensions %s)\n", sha256_hw_available() ? "used" : "not available");
  fips_vectors_once();
  CHECK_EQ(sha(std::string(1000, 'x')), portable);
}

TEST(block_keys_chain_and_separate) {
  std::vector<Token> a = {1, 2, 3, 4}, b = {5, 6, 7, 8};
  Digest ka = hash_block(nullptr, a, "");
  CHECK(ka == hash_block(nullptr, a, ""));  // deterministic: no per-process seed
  CHECK(hash_block(&ka, b, "") != hash_block(nullptr, b, ""));  // the parent is in the key
  CHECK(hash_block(nullptr, a, "lora-1") != ka);                 // so is the extra key
  std::vector<Token> neg = {-1};
  // little-endian int64, as Python's struct.pack("<q", -1) after the zero parent byte
  Sha256 h;
  uint8_t bytes[9] = {0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  h.update(bytes, sizeof(bytes));
  CHECK(hash_block(nullptr, neg, "") == h.finish());
  std::vector<Token> many(200, 42);  // longer than the internal buffer
  Sha256 h2;
  uint8_t zero = 0;
  h2.update(&zero, 1);
  for (int i = 0; i < 200; ++i) {
    uint8_t t[8] = {42, 0, 0, 0, 0, 0, 0, 0};
    h2.update(t, 8);
  }
  CHECK(hash_block(nullptr, many, "") == h2.finish());
}

TEST_MAIN()
