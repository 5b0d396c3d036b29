// The scheduler as Python sees it. Ownership: the C++ RequestState owns the bookkeeping the
// planner reads (token ids, counters, queue position); the Python Request stays the engine's
// object and mirrors num_computed_tokens. Token ids are appended on the Python side (the
// engine's sampler loop); the core reads the new ones from the Python list, by length, right
// before it plans a request and when it advances one (TokenSync), so there is no per-token
// call across the boundary. The last token is re-read too: the overlapped engine plans a step
// before the previous step's token is on the host and fills in its placeholder later.
#include "inflight/scheduler.h"

#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {
namespace {

class PyScheduler {
 public:
  PyScheduler(KVCacheManager& kv, int64_t max_num_tokens, int32_t max_batch_size, bool chunked,
              const std::string& policy)
      : core_(SchedulerConfig{max_num_tokens, max_batch_size, chunked, parse_policy(policy)}, kv),
        token_ids_(py::str("token_ids")),
        num_computed_(py::str("num_computed_tokens")) {
    core_.set_token_sync([this](RequestState& r) { sync_tokens(r); });
  }

  void add(const py::object& req, const std::string& id, const py::object& token_ids, int32_t num_prompt,
           int64_t max_total, int32_t priority, int64_t arrival, bool context_logits, const std::string& extra) {
    RequestSpec spec{id, to_tokens(token_ids), num_prompt, max_total, priority, arrival, extra, context_logits};
    // objs_ holds the strong reference; the core keeps the borrowed pointer for the hot paths
    Handle h = core_.add(std::move(spec), req.ptr());
    objs_.emplace(h, req);
  }

  // (step, scheduled: list[ScheduledRequest], admitted: list[(Request, start)],
  //  preempted: list[Request], num_tokens, num_decodes)
  py::tuple schedule() {
    const StepPlan& plan = core_.schedule();
    py::list scheduled(plan.scheduled.size());
    for (size_t i = 0; i < plan.scheduled.size(); ++i) {
      const ScheduledEntry& e = plan.scheduled[i];
      PyObject* o = new_scheduled(pyobj(*e.req), e.num_new, e.start, e.samples ? 1 : 0);
      if (o == nullptr) throw py::error_already_set();
      PyList_SET_ITEM(scheduled.ptr(), i, o);
    }
    py::list admitted, preempted;
    for (Handle h : plan.admitted) admitted.append(py::make_tuple(obj(h), core_.get(h)->num_computed));
    for (Handle h : plan.preempted) preempted.append(obj(h));
    return py::make_tuple(plan.step, scheduled, admitted, preempted, plan.num_tokens, plan.num_decodes);
  }

  // The fast path of Scheduler.advance(): the latest plan as planned (entries whose request
  // left since are skipped).
  void advance(uint64_t step) {
    if (step != core_.plan().step) throw py::value_error("advance() of a plan that is not the latest");
    for (const ScheduledEntry& e : core_.plan().scheduled) {  // block hashes need the real tokens
      if (e.req != nullptr && e.req->status == RequestStatus::kRunning) sync_tokens(*e.req);
    }
    core_.advance();
    for (const ScheduledEntry& e : core_.plan().scheduled) {
      if (e.req == nullptr || e.req->status != RequestStatus::kRunning) continue;
      py::object n = py::reinterpret_steal<py::object>(PyLong_FromLongLong(e.req->num_computed));
      if (PyObject_SetAttr(pyobj(*e.req), num_computed_.ptr(), n.ptr()) < 0) throw py::error_already_set();
    }
  }

  int64_t advance_one(const std::string& id, int64_t num_computed) {
    RequestState* r = core_.find(id);
    if (r == nullptr) return -1;
    sync_tokens(*r);
    core_.advance_one(*r, num_computed);
    return r->num_computed;
  }

  bool finish(const std::string& id) {
    RequestState* r = core_.find(id);
    if (r == nullptr) return false;
    Handle h = r->handle;
    core_.finish(h);
    objs_.erase(h);
    return true;
  }

  int32_t preempt(const std::string& id) {
    RequestState* r = core_.find(id);
    if (r == nullptr) throw py::key_error("unknown request " + id);
    core_.preempt(r->handle);
    return r->num_preemptions;
  }

  // The latest plan's metadata written into `bufs`: a StepLayout; or (tokens, requests,
  // table width) when the buffers are too small for it (grow them and call again); or None
  // when the plan is no longer what will run (a request of it finished or was preempted
  // since, or a newer plan exists): the caller takes the generic path.
  py::object build_step(uint64_t step, const StepBufferViews& bufs) {
    if (step != core_.plan().step || !core_.plan().intact) return py::none();
    fill_entries();
    StepNeeds needs = step_needs(entries_);
    if (!needs.fits(bufs.buffers())) return py::make_tuple(needs.tokens, needs.reqs, needs.table_width);
    StepLayout lay = build_step_metadata(entries_, core_.kv().block_size(), bufs.buffers());
    std::vector<py::object> ids;
    if (!lay.context_rows.empty()) {
      for (const auto& e : core_.plan().scheduled) ids.push_back(py::str(e.req->id));
    }
    return py::cast(make_layout(std::move(lay), bufs.buffers(), ids));
  }

  py::list waiting() { return objects(core_.waiting()); }
  py::list running() { return objects(core_.running()); }
  size_t num_waiting() const { return core_.num_waiting(); }
  size_t num_running() const { return core_.num_running(); }
  void check_integrity() const { core_.check_integrity(); }

  // The core's view of one request, for tests: (token_ids, num_computed, status, preemptions)
  py::object state(const std::string& id) {
    RequestState* r = core_.find(id);
    if (r == nullptr) return py::none();
    static const char* names[] = {"waiting", "running", "preempted"};
    return py::make_tuple(to_list(Span<const Token>(r->tokens)), r->num_computed,
                          names[static_cast<int>(r->status)], r->num_preemptions);
  }

 private:
  const py::object& obj(Handle h) const { return objs_.at(h); }
  static PyObject* pyobj(const RequestState& r) { return static_cast<PyObject*>(r.user); }

  py::list objects(const std::vector<Handle>& hs) const {
    py::list out(hs.size());
    for (size_t i = 0; i < hs.size(); ++i) {
      PyObject* o = obj(hs[i]).ptr();
      Py_INCREF(o);
      PyList_SET_ITEM(out.ptr(), i, o);
    }
    return out;
  }

  // Pick up tokens the engine appended to the Python list (or a stop sequence it cut).
  void sync_tokens(RequestState& r) {
    py::object lst = py::reinterpret_steal<py::object>(PyObject_GetAttr(pyobj(r), token_ids_.ptr()));
    if (!lst) throw py::error_already_set();
    Py_ssize_t n = PyList_Check(lst.ptr()) ? PyList_GET_SIZE(lst.ptr()) : py::len(lst);
    auto have = static_cast<Py_ssize_t>(r.tokens.size());
    if (n > have) {
      read_tokens(lst, r.tokens, static_cast<size_t>(have));
    } else if (n < have) {
      core_.truncate_tokens(r, static_cast<size_t>(n));
    } else if (n > 0) {
      // the overlapped engine appends a placeholder for a token still on the GPU and writes
      // its value in place one step later: re-read the last token
      PyObject* last = PySequence_GetItem(lst.ptr(), n - 1);
      if (last == nullptr) throw py::error_already_set();
      long long v = PyLong_AsLongLong(last);
      Py_DECREF(last);
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      r.tokens.back() = static_cast<Token>(v);
    }
  }

  void fill_entries() {
    const StepPlan& plan = core_.plan();
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

  Scheduler core_;
  std::unordered_map<Handle, py::object> objs_;  // the engine's Request of each handle
  py::str token_ids_, num_computed_;
  std::vector<StepEntry> entries_;  // scratch, reused every step
};

}  // namespace

void bind_scheduler(py::module_& m) {
  py::class_<PyScheduler>(m, "Scheduler", "Step planner over a KVCacheManager (see inflight/scheduler.py).")
      .def(py::init<KVCacheManager&, int64_t, int32_t, bool, const std::string&>(), py::arg("kv"),
           py::arg("max_num_tokens"), py::arg("max_batch_size"), py::arg("enable_chunked_context"),
           py::arg("policy"), py::keep_alive<1, 2>())
      .def("add", &PyScheduler::add, py::arg("request"), py::arg("request_id"), py::arg("token_ids"),
           py::arg("num_prompt_tokens"), py::arg("max_total_tokens"), py::arg("priority"),
           py::arg("arrival_order"), py::arg("context_logits"), py::arg("extra_key") = "")
      .def("schedule", &PyScheduler::schedule)
      .def("advance", &PyScheduler::advance, py::arg("step"))
      .def("advance_one", &PyScheduler::advance_one, py::arg("request_id"), py::arg("num_computed"))
      .def("finish", &PyScheduler::finish, py::arg("request_id"))
      .def("preempt", &PyScheduler::preempt, py::arg("request_id"))
      .def("build_step", &PyScheduler::build_step, py::arg("step"), py::arg("buffers"))
      .def("waiting", &PyScheduler::waiting)
      .def("running", &PyScheduler::running)
      .def_property_readonly("num_waiting", &PyScheduler::num_waiting)
      .def_property_readonly("num_running", &PyScheduler::num_running)
      .def("check_integrity", &PyScheduler::check_integrity)
      .def("state", &PyScheduler::state, py::arg("request_id"));
}

}  // namespace inflight::py_bind
