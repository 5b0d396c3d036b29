#include "inflight/scheduler.h"

#include <algorithm>

namespace inflight {

Policy parse_policy(const std::string& name) {
  if (name == "guaranteed_no_evict") return Policy::kGuaranteedNoEvict;
  if (name == "max_utilization") return Policy::kMaxUtilization;
  throw std::invalid_argument("batch_scheduler_policy must be guaranteed_no_evict or max_utilization, got '" +
                              name + "'");
}

Scheduler::Scheduler(const SchedulerConfig& cfg, KVCacheManager& kv) : cfg_(cfg), kv_(kv) {
  if (cfg.max_num_tokens < 1 || cfg.max_batch_size < 1) {
    throw std::invalid_argument("max_num_tokens and max_batch_size must be >= 1");
  }
}

Scheduler::~Scheduler() {
  // Release the KV entries this scheduler pinned; their blocks stay with the KV manager,
  // which may outlive us (the Python engine owns both).
  for (auto& kv : requests_) kv_.unpin(kv.second.id);
}

// ---- requests ----------------------------------------------------------------------------

Handle Scheduler::add(RequestSpec spec) {
  if (spec.tokens.empty()) throw std::invalid_argument("request " + spec.id + " has no tokens");
  if (by_id_.count(spec.id)) throw std::invalid_argument("request " + spec.id + " is already scheduled");
  if (spec.num_prompt_tokens < 1 || spec.num_prompt_tokens > static_cast<int32_t>(spec.tokens.size()) ||
      spec.max_total_tokens <= static_cast<int64_t>(spec.tokens.size()) - 1) {
    throw std::invalid_argument("request " + spec.id + ": num_prompt_tokens or max_total_tokens out of range");
  }
  Handle h = next_handle_++;
  RequestState& r = requests_[h];
  r.handle = h;
  r.id = std::move(spec.id);
  r.blocks = &kv_.pin(r.id);
  r.tokens = std::move(spec.tokens);
  r.num_prompt = spec.num_prompt_tokens;
  r.max_total = spec.max_total_tokens;
  r.priority = spec.priority;
  r.arrival = spec.arrival_order;
  r.extra_key = std::move(spec.extra_key);
  r.context_logits = spec.context_logits;
  r.stop = std::move(spec.stop);
  r.sampling = spec.sampling;
  by_id_.emplace(r.id, h);
  waiting_.insert(wait_key(r));
  return h;
}

RequestState* Scheduler::get(Handle h) {
  auto it = requests_.find(h);
  return it == requests_.end() ? nullptr : &it->second;
}

const RequestState* Scheduler::get(Handle h) const {
  auto it = requests_.find(h);
  return it == requests_.end() ? nullptr : &it->second;
}

RequestState* Scheduler::find(const std::string& id) {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : get(it->second);
}

void Scheduler::truncate_tokens(RequestState& r, size_t n) {
  if (n >= r.tokens.size()) return;
  r.pending = static_cast<int32_t>(std::max<int64_t>(0, r.pending - static_cast<int64_t>(r.tokens.size() - n)));
  r.tokens.resize(n);
  r.num_computed = std::min<int64_t>(r.num_computed, static_cast<int64_t>(n));
  // hashes of blocks past the cut no longer describe this request's tokens
  SeqBlocks& s = *r.blocks;
  auto full = n / static_cast<size_t>(kv_.block_size());
  if (s.hashes.size() > full) s.hashes.resize(full);
  s.num_offered = std::min<int32_t>(s.num_offered, static_cast<int32_t>(full));
}

Scheduler::WaitKey Scheduler::wait_key(const RequestState& r) {
  if (r.seniority >= 0) return {0, r.seniority, 0, r.handle};
  return {1, -static_cast<int64_t>(r.priority), r.arrival, r.handle};
}

void Scheduler::insert_running(RequestState* r) {
  auto by_seniority = [](const RequestState* a, const RequestState* b) { return a->seniority < b->seniority; };
  auto pos = std::upper_bound(running_.begin(), running_.end(), r, by_seniority);
  running_.insert(pos, r);
}

void Scheduler::erase_running(RequestState* r) {
  running_.erase(std::find(running_.begin(), running_.end(), r));
}

void Scheduler::drop_from_plan(RequestState* r) {
  for (StepPlan& p : plans_) {  // updated plans too: entries() must never see a freed state
    for (auto& e : p.scheduled) {
      if (e.req == r) {
        e.req = nullptr;
        p.intact = false;
      }
    }
  }
}

StepPlan& Scheduler::plan_ref(uint64_t step) {
  for (StepPlan& p : plans_) {
    if (p.step == step && step != 0) return p;
  }
  throw std::invalid_argument("step " + std::to_string(step) + " is not one of the last two plans");
}

const StepPlan& Scheduler::plan_of(uint64_t step) const {
  return const_cast<Scheduler*>(this)->plan_ref(step);
}

// ---- planning ----------------------------------------------------------------------------

int64_t Scheduler::num_new(const RequestState& r, int64_t start, int64_t budget) const {
  int64_t n = r.num_tokens() - start;
  if (n > budget) return cfg_.enable_chunked_context ? budget : 0;
  return std::max<int64_t>(n, 0);
}

const StepPlan& Scheduler::schedule() {
  cur_ ^= 1;
  StepPlan& plan_ = plans_[cur_];
  if (plan_.step != 0 && plan_.launched && !plan_.updated) {
    cur_ ^= 1;
    throw std::logic_error("schedule(): step " + std::to_string(plan_.step) +
                           " was launched but never updated (at most one step may be in flight)");
  }
  plan_.step = ++step_;
  plan_.scheduled.clear();
  plan_.admitted.clear();
  plan_.preempted.clear();
  plan_.intact = true;
  plan_.launched = false;
  plan_.updated = false;
  int64_t budget = schedule_running(cfg_.max_num_tokens);
  // A step that had to preempt admits nothing: the pool is short already.
  if (plan_.preempted.empty()) schedule_waiting(budget);
  // decodes first (stable): the attention backend takes them as one batch
  std::stable_partition(plan_.scheduled.begin(), plan_.scheduled.end(),
                        [](const ScheduledEntry& e) { return e.num_new == 1; });
  plan_.num_tokens = 0;
  plan_.num_decodes = 0;
  for (const auto& e : plan_.scheduled) {
    plan_.num_tokens += e.num_new;
    plan_.num_decodes += e.num_new == 1 ? 1 : 0;
  }
  return plan_;
}

void Scheduler::add_entry(RequestState* r, int64_t start, int64_t n) {
  r->scheduled_step = step_;
  plans_[cur_].scheduled.push_back({r, start, static_cast<int32_t>(n), start + n == r->num_tokens()});
}

int64_t Scheduler::schedule_running(int64_t budget) {
  snapshot_.assign(running_.begin(), running_.end());  // preemption edits running_
  for (RequestState* r : snapshot_) {
    if (budget <= 0) break;
    if (r->status != RequestStatus::kRunning) continue;  // preempted earlier in this loop
    int64_t n = num_new(*r, r->num_computed, budget);
    if (n == 0) continue;
    while (!kv_.allocate(*r->blocks, r->num_computed + n, {})) {
      RequestState* victim = pick_victim();
      preempt_internal(victim);
      plans_[cur_].preempted.push_back(victim->handle);
      if (victim == r) break;
    }
    if (r->status == RequestStatus::kRunning) {
      add_entry(r, r->num_computed, n);
      budget -= n;
    }
  }
  return budget;
}

RequestState* Scheduler::pick_victim() {
  // the most junior running request not scheduled this step; the request being scheduled
  // is always a candidate, so the search cannot come back empty
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if ((*it)->scheduled_step != step_) return *it;
  }
  throw IntegrityError("no preemption victim: every running request is scheduled");
}

void Scheduler::preempt_internal(RequestState* r) {
  erase_running(r);
  kv_.free(*r->blocks);
  r->num_computed = 0;
  r->status = RequestStatus::kPreempted;
  ++r->num_preemptions;
  waiting_.insert(wait_key(*r));
}

int64_t Scheduler::reserved_blocks() const {
  int64_t reserved = 0;
  for (const RequestState* r : running_) {
    reserved += std::max<int64_t>(
        kv_.blocks_needed(r->max_total) - static_cast<int64_t>(r->blocks->table.size()), 0);
  }
  return reserved;
}

void Scheduler::schedule_waiting(int64_t budget) {
  const bool no_evict = cfg_.policy == Policy::kGuaranteedNoEvict;
  int64_t reserved = -1;  // computed on first use: O(running)
  while (!waiting_.empty() && budget > 0 && static_cast<int64_t>(running_.size()) < cfg_.max_batch_size) {
    auto head = waiting_.begin();
    RequestState* r = get(head->h);
    if (r->pending > 0) break;  // its last token is still being sampled: next step
    if (r->context_logits) {
      prefix_.clear();  // its logits are wanted at every prompt position: compute them all
    } else {
      kv_.match_prefix(*r->blocks, r->tokens, r->extra_key, prefix_);
    }
    auto hit = static_cast<int64_t>(prefix_.size());
    int64_t start = hit * kv_.block_size();
    int64_t n = num_new(*r, start, budget);
    if (n == 0) break;
    if (no_evict) {
      if (reserved < 0) reserved = reserved_blocks();
      int64_t need = kv_.blocks_needed(r->max_total) - hit;
      if (need > kv_.num_free_blocks() - kv_.num_evictable(prefix_) - reserved) break;
      reserved += need - (kv_.blocks_needed(start + n) - hit);
    }
    if (!kv_.allocate(*r->blocks, start + n, prefix_)) break;
    waiting_.erase(head);
    r->status = RequestStatus::kRunning;
    r->num_computed = start;
    if (r->seniority < 0) r->seniority = next_seniority_++;
    if (r->num_cached < 0) r->num_cached = start;
    insert_running(r);
    plans_[cur_].admitted.push_back(r->handle);
    add_entry(r, start, n);
    budget -= n;
  }
}

// ---- after the step ----------------------------------------------------------------------

void Scheduler::cache_known(RequestState& r) {
  if (r.status != RequestStatus::kRunning) return;
  int64_t n = std::min(r.num_computed, r.num_known());  // a pending slot's value is not known yet
  kv_.cache_full_blocks(*r.blocks, r.tokens, n, r.extra_key);
}

void Scheduler::launched(uint64_t step) {
  StepPlan& p = plan_ref(step);
  if (p.launched) throw std::logic_error("launched() twice for step " + std::to_string(step));
  p.launched = true;
  for (const auto& e : p.scheduled) {
    RequestState* r = e.req;
    if (r == nullptr || r->status != RequestStatus::kRunning) continue;
    r->num_computed = std::min(e.start + e.num_new, r->num_tokens());
    if (e.samples) {
      r->tokens.push_back(-1);
      ++r->pending;
    }
    cache_known(*r);
  }
}

void Scheduler::apply_stops(RequestState& r, int64_t from) {
  const StopRules& st = r.stop;
  for (int64_t i = from; i < r.num_known(); ++i) {
    const int64_t n_out = i + 1 - r.num_prompt;  // output tokens up to and including i
    size_t keep = static_cast<size_t>(i + 1);
    if (n_out >= st.min_tokens) {
      const Token t = r.tokens[static_cast<size_t>(i)];
      if (std::find(st.end_ids.begin(), st.end_ids.end(), t) != st.end_ids.end()) {
        r.finish = FinishReason::kStop;
        r.stop_token = t;
      } else {
        for (size_t j = 0; j < st.stop_sequences.size() && r.finish == FinishReason::kNone; ++j) {
          const auto& seq = st.stop_sequences[j];
          const auto len = static_cast<int64_t>(seq.size());
          if (len == 0 || n_out < len) continue;
          if (std::equal(seq.begin(), seq.end(), r.tokens.begin() + (i + 1 - len))) {
            r.finish = FinishReason::kStop;
            r.stop_sequence = static_cast<int32_t>(j);
            if (!st.keep_stop_sequence) keep -= static_cast<size_t>(len);
          }
        }
      }
    }
    if (r.finish == FinishReason::kNone && i + 1 >= r.max_total) r.finish = FinishReason::kLength;
    if (r.finish != FinishReason::kNone) {
      truncate_tokens(r, keep);  // what lies past the stop (other drafts, pending slots) goes
      r.pending = 0;
      return;
    }
  }
}

const StepEvents& Scheduler::update(const StepResultView& res) {
  StepPlan& p = plan_ref(res.step);
  if (!p.launched || p.updated) throw std::logic_error("update() of a step that is not launched or was updated");
  p.updated = true;
  events_.events.clear();
  events_.tokens.clear();
  size_t k = 0;  // sampling row
  for (const auto& e : p.scheduled) {
    if (!e.samples) continue;
    if (k + 1 >= res.offsets.size()) throw std::invalid_argument("update(): fewer result rows than sampling rows");
    const int64_t a = res.offsets[k], b = res.offsets[k + 1];
    ++k;
    if (a < 0 || b < a || static_cast<size_t>(b) > res.tokens.size()) {
      throw std::invalid_argument("update(): result offsets out of range");
    }
    RequestState* r = e.req;
    if (r == nullptr) continue;  // finished since: its tokens are dropped
    check(r->pending >= 1, [&] { return "update(): request " + r->id + " has no pending slot"; });
    const int64_t slot = r->num_tokens() - r->pending;  // this step's slot: the first pending one
    const int64_t m = b - a;
    if (m != 1 && r->pending != 1) {
      throw std::invalid_argument("update(): 0 or several tokens for a row need it to be the only step in flight");
    }
    StepEvent ev;
    ev.handle = r->handle;
    ev.row = static_cast<int32_t>(k - 1);
    ev.from = slot - r->num_prompt;
    if (m == 0) {  // nothing accepted: the last position is computed again next step
      r->tokens.pop_back();
      r->pending = 0;
      r->num_computed = std::min<int64_t>(r->num_computed, slot - 1);
    } else {
      r->tokens[static_cast<size_t>(slot)] = res.tokens[static_cast<size_t>(a)];
      --r->pending;
      r->tokens.insert(r->tokens.end(), res.tokens.begin() + a + 1, res.tokens.begin() + b);
      apply_stops(*r, slot);
    }
    cache_known(*r);
    ev.output_len = r->num_known() - r->num_prompt;
    ev.from = std::min(ev.from, ev.output_len);
    ev.finish = r->finish;
    ev.stop_token = r->stop_token;
    ev.stop_sequence = r->stop_sequence;
    ev.token_begin = events_.tokens.size();
    events_.tokens.insert(events_.tokens.end(), r->tokens.begin() + r->num_prompt + ev.from,
                          r->tokens.begin() + r->num_prompt + ev.output_len);
    ev.token_end = events_.tokens.size();
    events_.events.push_back(ev);
  }
  if (k + 1 != res.offsets.size()) throw std::invalid_argument("update(): more result rows than sampling rows");
  return events_;
}

void Scheduler::stop_at(Handle h, int64_t output_len) {
  RequestState* r = get(h);
  if (r == nullptr) throw std::invalid_argument("stop_at(): unknown request");
  truncate_tokens(*r, static_cast<size_t>(r->num_prompt + std::max<int64_t>(output_len, 0)));
  r->pending = 0;
  r->finish = FinishReason::kStop;
}

bool Scheduler::finish(Handle h) {
  RequestState* r = get(h);
  if (r == nullptr) return false;
  if (r->status == RequestStatus::kRunning) {
    erase_running(r);
  } else {
    waiting_.erase(wait_key(*r));
  }
  kv_.free(*r->blocks);
  drop_from_plan(r);
  std::string id = r->id;
  by_id_.erase(id);
  requests_.erase(h);
  kv_.unpin(id);
  return true;
}

void Scheduler::preempt(Handle h) {
  RequestState* r = get(h);
  if (r == nullptr || r->status != RequestStatus::kRunning) {
    throw std::invalid_argument("only a running request can be preempted");
  }
  // a plan not launched yet loses it; a launched one keeps it, so update() still fills the
  // token that step sampled
  for (StepPlan& p : plans_) {
    if (p.launched) continue;
    for (auto& e : p.scheduled) {
      if (e.req == r) {
        e.req = nullptr;
        p.intact = false;
      }
    }
  }
  preempt_internal(r);
}

std::vector<Handle> Scheduler::waiting() const {
  std::vector<Handle> out;
  out.reserve(waiting_.size());
  for (const auto& k : waiting_) out.push_back(k.h);
  return out;
}

std::vector<Handle> Scheduler::running() const {
  std::vector<Handle> out;
  out.reserve(running_.size());
  for (const RequestState* r : running_) out.push_back(r->handle);
  return out;
}

void Scheduler::check_integrity() const {
  kv_.check_integrity();
  check(running_.size() + waiting_.size() == requests_.size(), "a request is in no queue or in both");
  check(by_id_.size() == requests_.size(), "id index disagrees with the request table");
  check(static_cast<int64_t>(running_.size()) <= cfg_.max_batch_size, "more running requests than max_batch_size");
  int64_t last = -1;
  for (const RequestState* r : running_) {
    const std::string& id = r->id;
    check(r->status == RequestStatus::kRunning,
          [&] { return "request " + id + " is in the running list but not running"; });
    check(r->seniority > last, [&] { return "running list is not in seniority order at " + id; });
    last = r->seniority;
    check(r->blocks->allocated, [&] { return "running request " + id + " has no block table"; });
    check(static_cast<int64_t>(r->blocks->table.size()) >= kv_.blocks_needed(r->num_computed),
          [&] { return "running request " + id + " has fewer blocks than computed tokens need"; });
    check(r->num_computed <= r->num_tokens(),
          [&] { return "request " + id + " computed more tokens than it has"; });
    check(r->pending >= 0 && r->pending <= r->num_output(),
          [&] { return "request " + id + " has more pending slots than output tokens"; });
    check(r->finish == FinishReason::kNone, [&] { return "request " + id + " finished but is still running"; });
  }
  for (const auto& k : waiting_) {
    auto it = requests_.find(k.h);
    check(it != requests_.end(), "waiting queue holds an unknown request");
    const RequestState& r = it->second;
    check(r.status != RequestStatus::kRunning, [&] { return "request " + r.id + " is waiting and running"; });
    check(!r.blocks->allocated && r.blocks->table.empty(),
          [&] { return "waiting request " + r.id + " holds blocks"; });
    check(r.num_computed == 0, [&] { return "waiting request " + r.id + " has computed tokens"; });
    check(k.cls == wait_key(r).cls && k.a == wait_key(r).a,
          [&] { return "waiting request " + r.id + " is out of order"; });
  }
  for (const auto& kv : requests_) {
    check(kv.second.blocks->pins > 0,
          [&] { return "request " + kv.second.id + " is not pinned in the KV manager"; });
  }
}

}  // namespace inflight
