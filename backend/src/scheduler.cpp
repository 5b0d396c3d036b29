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

Handle Scheduler::add(RequestSpec spec, void* user) {
  if (spec.tokens.empty()) throw std::invalid_argument("request " + spec.id + " has no tokens");
  if (by_id_.count(spec.id)) throw std::invalid_argument("request " + spec.id + " is already scheduled");
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
  r.user = user;
  by_id_.emplace(r.id, h);
  waiting_.insert(wait_key(r));
  return h;
}

RequestState* Scheduler::get(Handle h) {
  auto it = requests_.find(h);
  return it == requests_.end() ? nullptr : &it->second;
}

RequestState* Scheduler::find(const std::string& id) {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : get(it->second);
}

void Scheduler::append_tokens(RequestState& r, Span<const Token> tokens) {
  r.tokens.insert(r.tokens.end(), tokens.begin(), tokens.end());
}

void Scheduler::truncate_tokens(RequestState& r, size_t n) {
  if (n >= r.tokens.size()) return;
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
  for (auto& e : plan_.scheduled) {
    if (e.req == r) {
      e.req = nullptr;
      plan_.intact = false;
    }
  }
}

// ---- planning ----------------------------------------------------------------------------

int64_t Scheduler::num_new(const RequestState& r, int64_t start, int64_t budget) const {
  int64_t n = r.num_tokens() - start;
  if (n > budget) return cfg_.enable_chunked_context ? budget : 0;
  return std::max<int64_t>(n, 0);
}

const StepPlan& Scheduler::schedule() {
  plan_.step = ++step_;
  plan_.scheduled.clear();
  plan_.admitted.clear();
  plan_.preempted.clear();
  plan_.intact = true;
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
  plan_.scheduled.push_back({r, start, static_cast<int32_t>(n), start + n == r->num_tokens()});
}

int64_t Scheduler::schedule_running(int64_t budget) {
  snapshot_.assign(running_.begin(), running_.end());  // preemption edits running_
  for (RequestState* r : snapshot_) {
    if (budget <= 0) break;
    if (r->status != RequestStatus::kRunning) continue;  // preempted earlier in this loop
    sync(*r);
    int64_t n = num_new(*r, r->num_computed, budget);
    if (n == 0) continue;
    while (!kv_.allocate(*r->blocks, r->num_computed + n, {})) {
      RequestState* victim = pick_victim();
      preempt_internal(victim);
      plan_.preempted.push_back(victim->handle);
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
    sync(*r);
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
    insert_running(r);
    plan_.admitted.push_back(r->handle);
    add_entry(r, start, n);
    budget -= n;
  }
}

// ---- after the step ----------------------------------------------------------------------

void Scheduler::advance_one(RequestState& r, int64_t num_computed) {
  if (r.status != RequestStatus::kRunning) return;  // finished or preempted meanwhile
  r.num_computed = std::min(num_computed, r.num_tokens());
  kv_.cache_full_blocks(*r.blocks, r.tokens, r.num_computed, r.extra_key);
}

void Scheduler::advance() {
  for (const auto& e : plan_.scheduled) {
    if (e.req != nullptr) advance_one(*e.req, e.start + e.num_new);
  }
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
  drop_from_plan(r);
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
