// pybind11 module inflight._core: the C++ batch-manager core (KV block pool with prefix
// reuse, scheduler step planner, step-metadata builder). Python wrappers with the public
// API live in inflight/kv_cache_manager.py and inflight/scheduler.py.
#include "python/bindings.h"

#include "inflight/sha256.h"

namespace py = pybind11;
using namespace inflight;

PYBIND11_MODULE(_core, m) {
  m.doc() = "inflight C++ batch manager core";
  m.attr("__version__") = "0.1.0";
  // check_integrity() raised AssertionError in the Python implementation: keep that contract
  py::register_exception<IntegrityError>(m, "IntegrityError", PyExc_AssertionError);

  m.def(
      "hash_block",
      [](const py::object& parent, const py::object& tokens, const std::string& extra) {
        std::vector<Token> toks = py_bind::to_tokens(tokens);
        Digest p{};
        const Digest* pp = nullptr;
        if (!parent.is_none()) {
          std::string raw = py::bytes(parent);
          if (raw.size() != p.size()) throw py::value_error("parent key must be 32 bytes");
          std::copy(raw.begin(), raw.end(), p.begin());
          pp = &p;
        }
        Digest d = hash_block(pp, toks, extra);
        return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
      },
      py::arg("parent"), py::arg("tokens"), py::arg("extra") = "",
      "sha256(parent key or b'\\0', tokens as little-endian int64, extra key): the key of a full block.");

  py_bind::bind_kv(m);
  py_bind::bind_step(m);
  py_bind::bind_scheduler(m);
}
