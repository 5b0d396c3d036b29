// The step planner: which requests run this step and how many new tokens each (decodes and
// prefill chunks mixed under a token budget), with the KV blocks to hold them.
//
// Request progress is counters (num_computed, tokens.size()), not phases: chunked prefill,
// prefix hits and preemption only move counters.
//
// Policies (TensorRT-LLM names):
// - guaranteed_no_evict: admit a request only if the pool can hold every running request up
//   to its max_total_tokens plus this one; a running request never loses its blocks.
// - max_utilization: admit whatever fits now; when blocks run out, preempt the newest running
//   request by recompute (blocks freed, tokens kept, back to the front of the queue).
//
// Order and fairness: the waiting queue is (-priority, arrival) for new requests, behind the
// preempted ones, which go first by seniority (first admission). Running requests keep their
// seniority across preemptions and the victim is always the most junior, so the oldest
// admitted request always progresses: nothing admitted starves, whatever the priorities of
// requests that arrive later.
#pragma once

#include <functional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "inflight/common.h"
#include "inflight/kv_cache_manager.h"

namespace inflight {

enum class Policy : uint8_t { kGuaranteedNoEvict, kMaxUtilization };
Policy parse_policy(const std::string& name);

enum class RequestStatus : uint8_t { kWaiting, kRunning, kPreempted };

struct SchedulerConfig {
  int64_t max_num_tokens = 8192;  // token budget of one step
  int32_t max_batch_size = 256;   // running requests at most
  bool enable_chunked_context = true;
  Policy policy = Policy::kGuaranteedNoEvict;
};

struct RequestSpec {
  std::string id;
  std::vector<Token> tokens;  // prompt (+ outputs already generated, if any)
  int32_t num_prompt_tokens = 0;
  int64_t max_total_tokens = 0;  // prompt + max_tokens
  int32_t priority = 0;          // higher first
  int64_t arrival_order = 0;
  std::string extra_key;  // goes into every block hash: adapter id, cache salt
  bool context_logits = false;
};

struct RequestState {
  Handle handle = 0;
  std::string id;
  SeqBlocks* blocks = nullptr;  // pinned in the KV manager for the request's lifetime
  std::vector<Token> tokens;    // prompt + outputs
  int32_t num_prompt = 0;
  int64_t num_computed = 0;  // tokens whose KV is in the cache
  int64_t max_total = 0;
  int32_t priority = 0;
  int64_t arrival = 0;
  std::string extra_key;
  bool context_logits = false;
  RequestStatus status = RequestStatus::kWaiting;
  int32_t num_preemptions = 0;
  int64_t seniority = -1;       // number of its first admission; -1 until admitted
  uint64_t scheduled_step = 0;  // the last step that scheduled it
  void* user = nullptr;         // opaque to the core: the binding's handle on its own object

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

struct ScheduledEntry {
  RequestState* req;  // null once the request was finished or preempted outside schedule()
  int64_t start;      // num_computed when scheduled: first position computed this step
  int32_t num_new;
  bool samples;  // the step reaches the end of the known tokens: a token is sampled
};

struct StepPlan {
  uint64_t step = 0;
  std::vector<ScheduledEntry> scheduled;  // decodes (one new token) first, then prefill chunks
  std::vector<Handle> admitted;           // left the waiting queue this step
  std::vector<Handle> preempted;
  int64_t num_tokens = 0;
  int32_t num_decodes = 0;
  bool intact = true;  // false once an entry's request left before advance()
};

class Scheduler {
 public:
  // Called before a request's tokens are read by schedule(): a binding whose requests live
  // elsewhere (Python lists) refreshes RequestState::tokens here.
  using TokenSync = std::function<void(RequestState&)>;

  Scheduler(const SchedulerConfig& cfg, KVCacheManager& kv);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Handle add(RequestSpec spec, void* user = nullptr);
  RequestState* get(Handle h);
  RequestState* find(const std::string& id);
  void set_token_sync(TokenSync fn) { sync_ = std::move(fn); }
  // Tokens change only by appending sampled tokens or, right before a request finishes,
  // dropping a matched stop sequence.
  void append_tokens(RequestState& r, Span<const Token> tokens);
  void truncate_tokens(RequestState& r, size_t n);

  const StepPlan& schedule();
  const StepPlan& plan() const { return plan_; }
  // After the model ran: counters move to the end of each scheduled chunk and blocks that
  // became full are offered to the prefix cache.
  void advance();
  void advance_one(RequestState& r, int64_t num_computed);
  bool finish(Handle h);  // from wherever it is: blocks freed, state dropped
  void preempt(Handle h);  // a running request back to the waiting queue, by recompute

  std::vector<Handle> waiting() const;
  std::vector<Handle> running() const;
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  const SchedulerConfig& config() const { return cfg_; }
  KVCacheManager& kv() { return kv_; }
  // Queues vs states vs blocks, plus the KV manager's own checks. Raises IntegrityError.
  void check_integrity() const;

 private:
  struct WaitKey {
    int cls;    // 0: preempted (by seniority), 1: new (by -priority, arrival)
    int64_t a;  // seniority, or -priority
    int64_t b;  // 0, or arrival order
    Handle h;
    bool operator<(const WaitKey& o) const {
      if (cls != o.cls) return cls < o.cls;
      if (a != o.a) return a < o.a;
      if (b != o.b) return b < o.b;
      return h < o.h;
    }
  };
  static WaitKey wait_key(const RequestState& r);

  int64_t num_new(const RequestState& r, int64_t start, int64_t budget) const;
  int64_t schedule_running(int64_t budget);
  void schedule_waiting(int64_t budget);
  int64_t reserved_blocks() const;
  RequestState* pick_victim();
  void preempt_internal(RequestState* r);
  void add_entry(RequestState* r, int64_t start, int64_t n);
  void insert_running(RequestState* r);
  void erase_running(RequestState* r);
  void drop_from_plan(RequestState* r);
  void sync(RequestState& r) {
    if (sync_) sync_(r);
  }

  SchedulerConfig cfg_;
  KVCacheManager& kv_;
  TokenSync sync_;
  std::unordered_map<Handle, RequestState> requests_;  // node-based: states never move
  std::unordered_map<std::string, Handle> by_id_;
  std::set<WaitKey> waiting_;
  std::vector<RequestState*> running_;  // by seniority: most junior last
  StepPlan plan_;
  Handle next_handle_ = 1;
  int64_t next_seniority_ = 0;
  uint64_t step_ = 0;
  std::vector<RequestState*> snapshot_;  // scratch, reused every step
  std::vector<BlockId> prefix_;          // scratch
};

}  // namespace inflight
