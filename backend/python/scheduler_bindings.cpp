// The scheduler core as Python sees it: handles in, numpy arrays out. The core owns every
// request's tokens, counters, status and stop rules; Python keeps a Handle per sequence and
// never a copy of that state, and the core never calls into Python.
#include "inflight/scheduler.h"

#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {
namespace {

template <class T>
py::array_t<T> array_of(size_t n) {
  return py::array_t<T>(static_cast<py::ssize_t>(n));
}

const char* finish_name(FinishReason f) {
  switch (f) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    default:
      return "";
  }
}

class PyScheduler {
 public:
  PyScheduler(KVCacheManager& kv, int64_t max_num_tokens, int32_t max_batch_size, bool chunked,
              const std::string& policy)
      : core_(SchedulerConfig{max_num_tokens, max_batch_size, chunked, parse_policy(policy)}, kv) {}

  // sampling: (temperature, top_k, top_p, min_p, repetition, presence, frequency, logprobs)
  Handle add(const std::string& id, const py::object& token_ids, int32_t num_prompt, int64_t max_total,
             int32_t priority, int64_t arrival, bool context_logits, const std::string& extra,
             const std::vector<Token>& end_ids, const std::vector<std::vector<Token>>& stop_sequences,
             int32_t min_tokens, bool keep_stop_sequence, const py::tuple& sampling) {
    RequestSpec spec{id, to_tokens(token_ids), num_prompt, max_total, priority, arrival, extra, context_logits,
                     StopRules{end_ids, stop_sequences, min_tokens, keep_stop_sequence}, SamplingArgs{}};
    if (sampling.size() != 8) throw py::value_error("sampling must be an 8-tuple");
    SamplingArgs& s = spec.sampling;
    s.temperature = sampling[0].cast<float>();
    s.top_k = sampling[1].cast<int32_t>();
    s.top_p = sampling[2].cast<float>();
    s.min_p = sampling[3].cast<float>();
    s.repetition_penalty = sampling[4].cast<float>();
    s.presence_penalty = sampling[5].cast<float>();
    s.frequency_penalty = sampling[6].cast<float>();
    s.logprobs = sampling[7].cast<int32_t>();
    return core_.add(std::move(spec));
  }

  // (step, num_scheduled, num_tokens, num_decodes, admitted handles, preempted handles)
  py::tuple schedule() {
    const StepPlan& plan = core_.schedule();
    return py::make_tuple(plan.step, plan.scheduled.size(), plan.num_tokens, plan.num_decodes,
                          plan.admitted, plan.preempted);
  }

  // The plan's entries as (handle, start, num_new, samples); -1 for a request gone since.
  py::list entries(uint64_t step) const {
    py::list out;
    for (const auto& e : core_.plan_of(step).scheduled) {
      out.append(py::make_tuple(e.req ? e.req->handle : Handle{-1}, e.start, e.num_new, e.samples));
    }
    return out;
  }

  // The latest plan's metadata written into `bufs`, plus the per-row arrays of the plan:
  // (layout, rows) or (tokens, requests, table width) when the buffers are too small.
  py::object build_step(uint64_t step, const StepBufferViews& bufs) {
    const StepPlan& plan = core_.plan_of(step);
    if (step != core_.plan().step || plan.launched) throw py::value_error("build_step(): not the latest unlaunched plan");
    if (!plan.intact) throw py::value_error("build_step(): a request of the plan left before it ran");
    fill_entries(plan);
    StepNeeds needs = step_needs(entries_);
    if (!needs.fits(bufs.buffers())) return py::make_tuple(needs.tokens, needs.reqs, needs.table_width);
    StepLayout lay = build_step_metadata(entries_, core_.kv().block_size(), bufs.buffers());
    std::vector<py::object> ids;
    if (!lay.context_rows.empty()) {
      for (const auto& e : plan.scheduled) ids.push_back(py::int_(e.req->handle));
    }
    PyStepLayout out = make_layout(std::move(lay), bufs.buffers(), ids);
    return py::make_tuple(py::cast(std::move(out)), rows(plan));
  }

  void launched(uint64_t step) { core_.launched(step); }

  // -> (handles, rows, from, output_len, finish, stop_token, stop_sequence, offsets [n + 1], tokens)
  py::tuple update(uint64_t step, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& tokens,
                   const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& offsets) {
    StepResultView res{step, Span<const Token>(tokens.data(), static_cast<size_t>(tokens.size())),
                       Span<const int64_t>(offsets.data(), static_cast<size_t>(offsets.size()))};
    const StepEvents& ev = core_.update(res);
    size_t n = ev.events.size();
    auto handles = array_of<int64_t>(n), from = array_of<int64_t>(n), len = array_of<int64_t>(n);
    auto rows = array_of<int32_t>(n), stop_seq = array_of<int32_t>(n);
    auto fin = array_of<uint8_t>(n);
    auto stop_tok = array_of<int64_t>(n);
    auto offs = array_of<int64_t>(n + 1);
    auto toks = array_of<int64_t>(ev.tokens.size());
    auto* po = offs.mutable_data();
    po[0] = 0;
    for (size_t i = 0; i < n; ++i) {
      const StepEvent& e = ev.events[i];
      handles.mutable_data()[i] = e.handle;
      rows.mutable_data()[i] = e.row;
      from.mutable_data()[i] = e.from;
      len.mutable_data()[i] = e.output_len;
      fin.mutable_data()[i] = static_cast<uint8_t>(e.finish);
      stop_tok.mutable_data()[i] = e.stop_token;
      stop_seq.mutable_data()[i] = e.stop_sequence;
      po[i + 1] = static_cast<int64_t>(e.token_end);
    }
    std::copy(ev.tokens.begin(), ev.tokens.end(), toks.mutable_data());
    return py::make_tuple(handles, rows, from, len, fin, stop_tok, stop_seq, offs, toks);
  }

  void stop_at(Handle h, int64_t output_len) { core_.stop_at(h, output_len); }
  bool finish(Handle h) { return core_.finish(h); }

  int32_t preempt(Handle h) {
    core_.preempt(h);
    return core_.get(h)->num_preemptions;
  }

  std::vector<Handle> waiting() const { return core_.waiting(); }
  std::vector<Handle> running() const { return core_.running(); }
  size_t num_waiting() const { return core_.num_waiting(); }
  size_t num_running() const { return core_.num_running(); }
  void check_integrity() const { core_.check_integrity(); }

  // All of a request's known tokens from `from` on (pending slots excluded).
  py::array_t<int64_t> tokens(Handle h, int64_t from) const {
    const RequestState& r = at(h);
    int64_t end = r.num_known();
    from = std::min(std::max<int64_t>(from, 0), end);
    auto out = array_of<int64_t>(static_cast<size_t>(end - from));
    std::copy(r.tokens.begin() + from, r.tokens.begin() + end, out.mutable_data());
    return out;
  }

  // One request's state: a dict, for tests, metrics and the final response.
  py::dict state(Handle h) const {
    const RequestState& r = at(h);
    static const char* names[] = {"waiting", "running", "preempted"};
    py::dict d;
    d["id"] = r.id;
    d["num_tokens"] = r.num_tokens();
    d["num_prompt"] = r.num_prompt;
    d["num_computed"] = r.num_computed;
    d["pending"] = r.pending;
    d["status"] = names[static_cast<int>(r.status)];
    d["finish"] = finish_name(r.finish);
    d["num_preemptions"] = r.num_preemptions;
    d["num_cached"] = std::max<int64_t>(r.num_cached, 0);
    d["max_total"] = r.max_total;
    return d;
  }

  bool contains(Handle h) const { return core_.get(h) != nullptr; }

 private:
  const RequestState& at(Handle h) const {
    const RequestState* r = core_.get(h);
    if (r == nullptr) throw py::key_error("unknown request handle " + std::to_string(h));
    return *r;
  }

  void fill_entries(const StepPlan& plan) {
    entries_.resize(plan.scheduled.size());
    for (size_t i = 0; i < plan.scheduled.size(); ++i) {
      const ScheduledEntry& e = plan.scheduled[i];
      StepEntry& s = entries_[i];
      s.tokens = Span<const Token>(e.req->tokens);
      s.start = e.start;
      s.num_new = e.num_new;
      s.num_prompt = e.req->num_prompt;
      s.table = Span<const BlockId>(e.req->blocks->table);
      s.samples = e.samples;
      s.context_logits = e.req->context_logits;
    }
  }

  // Per-row arrays of a plan: handles [B]; for the S sampling rows: handle, output tokens so
  // far, whether its input token is a pending slot, min_tokens, and the sampling arguments.
  py::dict rows(const StepPlan& plan) const {
    size_t b = plan.scheduled.size(), s = 0;
    for (const auto& e : plan.scheduled) s += e.samples ? 1 : 0;
    auto handles = array_of<int64_t>(b), sh = array_of<int64_t>(s), n_out = array_of<int64_t>(s);
    auto pend = array_of<bool>(s);
    auto min_tok = array_of<int32_t>(s), top_k = array_of<int32_t>(s), lps = array_of<int32_t>(s);
    auto temp = array_of<float>(s), top_p = array_of<float>(s), min_p = array_of<float>(s),
         rep = array_of<float>(s), pres = array_of<float>(s), freq = array_of<float>(s);
    size_t k = 0;
    for (size_t i = 0; i < b; ++i) {
      const ScheduledEntry& e = plan.scheduled[i];
      const RequestState& r = *e.req;
      handles.mutable_data()[i] = r.handle;
      if (!e.samples) continue;
      sh.mutable_data()[k] = r.handle;
      n_out.mutable_data()[k] = r.num_output();
      pend.mutable_data()[k] = r.pending > 0;
      min_tok.mutable_data()[k] = r.stop.min_tokens;
      const SamplingArgs& a = r.sampling;
      temp.mutable_data()[k] = a.temperature;
      top_k.mutable_data()[k] = a.top_k;
      top_p.mutable_data()[k] = a.top_p;
      min_p.mutable_data()[k] = a.min_p;
      rep.mutable_data()[k] = a.repetition_penalty;
      pres.mutable_data()[k] = a.presence_penalty;
      freq.mutable_data()[k] = a.frequency_penalty;
      lps.mutable_data()[k] = a.logprobs;
      ++k;
    }
    py::dict d;
    d["handles"] = handles;
    d["sample_handles"] = sh;
    d["num_output"] = n_out;
    d["input_pending"] = pend;
    d["min_tokens"] = min_tok;
    d["temperature"] = temp;
    d["top_k"] = top_k;
    d["top_p"] = top_p;
    d["min_p"] = min_p;
    d["repetition_penalty"] = rep;
    d["presence_penalty"] = pres;
    d["frequency_penalty"] = freq;
    d["logprobs"] = lps;
    return d;
  }

  Scheduler core_;
  std::vector<StepEntry> entries_;  // scratch, reused every step
};

}  // namespace

void bind_scheduler(py::module_& m) {
  py::class_<PyScheduler>(m, "Scheduler", "Step planner and owner of request state (see inflight/scheduler.py).")
      .def(py::init<KVCacheManager&, int64_t, int32_t, bool, const std::string&>(), py::arg("kv"),
           py::arg("max_num_tokens"), py::arg("max_batch_size"), py::arg("enable_chunked_context"),
           py::arg("policy"), py::keep_alive<1, 2>())
      .def("add", &PyScheduler::add, py::arg("request_id"), py::arg("token_ids"), py::arg("num_prompt_tokens"),
           py::arg("max_total_tokens"), py::arg("priority"), py::arg("arrival_order"), py::arg("context_logits"),
           py::arg("extra_key"), py::arg("end_ids"), py::arg("stop_sequences"), py::arg("min_tokens"),
           py::arg("keep_stop_sequence"), py::arg("sampling"))
      .def("schedule", &PyScheduler::schedule)
      .def("entries", &PyScheduler::entries, py::arg("step"))
      .def("build_step", &PyScheduler::build_step, py::arg("step"), py::arg("buffers"))
      .def("launched", &PyScheduler::launched, py::arg("step"))
      .def("update", &PyScheduler::update, py::arg("step"), py::arg("tokens"), py::arg("offsets"))
      .def("stop_at", &PyScheduler::stop_at, py::arg("handle"), py::arg("output_len"))
      .def("finish", &PyScheduler::finish, py::arg("handle"))
      .def("preempt", &PyScheduler::preempt, py::arg("handle"))
      .def("waiting", &PyScheduler::waiting)
      .def("running", &PyScheduler::running)
      .def_property_readonly("num_waiting", &PyScheduler::num_waiting)
      .def_property_readonly("num_running", &PyScheduler::num_running)
      .def("check_integrity", &PyScheduler::check_integrity)
      .def("tokens", &PyScheduler::tokens, py::arg("handle"), py::arg("start") = 0)
      .def("state", &PyScheduler::state, py::arg("handle"))
      .def("__contains__", &PyScheduler::contains);
}

}  // namespace inflight::py_bind
