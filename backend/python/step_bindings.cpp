// Step-metadata buffers and the generic builder (for a SchedulerOutput that did not come from
// this scheduler's latest plan, e.g. one a test put together by hand).
#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {
namespace {

template <class T>
Span<T> view(py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style) || !a.writeable()) {
    throw py::type_error(std::string("step buffer '") + name + "' must be a writable contiguous " +
                         (sizeof(T) == 8 ? "int64" : "int32") + " array");
  }
  return {static_cast<T*>(a.mutable_data()), static_cast<size_t>(a.size())};
}

}  // namespace

StepBufferViews::StepBufferViews(py::array input_ids, py::array positions, py::array slot_mapping,
                                 py::array logits_indices, py::array query_start_loc, py::array seq_lens,
                                 py::array sample_rows, py::array block_tables) {
  bufs_.input_ids = view<int64_t>(input_ids, "input_ids");
  bufs_.positions = view<int64_t>(positions, "positions");
  bufs_.slot_mapping = view<int64_t>(slot_mapping, "slot_mapping");
  bufs_.logits_indices = view<int64_t>(logits_indices, "logits_indices");
  bufs_.query_start_loc = view<int32_t>(query_start_loc, "query_start_loc");
  bufs_.seq_lens = view<int32_t>(seq_lens, "seq_lens");
  bufs_.sample_rows = view<int32_t>(sample_rows, "sample_rows");
  bufs_.block_tables = view<int32_t>(block_tables, "block_tables");
  keep_ = {input_ids, positions, slot_mapping, logits_indices, query_start_loc, seq_lens, sample_rows, block_tables};
}

namespace {

py::list int_list(Span<const int32_t> xs) {
  py::list out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) PyList_SET_ITEM(out.ptr(), i, PyLong_FromLong(xs[i]));
  return out;
}

}  // namespace

PyStepLayout make_layout(StepLayout lay, const StepBuffers& bufs, const std::vector<py::object>& ids) {
  auto reqs = static_cast<size_t>(lay.num_reqs);
  auto samples = static_cast<size_t>(lay.num_samples);
  PyStepLayout out{std::move(lay), int_list({bufs.query_start_loc.data(), reqs + 1}),
                   int_list({bufs.seq_lens.data(), reqs}), int_list({bufs.sample_rows.data(), samples}),
                   py::dict()};
  for (const ContextRows& c : out.lay.context_rows) {
    out.ctx_rows[ids.at(c.entry)] = py::make_tuple(c.begin, c.end);
  }
  return out;
}

void bind_step(py::module_& m) {
  py::class_<StepBufferViews>(m, "StepBufferViews",
                              "Checked views of the host buffers a step's metadata is written into.")
      .def(py::init<py::array, py::array, py::array, py::array, py::array, py::array, py::array, py::array>(),
           py::arg("input_ids"), py::arg("positions"), py::arg("slot_mapping"), py::arg("logits_indices"),
           py::arg("query_start_loc"), py::arg("seq_lens"), py::arg("sample_rows"), py::arg("block_tables"));

  py::class_<PyStepLayout>(m, "StepLayout", "Sizes of one step's metadata in the buffers.")
      .def_property_readonly("num_tokens", [](const PyStepLayout& l) { return l.lay.num_tokens; })
      .def_property_readonly("num_reqs", [](const PyStepLayout& l) { return l.lay.num_reqs; })
      .def_property_readonly("num_logits", [](const PyStepLayout& l) { return l.lay.num_logits; })
      .def_property_readonly("num_samples", [](const PyStepLayout& l) { return l.lay.num_samples; })
      .def_property_readonly("table_width", [](const PyStepLayout& l) { return l.lay.table_width; })
      .def_property_readonly("num_decodes", [](const PyStepLayout& l) { return l.lay.num_decodes; })
      .def_property_readonly("max_query_len", [](const PyStepLayout& l) { return l.lay.max_query_len; })
      .def_property_readonly("max_seq_len", [](const PyStepLayout& l) { return l.lay.max_seq_len; })
      .def_readonly("query_start_loc", &PyStepLayout::query_start_loc)
      .def_readonly("seq_lens", &PyStepLayout::seq_lens)
      .def_readonly("sample_rows", &PyStepLayout::sample_rows)
      .def_readonly("ctx_rows", &PyStepLayout::ctx_rows);

  // entries: (request_id, token_ids, start, num_new, num_prompt, samples, context_logits)
  m.def(
      "build_step_metadata",
      [](const py::list& entries, const py::list& tables, int32_t block_size, const StepBufferViews& bufs) {
        if (entries.size() != tables.size()) throw py::value_error("one block table per scheduled request");
        size_t n = entries.size();
        std::vector<std::vector<Token>> toks(n);
        std::vector<std::vector<BlockId>> tabs(n);
        std::vector<StepEntry> es(n);
        std::vector<py::object> ids(n);
        for (size_t i = 0; i < n; ++i) {
          auto t = entries[i].cast<py::tuple>();
          ids[i] = t[0];
          toks[i] = to_tokens(t[1]);
          tabs[i] = tables[i].cast<std::vector<BlockId>>();
          es[i].tokens = toks[i];
          es[i].start = t[2].cast<int64_t>();
          es[i].num_new = t[3].cast<int32_t>();
          es[i].num_prompt = t[4].cast<int32_t>();
          es[i].samples = t[5].cast<bool>();
          es[i].context_logits = t[6].cast<bool>();
          es[i].table = tabs[i];
        }
        return make_layout(build_step_metadata(es, block_size, bufs.buffers()), bufs.buffers(), ids);
      },
      py::arg("entries"), py::arg("tables"), py::arg("block_size"), py::arg("buffers"));
}

}  // namespace inflight::py_bind
