// A minimal test harness for the C++ core: TEST(name) { CHECK(...); } registers a test;
// checks stay on in Release builds (unlike assert), a failure names the file and line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace inflight_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

struct Failure {
  std::string what;
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  std::ostringstream os;
  os << file << ":" << line << ": " << what;
  throw Failure{os.str()};
}

template <class T>
std::string show(const T& v) {
  std::ostringstream os;
  if constexpr (std::is_arithmetic_v<T>) {
    os << v;
  } else {
    os << "{";
    bool first = true;
    for (const auto& x : v) {
      os << (first ? "" : ", ") << x;
      first = false;
    }
    os << "}";
  }
  return os.str();
}

inline int run_all() {
  int failed = 0;
  for (const Case& c : registry()) {
    try {
      c.fn();
      std::printf("ok    %s\n", c.name);
    } catch (const Failure& f) {
      ++failed;
      std::printf("FAIL  %s\n      %s\n", c.name, f.what.c_str());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL  %s\n      unexpected exception: %s\n", c.name, e.what());
    }
  }
  std::printf("%zu tests, %d failed\n", registry().size(), failed);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

}  // namespace inflight_test

#define TEST(name)                                                             \
  static void name();                                                          \
  static const inflight_test::Register name##_registered(#name, name);         \
  static void name()

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) inflight_test::fail(__FILE__, __LINE__, "CHECK(" #cond ")");  \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    const auto& va_ = (a);                                                                    \
    const auto& vb_ = (b);                                                                    \
    if (!(va_ == vb_)) {                                                                      \
      inflight_test::fail(__FILE__, __LINE__,                                                 \
                          "CHECK_EQ(" #a ", " #b "): " + inflight_test::show(va_) + " != " +  \
                              inflight_test::show(vb_));                                      \
    }                                                                                         \
  } while (0)

#define CHECK_THROWS(expr, Exc)                                                                   \
  do {                                                                                            \
    bool thrown_ = false;                                                                         \
    try {                                                                                         \
      (void)(expr);                                                                               \
    } catch (const Exc&) {                                                                        \
      thrown_ = true;                                                                             \
    }                                                                                             \
    if (!thrown_) inflight_test::fail(__FILE__, __LINE__, "expected " #Exc " from " #expr);      \
  } while (0)

#define TEST_MAIN() \
  int main() { return inflight_test::run_all(); }
