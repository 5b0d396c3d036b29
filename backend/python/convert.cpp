// Conversions at the Python boundary.
#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {

void read_tokens(py::handle seq, std::vector<Token>& out, size_t from) {
  PyObject* o = seq.ptr();
  // a list (the Request's token_ids) without the sequence protocol's indirection
  py::object fast = PyList_Check(o) || PyTuple_Check(o)
                        ? py::reinterpret_borrow<py::object>(seq)
                        : py::reinterpret_steal<py::object>(PySequence_Fast(o, "token ids must be a sequence"));
  if (!fast) throw py::error_already_set();
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  if (from == 0) out.reserve(static_cast<size_t>(n));  // appends keep the vector's geometric growth
  for (Py_ssize_t i = static_cast<Py_ssize_t>(from); i < n; ++i) {
    long long v = PyLong_AsLongLong(items[i]);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    out.push_back(v);
  }
}

std::vector<Token> to_tokens(py::handle seq) {
  std::vector<Token> out;
  read_tokens(seq, out);
  return out;
}

py::list to_list(Span<const Token> xs) {
  py::list out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) PyList_SET_ITEM(out.ptr(), i, PyLong_FromLongLong(xs[i]));
  return out;
}

py::list to_list(Span<const BlockId> xs) {
  py::list out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) PyList_SET_ITEM(out.ptr(), i, PyLong_FromLong(xs[i]));
  return out;
}

}  // namespace inflight::py_bind
