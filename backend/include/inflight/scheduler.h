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
//
// One owner: the core holds each request's tokens, counters, status and stop rules; callers
// hold a Handle. A step is schedule() -> (the model runs) -> launched(step) -> update(step,
// result): launched() moves the counters and gives every sampling row a pending slot (so an
// overlapped engine can plan step N+1 before step N's tokens reach the host), update() fills
// the slots with 0..k sampled tokens, applies the token stop rules and length limits, rolls
// back what lies past a stop, and returns one event per sampled row.
#pragma once

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
// Why a request finished by the token rules (aborts and errors are the caller's: finish()).
enum class FinishReason : uint8_t { kNone, kStop, kLength };

// Token-level stop rules, applied by update() to every new token in order.
struct StopRules {
  std::vector<Token> end_ids;                      // eos (unless ignored) + stop token ids
  std::vector<std::vector<Token>> stop_sequences;  // multi-token stop words
  int32_t min_tokens = 0;             // no stop before this many output tokens
  bool keep_stop_sequence = false;    // keep a matched stop sequence's tokens in the output
};

// Per-request sampling arguments the step plan carries for each sampling row.
struct SamplingArgs {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t logprobs = -1;  // -1: none; k >= 0: the chosen token's and the top-k logprobs
};

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
  StopRules stop;
  SamplingArgs sampling;
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
  StopRules stop;
  SamplingArgs sampling;
  RequestStatus status = RequestStatus::kWaiting;
  FinishReason finish = FinishReason::kNone;
  Token stop_token = -1;         // the end id that stopped it
  int32_t stop_sequence = -1;    // index of the stop sequence that stopped it
  int32_t pending = 0;           // trailing slots in `tokens` whose sampled value is not known yet
  int32_t num_preemptions = 0;
  int64_t num_cached = -1;       // prefix-cache hit at first admission (tokens); -1 until then
  int64_t seniority = -1;        // number of its first admission; -1 until admitted
  uint64_t scheduled_step = 0;   // the last step that scheduled it

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_output() const { return num_tokens() - num_prompt; }
  int64_t num_known() const { return num_tokens() - pending; }  // tokens whose value is known
};

// One sampled row's outcome of update(): the request's output after the update is
// [0, output_len); `tokens` are its output tokens from `from` on (from <= the length before:
// a stop sequence cut may reach back into tokens reported earlier).
struct StepEvent {
  Handle handle = 0;
  int32_t row = 0;  // the plan's sampling row
  int64_t from = 0;
  int64_t output_len = 0;
  FinishReason finish = FinishReason::kNone;
  Token stop_token = -1;
  int32_t stop_sequence = -1;
  size_t token_begin = 0, token_end = 0;  // range in StepEvents::tokens
};

struct StepEvents {
  std::vector<StepEvent> events;
  std::vector<Token> tokens;
};

// What the worker sampled: for the k-th sampling row of a plan, tokens [offsets[k],
// offsets[k + 1]) (0..n tokens; 0 rolls the row back so its last position is computed again).
struct StepResultView {
  uint64_t step = 0;
  Span<const Token> tokens;
  Span<const int64_t> offsets;  // num_samples + 1
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
  bool intact = true;     // false once an entry's request left before update()
  bool launched = false;  // launched() ran: counters moved, pending slots given
  bool updated = false;   // update() ran
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, KVCacheManager& kv);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Handle add(RequestSpec spec);
  RequestState* get(Handle h);
  const RequestState* get(Handle h) const;
  RequestState* find(const std::string& id);
  // Tokens change only through update() (append, fill, roll back, stop cut) and truncate.
  void truncate_tokens(RequestState& r, size_t n);

  const StepPlan& schedule();
  const StepPlan& plan() const { return plans_[cur_]; }
  // The plan of `step` if it is one of the last two (an overlapped engine updates step N
  // after planning N + 1); throws otherwise.
  const StepPlan& plan_of(uint64_t step) const;
  // The model ran `step`: counters move to the end of each scheduled chunk, every sampling
  // row gets a pending slot, and full blocks of known tokens are offered to the prefix cache.
  void launched(uint64_t step);
  // The sampled tokens of a launched step: fills pending slots, applies the stop rules and
  // length limits, returns one event per row whose request is still here.
  const StepEvents& update(const StepResultView& result);
  // Stop a request by a rule the core does not see (a stop string in the text): it keeps
  // its first `output_len` output tokens and finishes kStop. The caller then calls finish().
  void stop_at(Handle h, int64_t output_len);
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

  StepPlan& plan_ref(uint64_t step);
  void apply_stops(RequestState& r, int64_t checked_from);
  void cache_known(RequestState& r);
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

  SchedulerConfig cfg_;
  KVCacheManager& kv_;
  std::unordered_map<Handle, RequestState> requests_;  // node-based: states never move
  std::unordered_map<std::string, Handle> by_id_;
  std::set<WaitKey> waiting_;
  std::vector<RequestState*> running_;  // by seniority: most junior last
  StepPlan plans_[2];  // the latest plan and the one before it
  int cur_ = 0;
  StepEvents events_;  // scratch of update(), reused every step
  Handle next_handle_ = 1;
  int64_t next_seniority_ = 0;
  uint64_t step_ = 0;
  std::vector<RequestState*> snapshot_;  // scratch, reused every step
  std::vector<BlockId> prefix_;          // scratch
};

}  // namespace inflight
