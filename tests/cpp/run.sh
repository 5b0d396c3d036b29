#!/usr/bin/env bash
# Configure, build and run the C++ unit tests of backend/ in their own build directory
# (warnings are errors; AddressSanitizer + UBSan on unless INFLIGHT_SANITIZE=OFF).
# Usage: tests/cpp/run.sh [build-dir]     (default: build/cpp-tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build/cpp-tests}"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DINFLIGHT_BUILD_TESTS=ON -DINFLIGHT_BUILD_PYTHON=OFF -DINFLIGHT_WERROR=ON \
  -DINFLIGHT_SANITIZE="${INFLIGHT_SANITIZE:-ON}" >/dev/null
cmake --build "$build" --parallel
ctest --test-dir "$build" --output-on-failure
