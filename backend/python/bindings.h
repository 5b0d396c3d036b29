// Shared pieces of the inflight._core binding (pybind11). The core in include/ + src/ knows
// nothing of Python; this layer converts at the boundary and keeps the Python objects.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "inflight/common.h"
#include "inflight/step_metadata.h"

namespace inflight::py_bind {

namespace py = pybind11;

// Token ids from any Python sequence of ints (a list takes the fast path).
void read_tokens(py::handle seq, std::vector<Token>& out, size_t from = 0);
std::vector<Token> to_tokens(py::handle seq);
py::list to_list(Span<const Token> xs);
py::list to_list(Span<const BlockId> xs);

// Writable views of the caller's step buffers (numpy arrays, e.g. of pinned torch tensors),
// checked once when the buffers are (re)allocated, then used every step.
class StepBufferViews {
 public:
  StepBufferViews(py::array input_ids, py::array positions, py::array slot_mapping,
                  py::array logits_indices, py::array query_start_loc, py::array seq_lens,
                  py::array sample_rows, py::array block_tables);
  const StepBuffers& buffers() const { return bufs_; }

 private:
  std::vector<py::array> keep_;  // the arrays stay alive as long as the raw pointers are used
  StepBuffers bufs_;
};

// StepLayout plus what prepare() hands on as Python objects: the host copies of
// query_start_loc / seq_lens, the sampling rows, and the context-logits rows by request id.
struct PyStepLayout {
  StepLayout lay;
  py::list query_start_loc, seq_lens, sample_rows;
  py::dict ctx_rows;  // request handle -> (first logits row, end)
};
PyStepLayout make_layout(StepLayout lay, const StepBuffers& bufs, const std::vector<py::object>& ids);

void bind_kv(py::module_& m);
void bind_scheduler(py::module_& m);
void bind_step(py::module_& m);

}  // namespace inflight::py_bind
