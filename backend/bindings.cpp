// pybind11 module inflight._core: the C++ batch-manager core.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "inflight C++ batch manager core";
  m.attr("__version__") = "0.1.0";
}
