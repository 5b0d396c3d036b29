"""Scheduler policy on its own (no model): decode-first order, the token budget, the batch
size cap, priority order, preemption and admission under both policies."""

from __future__ import annotations

import random
from typing import Any

import pytest
from inflight.config import EngineConfig
from inflight.kv_cache_manager import KVCacheManager
from inflight.request import Request, RequestStatus
from inflight.sampling_params import SamplingParams
from inflight.scheduler import Scheduler, SchedulerOutput

BS = 4


class Sim:
    """A Scheduler over a KVCacheManager, stepped the way the engine steps it."""

    def __init__(self, num_blocks: int = 64, **cfg: Any) -> None:
        self.cfg = EngineConfig(model="unused", block_size=BS, **cfg)
        self.kv = KVCacheManager(num_blocks, BS)
        self.s = Scheduler(self.cfg, self.kv)
        self.order = 0
        self.finished: list[str] = []

    def add(self, rid: str, prompt_len: int, max_tokens: int = 4, priority: int = 0) -> Request:
        params = SamplingParams(max_tokens=max_tokens)
        req = Request(rid, list(range(1, prompt_len + 1)), params, max_tokens, frozenset(),
                      priority=priority, arrival_order=self.order)
        self.order += 1
        self.s.add(req)
        return req

    def step(self) -> SchedulerOutput:
        out = self.s.schedule()
        for sr in out.scheduled:  # the runner computes exactly the planned tokens
            table = self.kv.block_table(sr.request.request_id)
            assert len(table) * BS >= sr.start + sr.num_new_tokens
        self.s.advance(out.scheduled)
        for sr in out.scheduled:
            req = sr.request
            if sr.samples:
                req.append_token(1000 + req.num_output_tokens)
                if req.num_output_tokens >= req.max_tokens:
                    self.s.finish(req, RequestStatus.FINISHED_LENGTH)
                    self.finished.append(req.request_id)
        self.kv.check_integrity()
        return out

    def run(self, limit: int = 500) -> list[SchedulerOutput]:
        outs = []
        while self.s.has_work():
            outs.append(self.step())
            assert len(outs) < limit, "no progress"
        self.kv.assert_all_free()
        return outs


def _plan(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(s.request.request_id, s.num_new_tokens) for s in out.scheduled]


def test_decodes_come_first() -> None:
    sim = Sim(max_num_tokens=64)
    sim.add("a", 5)
    sim.add("b", 7)
    assert _plan(sim.step()) == [("a", 5), ("b", 7)]  # two prefills
    sim.add("c", 9)
    out = sim.step()
    assert _plan(out) == [("a", 1), ("b", 1), ("c", 9)]
    assert out.num_decodes == 2 and out.num_tokens == 11


def test_decodes_first_after_preemption_readmission() -> None:
    # a preempted request recomputes (a multi-token prefill) while others decode
    sim = Sim(num_blocks=5, max_num_tokens=64, batch_scheduler_policy="max_utilization")
    sim.add("a", 4, max_tokens=8)
    sim.add("b", 4, max_tokens=8)
    for out in sim.run():
        sizes = [s.num_new_tokens for s in out.scheduled]
        n_dec = sum(1 for x in sizes if x == 1)
        assert all(x == 1 for x in sizes[:n_dec]) and all(x > 1 for x in sizes[n_dec:])
    assert sorted(sim.finished) == ["a", "b"]


def test_token_budget_with_chunking() -> None:
    sim = Sim(max_num_tokens=10, enable_chunked_context=True)
    for rid in "abc":
        sim.add(rid, 6)
    assert _plan(sim.step()) == [("a", 6), ("b", 4)]  # b gets the rest as a chunk
    assert _plan(sim.step()) == [("a", 1), ("b", 2), ("c", 6)]
    # without chunking a prompt that does not fit the rest of the budget waits
    sim = Sim(max_num_tokens=10, enable_chunked_context=False)
    for rid in "abc":
        sim.add(rid, 6)
    assert _plan(sim.step()) == [("a", 6)]
    assert _plan(sim.step()) == [("a", 1), ("b", 6)]


def test_long_prompt_is_chunked_to_the_budget() -> None:
    sim = Sim(max_num_tokens=8)
    req = sim.add("a", 30, max_tokens=2)
    plans = [_plan(o) for o in sim.run()]
    assert plans == [[("a", 8)], [("a", 8)], [("a", 8)], [("a", 6)], [("a", 1)]]
    assert req.num_computed_tokens == 31


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
@pytest.mark.parametrize("seed", range(4))
def test_budget_batch_size_and_kv_invariants_under_random_load(seed: int, policy: str) -> None:
    rng = random.Random(seed)
    # 16 blocks of 4: the largest request (40 + 20 tokens) fits alone, a few do not
    sim = Sim(num_blocks=16, max_num_tokens=rng.choice([8, 16, 32]), max_batch_size=3,
              batch_scheduler_policy=policy, enable_chunked_context=True)
    reqs = []
    preemptions = 0
    for step in range(1000):
        if step < 30 and rng.random() < 0.5:
            reqs.append(sim.add(f"r{step}", rng.randint(1, 40), rng.randint(1, 20),
                                priority=rng.choice([0, 0, 1])))
        if not sim.s.has_work():
            continue
        out = sim.step()
        preemptions += len(out.preempted)
        assert out.num_tokens <= sim.cfg.max_num_tokens
        assert len(sim.s.running) <= 3
        ids = [s.request.request_id for s in out.scheduled]
        assert len(ids) == len(set(ids))
        sizes = [s.num_new_tokens for s in out.scheduled]
        assert sizes == sorted(sizes, key=lambda x: x != 1)  # decodes first
    assert not sim.s.has_work()
    sim.kv.assert_all_free()
    assert (preemptions > 0) == (policy == "max_utilization")
    for r in reqs:
        assert r.num_output_tokens == r.max_tokens
        assert r.output_token_ids == [1000 + i for i in range(r.max_tokens)]  # none lost/doubled


def test_max_batch_size() -> None:
    sim = Sim(max_batch_size=2)
    for rid in "abcde":
        sim.add(rid, 3, max_tokens=2)
    out = sim.step()
    assert _plan(out) == [("a", 3), ("b", 3)]
    assert [r.request_id for r in sim.s.waiting] == ["c", "d", "e"]
    assert _plan(sim.step()) == [("a", 1), ("b", 1)]  # both finish now
    assert _plan(sim.step()) == [("c", 3), ("d", 3)]
    sim.run()
    assert sim.finished == list("abcde")


def test_waiting_queue_priority_order() -> None:
    sim = Sim(max_batch_size=1)
    sim.add("low", 3, priority=0)
    sim.add("high", 3, priority=5)
    sim.add("mid", 3, priority=1)
    sim.add("high2", 3, priority=5)
    sim.add("low2", 3, priority=0)
    assert [r.request_id for r in sim.s.waiting] == ["high", "high2", "mid", "low", "low2"]
    sim.run()
    assert sim.finished == ["high", "high2", "mid", "low", "low2"]


def test_running_requests_are_not_displaced_by_higher_priority() -> None:
    sim = Sim(max_batch_size=1)
    sim.add("first", 3, max_tokens=3)
    sim.step()
    sim.add("urgent", 3, priority=9)
    assert _plan(sim.step()) == [("first", 1)]
    sim.run()
    assert sim.finished == ["first", "urgent"]


def test_max_utilization_preempts_the_newest() -> None:
    # 6 blocks: a and b (4-token prompts) take one block each and then grow
    sim = Sim(num_blocks=6, batch_scheduler_policy="max_utilization")
    a = sim.add("a", 4, max_tokens=12)
    b = sim.add("b", 4, max_tokens=12)
    c = sim.add("c", 4, max_tokens=12)
    preempted = []
    for _ in range(100):
        if not sim.s.has_work():
            break
        out = sim.step()
        if out.preempted:
            preempted += [r.request_id for r in out.preempted]
            victim = out.preempted[0]
            assert victim.status is RequestStatus.PREEMPTED
            assert victim.num_computed_tokens == 0 and victim.request_id not in sim.kv.req_blocks
            assert sim.s.waiting[0] is victim  # resumes first
            assert all(s.request is not victim for s in out.scheduled)
            assert not any(s.request.status is RequestStatus.WAITING for s in out.scheduled)
    assert preempted and preempted[0] == "c"  # the newest goes first
    assert c.num_preemptions >= 1 and a.num_preemptions == 0
    assert sim.finished[0] == "a"
    assert sorted(sim.finished) == ["a", "b", "c"]
    assert b.output_token_ids == [1000 + i for i in range(12)]
    sim.kv.assert_all_free()


def test_guaranteed_no_evict_admits_only_what_can_finish() -> None:
    # each request needs (4 + 12) / 4 = 4 blocks to finish; 9 blocks hold two of them
    sim = Sim(num_blocks=9, batch_scheduler_policy="guaranteed_no_evict")
    for rid in "abc":
        sim.add(rid, 4, max_tokens=12)
    out = sim.step()
    assert _plan(out) == [("a", 4), ("b", 4)]
    assert [r.request_id for r in sim.s.waiting] == ["c"]
    outs = sim.run()
    assert not any(o.preempted for o in outs)
    assert sim.finished == ["a", "b", "c"]


def test_finish_removes_a_waiting_or_running_request() -> None:
    sim = Sim(max_batch_size=1)
    a = sim.add("a", 3, max_tokens=5)
    b = sim.add("b", 3, max_tokens=5)
    sim.step()
    sim.s.finish(b, RequestStatus.FINISHED_ABORTED)  # still waiting
    assert not sim.s.waiting and b.is_finished
    sim.s.finish(a, RequestStatus.FINISHED_ABORTED)  # running, holds blocks
    assert not sim.s.running and not sim.s.has_work()
    sim.kv.assert_all_free()


def test_check_integrity_detects_blocks_freed_behind_the_schedulers_back() -> None:
    sim = Sim()
    sim.add("a", 6, max_tokens=5)
    sim.step()
    sim.s.check_integrity()
    sim.kv.free("a")  # corrupt: the KV manager forgets a running request's blocks
    sim.kv.check_integrity()  # consistent on its own ...
    with pytest.raises(AssertionError, match="a"):
        sim.s.check_integrity()  # ... but not with the scheduler
