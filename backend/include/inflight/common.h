// Shared vocabulary of the batch-manager core: ids, a non-owning span, the integrity error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace inflight {

using BlockId = int32_t;
using Token = int64_t;  // token ids as Python ints; 64-bit so no id is ever truncated
using Handle = int64_t;  // a scheduler request: stable for the request's lifetime, never reused

// Non-owning view of a contiguous array (C++17 has no std::span).
template <class T>
class Span {
 public:
  Span() = default;
  Span(T* d, size_t n) : data_(d), size_(n) {}
  // implicit from vectors on purpose: every caller passes one
  template <class A, class Alloc>
  Span(std::vector<A, Alloc>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT
  template <class A, class Alloc>
  Span(const std::vector<A, Alloc>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT

  T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) const { return data_[i]; }
  T* begin() const { return data_; }
  T* end() const { return data_ + size_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Thrown by check_integrity() and by internal consistency checks. The Python binding maps it
// to a subclass of AssertionError, as the pure-Python implementation raised AssertionError.
class IntegrityError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// The message is only built on failure: pass a literal, or a callable that returns a string
// (checks sit on per-block and per-request paths).
inline void check(bool ok, const char* what) {
  if (!ok) throw IntegrityError(what);
}
template <class MakeMessage, class = decltype(std::declval<MakeMessage>()())>
inline void check(bool ok, MakeMessage&& make) {
  if (!ok) throw IntegrityError(make());
}

inline int64_t blocks_for(int64_t num_tokens, int64_t block_size) {
  return (num_tokens + block_size - 1) / block_size;
}

}  // namespace inflight
