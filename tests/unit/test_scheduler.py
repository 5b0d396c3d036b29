"""The scheduler core (C++ behind inflight.engine.scheduler), the one owner of request state: token
budget, chunked context, batch size, priority, preemption newest-first by recompute, no
starvation, prefix reuse, abort at any point, and the step boundary: update() with 0, 1 and k
tokens per row, roll-back past a stop, a stop in the middle of k tokens, preemption with a
token in flight, and a StepPlan that round-trips through bytes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from inflight import _core
from inflight.config import EngineConfig
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.scheduler import Scheduler, SequenceSpec
from inflight.engine.step_plan import StepPlan, StepResult

BS = 4


class Sim:
    """Steps a Scheduler the way LLMEngine does: schedule, launched, update, finish. Sampled
    token i of a sequence is 1000 + i, so lost or doubled tokens show."""

    def __init__(self, num_blocks: int = 64, reuse: bool = False, **cfg: Any) -> None:
        self.cfg = EngineConfig(model="unused", block_size=BS, enable_kv_cache_reuse=reuse, **cfg)
        self.kv = KVCacheManager(num_blocks, BS, reuse)
        self.s = Scheduler(self.cfg, self.kv)
        self.n = 0
        self.h: dict[str, int] = {}  # id -> handle
        self.ids: dict[int, str] = {}
        self.finished: list[str] = []
        self.outputs: dict[str, list[int]] = {}

    def add(self, rid: str, prompt: int | list[int], max_tokens: int = 4, priority: int = 0,
            **kw: Any) -> int:
        toks = list(range(1, prompt + 1)) if isinstance(prompt, int) else prompt
        h = self.s.add(SequenceSpec(rid, toks, max_tokens, priority, self.n, **kw))
        self.n += 1
        self.h[rid], self.ids[h] = h, rid
        return h

    def id(self, h: int) -> str:
        return self.ids[h]

    def step(self) -> StepPlan:
        plan = self.s.schedule()
        self.last = plan_of(self, plan)  # before any of its requests finish
        if not plan:
            return plan
        self.s.launched(plan)
        toks = [1000 + int(n) for n in plan.rows["num_output"]]
        ev = self.s.update(plan, StepResult.one_per_row(plan.step, toks))
        for i, h in enumerate(ev.handles.tolist()):
            if ev.finish[i]:
                rid = self.id(h)
                self.outputs[rid] = self.s.tokens(h, self.s.state(h)["num_prompt"]).tolist()
                self.s.finish(h)
                self.kv.forget(rid)
                self.finished.append(rid)
        self.s.check_integrity()
        return plan

    def run(self, limit: int = 500) -> list[StepPlan]:
        outs = []
        while self.s.has_work():
            outs.append(self.step())
            assert len(outs) < limit, "no progress"
        self.kv.assert_all_free()
        return outs


def plan_of(sim: Sim, plan: StepPlan) -> list[tuple[str, int, int]]:
    return [(sim.id(h), start, n) for h, start, n, _ in sim.s.entries(plan)]


def test_budget_chunking_and_decodes_first() -> None:
    sim = Sim(max_num_tokens=10)
    sim.add("a", 7)
    sim.add("b", 9)
    assert plan_of(sim, sim.step()) == [("a", 0, 7), ("b", 0, 3)]  # b chunked to the budget
    out = sim.step()
    assert plan_of(sim, out) == [("a", 7, 1), ("b", 3, 6)]  # a decodes first; b's last chunk samples
    assert out.num_samples == 2 and (out.num_tokens, out.num_decodes) == (7, 1)
    st = sim.s.state(sim.h["b"])
    assert (st["num_computed"], st["num_tokens"]) == (9, 10)


def test_without_chunking_a_prompt_over_the_budget_waits() -> None:
    sim = Sim(max_num_tokens=8, enable_chunked_context=False)
    sim.add("big", 9)
    sim.add("small", 3)
    assert not sim.s.schedule()  # the head does not fit: nothing behind it jumps the queue
    assert [sim.id(h) for h in sim.s.waiting] == ["big", "small"]
    sim = Sim(max_num_tokens=10, enable_chunked_context=False)
    for rid in "abc":
        sim.add(rid, 6)
    assert plan_of(sim, sim.step()) == [("a", 0, 6)]
    assert plan_of(sim, sim.step()) == [("a", 6, 1), ("b", 0, 6)]


def test_long_prompt_is_chunked_to_the_budget() -> None:
    sim = Sim(max_num_tokens=8)
    sim.add("a", 30, max_tokens=2)
    plans = []
    while sim.s.has_work():
        sim.step()
        plans.append([n for _, _, n in sim.last])
    assert plans == [[8], [8], [8], [6], [1]]


def test_max_batch_size_and_priority_never_displaces_running() -> None:
    sim = Sim(max_batch_size=1)
    sim.add("low", 3, priority=0)
    sim.step()
    for rid, prio in (("mid", 5), ("high", 9), ("mid2", 5)):
        sim.add(rid, 3, priority=prio)
    assert [sim.id(h) for h in sim.s.waiting] == ["high", "mid", "mid2"]
    assert plan_of(sim, sim.step()) == [("low", 3, 1)]  # running low keeps its slot
    sim.run()
    assert sim.finished == ["low", "high", "mid", "mid2"]


def test_max_utilization_preempts_the_newest_and_loses_no_token() -> None:
    sim = Sim(num_blocks=4, max_num_tokens=64, batch_scheduler_policy="max_utilization")
    a, b = sim.add("a", 4, max_tokens=8), sim.add("b", 4, max_tokens=8)
    assert plan_of(sim, sim.step()) == [("a", 0, 4), ("b", 0, 4)]
    for start in range(4, 8):  # decoding into their second blocks fills the pool
        assert plan_of(sim, sim.step()) == [("a", start, 1), ("b", start, 1)]
    out = sim.step()  # a needs a third block: b (the newest) is preempted
    assert out.preempted == [b] and plan_of(sim, out) == [("a", 8, 1)]
    st = sim.s.state(b)
    assert (st["status"], st["num_computed"], st["num_preemptions"]) == ("preempted", 0, 1)
    assert "b" not in sim.kv.req_blocks
    before = sim.s.tokens(b).tolist()
    while sim.s.state(b)["status"] != "running":
        out = sim.step()
    assert ("b", 0, len(before)) in plan_of(sim, out)  # recomputes every token it had, no more
    assert sim.s.tokens(b).tolist()[: len(before)] == before
    sim.run()
    assert sim.outputs["a"] == sim.outputs["b"] == [1000 + i for i in range(8)]
    assert a not in sim.s and b not in sim.s


def test_the_oldest_request_always_progresses() -> None:
    sim = Sim(num_blocks=6, max_num_tokens=64, batch_scheduler_policy="max_utilization")
    for r in "abcd":
        sim.add(r, 4, max_tokens=12)
    sim.run()
    assert sim.finished == ["a", "b", "c", "d"]


def test_preempted_requests_go_first_by_seniority() -> None:
    sim = Sim(max_num_tokens=64)
    hs = [sim.add(r, 2, max_tokens=50) for r in "abc"]
    sim.step()
    sim.s.preempt(hs[2])
    sim.s.preempt(hs[1])
    sim.add("urgent", 2, priority=100)
    assert [sim.id(h) for h in sim.s.waiting] == ["b", "c", "urgent"]
    assert [sim.id(e[0]) for e in sim.s.entries(sim.step())] == ["a", "b", "c", "urgent"]


def test_guaranteed_no_evict_reserves_room_to_finish() -> None:
    sim = Sim(num_blocks=5, max_num_tokens=64)  # guaranteed_no_evict
    sim.add("a", 4, max_tokens=8)  # needs 3 blocks at most
    sim.add("b", 4, max_tokens=8)  # 3 more: only 2 left after a's reservation
    assert [r for r, _, _ in plan_of(sim, sim.step())] == ["a"]
    outs = sim.run()
    assert not any(o.preempted for o in outs)
    assert sim.outputs["b"] == [1000 + i for i in range(8)]


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
@pytest.mark.parametrize("seed", range(3))
def test_budget_batch_size_and_kv_invariants_under_random_load(seed: int, policy: str) -> None:
    rng = random.Random(seed)
    sim = Sim(num_blocks=16, max_num_tokens=rng.choice([8, 16, 32]), max_batch_size=3,
              batch_scheduler_policy=policy)
    want: dict[str, int] = {}
    preemptions = 0
    for step in range(1000):
        if step < 30 and rng.random() < 0.5:
            want[f"r{step}"] = rng.randint(1, 20)
            sim.add(f"r{step}", rng.randint(1, 40), want[f"r{step}"], priority=rng.choice([0, 0, 1]))
        if not sim.s.has_work():
            continue
        out = sim.step()
        preemptions += len(out.preempted)
        assert out.num_tokens <= sim.cfg.max_num_tokens and len(sim.s.running) <= 3
        sizes = [n for _, _, n in sim.last]
        assert sizes == sorted(sizes, key=lambda x: x != 1)  # decodes first
    sim.kv.assert_all_free()
    assert (preemptions > 0) == (policy == "max_utilization")
    for rid, n in want.items():
        assert sim.outputs[rid] == [1000 + i for i in range(n)]  # none lost or doubled


def test_prefix_reuse_and_context_logits() -> None:
    sim = Sim(reuse=True, max_num_tokens=64)
    prompt = list(range(10, 31))  # 21 tokens: 5 full blocks
    sim.add("first", prompt, max_tokens=2)
    sim.run()
    again = sim.add("again", prompt, max_tokens=2)
    assert plan_of(sim, sim.step()) == [("again", 20, 1)]  # 5 cached blocks, one token left
    assert sim.s.state(again)["num_cached"] == 20
    assert sim.kv.request_block_counts("again") == (5, 1, 6)
    sim.run()
    ctx = sim.add("ctx", prompt, max_tokens=1, context_logits=True)
    plan = sim.s.schedule()
    assert plan_of(sim, plan) == [("ctx", 0, 21)]  # no prefix hit: logits for every position
    assert plan.ctx_rows == {ctx: (0, 21)}


def test_abort_at_any_point() -> None:
    sim = Sim(max_num_tokens=64)
    w = sim.add("waiting", 3)
    assert sim.s.finish(w)  # before it ever ran
    r, other = sim.add("running", 3, max_tokens=10), sim.add("other", 3, max_tokens=10)
    plan = sim.s.schedule()
    assert sim.s.finish(r)  # between planning and launch
    with pytest.raises(ValueError, match="left before it ran"):
        sim.s._core.build_step(plan.step, sim.s.buffers.views)
    sim.s.launched(plan)
    ev = sim.s.update(plan, StepResult.one_per_row(plan.step, [5, 6]))  # r's row is dropped
    assert ev.handles.tolist() == [other] and ev.rows.tolist() == [1]
    assert not sim.s.finish(r)  # twice: harmless
    sim.s.check_integrity()
    sim.run()


def test_update_appends_k_tokens_and_a_stop_in_the_middle_rolls_back() -> None:
    sim = Sim()
    h = sim.add("a", 3, max_tokens=10, end_ids=(99,))
    plan = sim.s.schedule()
    sim.s.launched(plan)
    ev = sim.s.update(plan, StepResult(plan.step, np.array([5, 6, 7]), np.array([0, 3])))
    assert ev.tokens.tolist() == [5, 6, 7] and ev.output_len.tolist() == [3]
    assert sim.s.state(h)["num_computed"] == 3  # 6 and 7 are computed by the next step
    plan = sim.s.schedule()
    assert plan_of(sim, plan) == [("a", 3, 3)]
    sim.s.launched(plan)
    ev = sim.s.update(plan, StepResult(plan.step, np.array([8, 99, 9]), np.array([0, 3])))
    assert ev.finish.tolist() == [1] and ev.stop_token.tolist() == [99]
    assert sim.s.tokens(h).tolist() == [1, 2, 3, 5, 6, 7, 8, 99]  # 9 rolled back


def test_update_with_no_token_computes_the_last_position_again() -> None:
    sim = Sim()
    h = sim.add("a", 3, max_tokens=4)
    plan = sim.s.schedule()
    sim.s.launched(plan)
    ev = sim.s.update(plan, StepResult(plan.step, np.zeros(0, np.int64), np.array([0, 0])))
    assert ev.output_len.tolist() == [0] and sim.s.state(h)["pending"] == 0
    assert plan_of(sim, sim.s.schedule()) == [("a", 2, 1)]


def test_stop_sequence_cut_reports_from_where_the_output_changed() -> None:
    sim = Sim()
    h = sim.add("a", 2, max_tokens=10, end_ids=(99,), stop_sequences=((7, 8),), min_tokens=2)
    outs = []
    for tok in (99, 7, 8):  # 99 ignored under min_tokens; 7 8 match and are cut
        plan = sim.s.schedule()
        sim.s.launched(plan)
        outs.append(sim.s.update(plan, StepResult.one_per_row(plan.step, [tok])))
    assert outs[0].finish.tolist() == [0]
    last = outs[-1]
    assert last.finish.tolist() == [1] and last.stop_sequence.tolist() == [0]
    assert (last.start.tolist(), last.output_len.tolist(), last.tokens.tolist()) == ([1], [1], [])
    assert sim.s.tokens(h).tolist() == [1, 2, 99]


def test_overlapped_steps_fill_pending_slots_in_order() -> None:
    sim = Sim()
    h = sim.add("a", 3, max_tokens=2)
    p1 = sim.s.schedule()
    sim.s.launched(p1)
    p2 = sim.s.schedule()  # planned before step 1's token is known
    assert p2.rows["input_pending"].tolist() == [True] and p2.input_ids.tolist() == [-1]
    sim.s.launched(p2)
    assert sim.s.state(h)["pending"] == 2
    with pytest.raises(RuntimeError, match="in flight"):
        sim.s.schedule()
    assert sim.s.update(p1, StepResult.one_per_row(p1.step, [5])).finish.tolist() == [0]
    assert sim.s.update(p2, StepResult.one_per_row(p2.step, [6])).finish.tolist() == [2]
    assert sim.s.tokens(h).tolist() == [1, 2, 3, 5, 6]
    with pytest.raises(RuntimeError):
        sim.s.update(p2, StepResult.one_per_row(p2.step, [6]))  # once per step


def test_preemption_with_a_token_in_flight_keeps_the_token() -> None:
    sim = Sim()
    h = sim.add("a", 3, max_tokens=5)
    plan = sim.s.schedule()
    sim.s.launched(plan)
    sim.s.preempt(h)  # the launched step still owns its row
    ev = sim.s.update(plan, StepResult.one_per_row(plan.step, [5]))
    assert ev.handles.tolist() == [h] and sim.s.tokens(h).tolist() == [1, 2, 3, 5]
    assert plan_of(sim, sim.s.schedule()) == [("a", 0, 4)]  # recompute, with the token


def test_step_plan_round_trips_through_bytes() -> None:
    sim = Sim(max_num_tokens=16)
    sim.add("a", 7)
    sim.add("b", 5, context_logits=True,
            sampling=(0.7, 5, 0.9, 0.05, 1.1, 0.2, -0.3, 2))
    plan = sim.s.schedule()
    data = plan.to_bytes()
    back = StepPlan.from_bytes(data)
    assert back.to_bytes() == data and back.buffers is None
    for name, arr in plan.arrays.items():
        assert np.array_equal(back.arrays[name], arr) and back.arrays[name].dtype == arr.dtype
    for name, arr in plan.rows.items():
        assert np.array_equal(back.rows[name], arr)
    assert back.ctx_rows == plan.ctx_rows and back.step == plan.step
    assert back.rows["top_k"].tolist() == [0, 5] and back.rows["logprobs"].tolist() == [-1, 2]
    with pytest.raises(ValueError, match="magic"):
        StepPlan.from_bytes(b"nope" + data)
    with pytest.raises(ValueError, match="trailing"):
        StepPlan.from_bytes(data + b"x")


def test_check_integrity_and_bad_input() -> None:
    sim = Sim()
    sim.add("a", 6, max_tokens=5)
    sim.step()
    sim.kv.free("a")  # corrupt: the KV manager forgets a running request's blocks
    sim.kv.check_integrity()  # consistent on its own ...
    with pytest.raises(AssertionError, match="a"):
        sim.s.check_integrity()  # ... but not with the scheduler
    sim = Sim()
    sim.add("a", 3)
    with pytest.raises(ValueError, match="already scheduled"):
        sim.add("a", 3)
    with pytest.raises(ValueError, match="only a running request"):
        sim.s.preempt(12345)
    with pytest.raises(ValueError, match="batch_scheduler_policy"):
        _core.Scheduler(sim.kv, 8, 1, True, "fifo")
