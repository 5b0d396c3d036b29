// Scheduler step planner: budget, chunking, batch size, priority, preemption newest-first,
// no starvation, abort at any point, and a random stress run with integrity checks.
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

  // One engine step: plan, "run", advance, sample for requests that reached their end.
  std::vector<std::tuple<Handle, int64_t, int32_t>> step() {
    const StepPlan& plan = s.schedule();
    std::vector<std::tuple<Handle, int64_t, int32_t>> out;
    std::vector<Handle> sampled;
    for (const auto& e : plan.scheduled) {
      out.emplace_back(e.req->handle, e.start, e.num_new);
      if (e.samples) sampled.push_back(e.req->handle);
    }
    s.advance();
    for (Handle h : sampled) {
      RequestState* r = s.get(h);
      Token t = 1000 + r->num_tokens();
      s.append_tokens(*r, Span<const Token>(&t, 1));
      if (r->num_tokens() - prompt[h] >= max_out[h]) s.finish(h);
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
  sim.s.schedule();
  CHECK(sim.s.plan().intact);
  CHECK(sim.s.finish(a));
  CHECK(!sim.s.plan().intact && sim.s.plan().scheduled[0].req == nullptr);
  sim.s.advance();  // skips a
  CHECK_EQ(sim.s.get(b)->num_computed, int64_t{3});
  CHECK(!sim.s.finish(a));
  sim.s.preempt(b);
  CHECK(sim.s.get(b)->status == RequestStatus::kPreempted);
  CHECK_THROWS(sim.s.preempt(b), std::invalid_argument);
  sim.s.check_integrity();
}

TEST(token_sync_hook_runs_before_planning) {
  Sim sim(64, config(64));
  Handle a = sim.add(3, 5);
  int calls = 0;
  sim.s.set_token_sync([&](RequestState& r) {
    ++calls;
    if (r.num_tokens() == 3) {
      Token t = 42;
      sim.s.append_tokens(r, Span<const Token>(&t, 1));
    }
  });
  const StepPlan& plan = sim.s.schedule();
  CHECK_EQ(calls, 1);
  CHECK_EQ(plan.scheduled.at(0).num_new, 4);  // saw the synced token
  CHECK_EQ(sim.s.get(a)->tokens.back(), Token{42});
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
