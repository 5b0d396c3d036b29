// Scheduler step planner and request owner: budget, chunking, batch size, priority,
// preemption newest-first, no starvation, abort at any point, update() with 0/1/k tokens,
// stop rules and roll-back, an overlapped step, and a random stress run with integrity checks.
#include <map>
#include <random>

#include "check.h"
#include "inflight/scheduler.h"

using namespace inflight;

namespace {

struct Sim {
  KVCacheManager kv;
  Scheduler s;
  std::map<Handle, int64_t> max_out;  // requested output tokens
  std::map<Handle, int64_t> prompt;
  int64_t n = 0;

  Sim(int32_t blocks, SchedulerConfig cfg, bool reuse = false) : kv(blocks, 4, reuse), s(cfg, kv) {}

  Handle add(int len, int max_tokens, int priority = 0) {
    RequestSpec spec;
    spec.id = "r" + std::to_string(n);
    for (int i = 0; i < len; ++i) spec.tokens.push_back(i + 1);
    spec.num_prompt_tokens = len;
    spec.max_total_tokens = len + max_tokens;
    spec.priority = priority;
    spec.arrival_order = n++;
    Handle h = s.add(std::move(spec));
    max_out[h] = max_tokens;
    prompt[h] = len;
    return h;
  }

  // One engine step: plan, "run", launched, update with one token per sampling row; the core
  // finishes requests at their length limit and the caller frees them.
  std::vector<std::tuple<Handle, int64_t, int32_t>> step() {
    const StepPlan& plan = s.schedule();
    std::vector<std::tuple<Handle, int64_t, int32_t>> out;
    std::vector<Token> toks;
    std::vector<int64_t> offs{0};
    for (const auto& e : plan.scheduled) {
      out.emplace_back(e.req->handle, e.start, e.num_new);
      if (e.samples) {
        toks.push_back(1000 + e.req->num_tokens());
        offs.push_back(static_cast<int64_t>(toks.size()));
      }
    }
    if (!plan.scheduled.empty()) {
      s.launched(plan.step);
      const StepEvents& ev = s.update({plan.step, toks, offs});
      std::vector<Handle> done;
      for (const auto& e : ev.events) {
        if (e.finish != FinishReason::kNone) done.push_back(e.handle);
      }
      for (Handle h : done) s.finish(h);
    }
    s.check_integrity();
    return out;
  }
};

SchedulerConfig config(int64_t budget, int32_t batch = 256, Policy p = Policy::kGuaranteedNoEvict,
                       bool chunked = true) {
  return SchedulerConfig{budget, batch, chunked, p};
}

}  // namespace

TEST(budget_chunking_decodes_first) {
  Sim sim(64, config(10));
  Handle a = sim.add(7, 4), b = sim.add(9, 4);
  using Step = std::vector<std::tuple<Handle, int64_t, int32_t>>;
  CHECK(sim.step() == (Step{{a, 0, 7}, {b, 0, 3}}));
  CHECK(sim.step() == (Step{{a, 7, 1}, {b, 3, 6}}));
  CHECK_EQ(sim.s.plan().num_decodes, 1);
  CHECK_EQ(sim.s.plan().num_tokens, int64_t{7});
}

TEST(no_chunking_blocks_the_head) {
  Sim sim(64, config(8, 256, Policy::kGuaranteedNoEvict, false));
  sim.add(9, 1);
  sim.add(2, 1);
  CHECK(sim.step().empty());
  CHECK_EQ(sim.s.num_waiting(), size_t{2});
}

TEST(batch_size_and_priority) {
  Sim sim(64, config(64, 1));
  Handle low = sim.add(3, 2, 0);
  sim.step();
  Handle mid = sim.add(3, 1, 5), high = sim.add(3, 1, 9);
  CHECK_EQ(sim.s.waiting(), (std::vector<Handle>{high, mid}));
  CHECK(std::get<0>(sim.step().at(0)) == low);  // never displaced; done after this step
  CHECK(std::get<0>(sim.step().at(0)) == high);
  CHECK(std::get<0>(sim.step().at(0)) == mid);
}

TEST(preemption_newest_first_keeps_tokens) {
  Sim sim(4, config(64, 256, Policy::kMaxUtilization));
  Handle a = sim.add(4, 8), b = sim.add(4, 8);
  for (int i = 0; i < 5; ++i) sim.step();  // prefill, then decodes into the second blocks
  sim.step();                              // a needs a third block
  const StepPlan& plan = sim.s.plan();
  CHECK_EQ(plan.preempted, (std::vector<Handle>{b}));
  RequestState* rb = sim.s.get(b);
  CHECK(rb->status == RequestStatus::kPreempted && rb->num_computed == 0 && !rb->blocks->allocated);
  CHECK_EQ(rb->num_tokens(), int64_t{9});  // prompt + 5 sampled: kept for recompute
  CHECK(sim.s.get(a)->num_preemptions == 0);
  for (int i = 0; i < 100 && (sim.s.num_running() || sim.s.num_waiting()); ++i) sim.step();
  CHECK_EQ(sim.s.num_running() + sim.s.num_waiting(), size_t{0});
  CHECK_EQ(sim.kv.num_free_blocks(), 4);
}

TEST(finish_and_preempt_outside_schedule_mark_the_plan) {
  Sim sim(64, config(64));
  Handle a = sim.add(3, 5), b = sim.add(3, 5);
  const StepPlan& plan = sim.s.schedule();
  CHECK(plan.intact);
  CHECK(sim.s.finish(a));
  CHECK(!plan.intact && plan.scheduled[0].req == nullptr);
  sim.s.launched(plan.step);  // skips a
  CHECK_EQ(sim.s.get(b)->num_computed, int64_t{3});
  CHECK_EQ(sim.s.get(b)->pending, 1);
  std::vector<Token> t{7, 8};
  std::vector<int64_t> offs{0, 1, 2};
  const StepEvents& ev = sim.s.update({plan.step, t, offs});  // a's row is dropped
  CHECK_EQ(ev.events.size(), size_t{1});
  CHECK_EQ(sim.s.get(b)->tokens.back(), Token{8});
  CHECK(!sim.s.finish(a));
  sim.s.preempt(b);
  CHECK(sim.s.get(b)->status == RequestStatus::kPreempted);
  CHECK_THROWS(sim.s.preempt(b), std::invalid_argument);
  sim.s.check_integrity();
}

namespace {

RequestSpec spec_of(const std::string& id, int prompt, int max_tokens, StopRules stop = {}) {
  RequestSpec spec;
  spec.id = id;
  for (int i = 0; i < prompt; ++i) spec.tokens.push_back(i + 1);
  spec.num_prompt_tokens = prompt;
  spec.max_total_tokens = prompt + max_tokens;
  spec.stop = std::move(stop);
  return spec;
}

// Runs one step of a single-request scheduler and feeds `sampled` as its row's result.
const StepEvents& step_with(Scheduler& s, std::vector<Token> sampled) {
  static std::vector<Token> toks;
  static std::vector<int64_t> offs;
  const StepPlan& plan = s.schedule();
  s.launched(plan.step);
  toks = std::move(sampled);
  offs = {0, static_cast<int64_t>(toks.size())};
  return s.update({plan.step, toks, offs});
}

}  // namespace

TEST(update_appends_k_tokens_and_stops_in_the_middle) {
  KVCacheManager kv(64, 4, false);
  Scheduler s(config(64), kv);
  Handle h = s.add(spec_of("a", 3, 10, StopRules{{99}, {}, 0, false}));
  const StepEvents& e1 = step_with(s, {5, 6, 7});  // k = 3 tokens for one row
  CHECK_EQ(e1.events.at(0).output_len, int64_t{3});
  CHECK(e1.tokens == (std::vector<Token>{5, 6, 7}));
  CHECK_EQ(s.get(h)->num_computed, int64_t{3});  // 6 and 7 are computed next step
  const StepEvents& e2 = step_with(s, {8, 99, 9});  // the end id in the middle: 9 rolls back
  CHECK(e2.events.at(0).finish == FinishReason::kStop);
  CHECK_EQ(e2.events.at(0).stop_token, Token{99});
  CHECK(s.get(h)->tokens == (std::vector<Token>{1, 2, 3, 5, 6, 7, 8, 99}));
  CHECK(s.finish(h));
  CHECK_EQ(kv.num_free_blocks(), 64);
}

TEST(update_with_no_token_recomputes_the_last_position) {
  KVCacheManager kv(64, 4, false);
  Scheduler s(config(64), kv);
  Handle h = s.add(spec_of("a", 3, 4));
  const StepEvents& ev = step_with(s, {});
  CHECK_EQ(ev.events.at(0).output_len, int64_t{0});
  CHECK_EQ(s.get(h)->num_tokens(), int64_t{3});
  const StepPlan& plan = s.schedule();
  CHECK_EQ(plan.scheduled.at(0).start, int64_t{2});  // position 2 again, and it samples
  CHECK(plan.scheduled.at(0).samples);
}

TEST(stop_sequences_min_tokens_and_length) {
  KVCacheManager kv(64, 4, false);
  Scheduler s(config(64), kv);
  // the stop sequence [7, 8] is cut (not kept); min_tokens 2 ignores the early end id 99
  Handle h = s.add(spec_of("a", 2, 10, StopRules{{99}, {{7, 8}}, 2, false}));
  CHECK(step_with(s, {99}).events.at(0).finish == FinishReason::kNone);
  step_with(s, {7});
  const StepEvents& ev = step_with(s, {8});
  CHECK(ev.events.at(0).finish == FinishReason::kStop);
  CHECK_EQ(ev.events.at(0).stop_sequence, 0);
  CHECK_EQ(ev.events.at(0).output_len, int64_t{1});  // 99 stays, 7 8 are cut
  CHECK_EQ(ev.events.at(0).from, int64_t{1});
  CHECK(s.finish(h));
  Handle g = s.add(spec_of("b", 2, 2));
  step_with(s, {4});
  CHECK(step_with(s, {4}).events.at(0).finish == FinishReason::kLength);
  CHECK(s.finish(g));
}

TEST(overlapped_step_fills_the_first_pending_slot) {
  KVCacheManager kv(64, 4, false);
  Scheduler s(config(64), kv);
  Handle h = s.add(spec_of("a", 3, 2));
  const StepPlan& p1 = s.schedule();
  uint64_t s1 = p1.step;
  s.launched(s1);
  const StepPlan& p2 = s.schedule();  // planned before step 1's token is known
  CHECK_EQ(p2.scheduled.at(0).start, int64_t{3});
  uint64_t s2 = p2.step;
  s.launched(s2);
  CHECK_EQ(s.get(h)->pending, 2);
  CHECK_THROWS(s.schedule(), std::logic_error);  // step 1 still in flight
  std::vector<Token> t1{5}, t2{6};
  std::vector<int64_t> offs{0, 1};
  CHECK(s.update({s1, t1, offs}).events.at(0).finish == FinishReason::kNone);
  CHECK(s.update({s2, t2, offs}).events.at(0).finish == FinishReason::kLength);
  CHECK(s.get(h)->tokens == (std::vector<Token>{1, 2, 3, 5, 6}));
  CHECK_THROWS(s.update({s2, t2, offs}), std::logic_error);  // once per step
}

TEST(random_stress_keeps_every_invariant) {
  for (Policy policy : {Policy::kGuaranteedNoEvict, Policy::kMaxUtilization}) {
    for (bool reuse : {false, true}) {
      std::mt19937 rng(7);
      Sim sim(24, config(16, 4, policy), reuse);
      for (int step = 0; step < 400; ++step) {
        if (rng() % 3 == 0 && sim.n < 120) sim.add(1 + rng() % 20, 1 + rng() % 8, rng() % 3);
        if (rng() % 17 == 0 && sim.s.num_running() > 0) sim.s.finish(sim.s.running().front());  // abort
        sim.step();
        CHECK(sim.s.plan().num_tokens <= 16);
        if (policy == Policy::kGuaranteedNoEvict) CHECK(sim.s.plan().preempted.empty());
      }
      for (int i = 0; i < 2000 && (sim.s.num_running() || sim.s.num_waiting()); ++i) sim.step();
      CHECK_EQ(sim.s.num_running() + sim.s.num_waiting(), size_t{0});
      CHECK_EQ(sim.kv.num_free_blocks(), 24);
    }
  }
}

TEST(context_logits_requests_skip_the_prefix_cache) {
  Sim sim(64, config(64), /*reuse=*/true);
  sim.add(13, 1);
  sim.step();  // computes and caches 3 full blocks of the prompt 1..13
  RequestSpec spec;
  spec.id = "ctx";
  for (int i = 1; i <= 13; ++i) spec.tokens.push_back(i);
  spec.num_prompt_tokens = 13;
  spec.max_total_tokens = 14;
  spec.context_logits = true;
  sim.s.add(spec);
  spec.id = "plain";
  spec.context_logits = false;
  sim.s.add(spec);
  const StepPlan& plan = sim.s.schedule();
  CHECK_EQ(plan.scheduled.size(), size_t{2});
  CHECK_EQ(plan.scheduled[0].req->id, std::string("plain"));  // a hit leaves 1 token: a "decode"
  CHECK_EQ(plan.scheduled[0].start, int64_t{12});
  CHECK_EQ(plan.scheduled[1].req->id, std::string("ctx"));
  CHECK_EQ(plan.scheduled[1].start, int64_t{0});
}

TEST(bad_config) {
  KVCacheManager kv(4, 4, false);
  CHECK_THROWS(Scheduler(config(0), kv), std::invalid_argument);
  CHECK_THROWS(parse_policy("fifo"), std::invalid_argument);
  Scheduler s(config(8), kv);
  CHECK_THROWS(s.add(RequestSpec{}), std::invalid_argument);
}

TEST_MAIN()
