"""The C++ step planner behind inflight.scheduler: token budget, chunked context, batch size,
priority, preemption newest-first by recompute, no starvation, prefix reuse, abort at any
point, and the token/counter mirror between the core and the engine's Request objects."""

from __future__ import annotations

from typing import Any

import pytest
from inflight.config import EngineConfig
from inflight.kv_cache_manager import KVCacheManager
from inflight.request import Request, RequestStatus
from inflight.sampling_params import SamplingParams
from inflight.scheduler import ScheduledRequest, Scheduler, SchedulerOutput

BS = 4


class Sim:
    """Steps a Scheduler the way LLMEngine does: schedule, advance, append, finish."""

    def __init__(self, num_blocks: int = 64, reuse: bool = False, **cfg: Any) -> None:
        self.cfg = EngineConfig(model="unused", block_size=BS, enable_kv_cache_reuse=reuse, **cfg)
        self.kv = KVCacheManager(num_blocks, BS, reuse)
        self.s = Scheduler(self.cfg, self.kv)
        self.n = 0
        self.reqs: dict[str, Request] = {}

    def add(self, rid: str, prompt: int | list[int], max_tokens: int = 4, priority: int = 0) -> Request:
        toks = list(range(1, prompt + 1)) if isinstance(prompt, int) else prompt
        req = Request(rid, toks, SamplingParams(max_tokens=max_tokens), max_tokens, frozenset(),
                      priority=priority, arrival_order=self.n)
        self.n += 1
        self.s.add(req)
        self.reqs[rid] = req
        return req

    def step(self) -> SchedulerOutput:
        out = self.s.schedule()
        self.s.advance(out.scheduled)
        for sr in out.scheduled:
            req = sr.request
            if sr.samples:
                req.append_token(500 + req.num_tokens)
                if req.num_output_tokens >= req.max_tokens:
                    self.s.finish(req, RequestStatus.FINISHED_LENGTH)
        self.s.check_integrity()
        return out

    def drain(self, limit: int = 300) -> int:
        steps = 0
        while self.s.has_work():
            self.step()
            steps += 1
            assert steps < limit, "no progress"
        self.kv.assert_all_free()
        return steps


def plan(out: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(s.request.request_id, s.start, s.num_new_tokens) for s in out.scheduled]


def test_budget_chunking_and_decodes_first() -> None:
    sim = Sim(max_num_tokens=10)
    sim.add("a", 7)
    sim.add("b", 9)
    assert plan(sim.step()) == [("a", 0, 7), ("b", 0, 3)]  # b chunked to the budget
    out = sim.step()
    assert plan(out) == [("a", 7, 1), ("b", 3, 6)]  # a decodes first; b's last chunk samples
    assert [s.samples for s in out.scheduled] == [True, True]
    assert (out.num_tokens, out.num_decodes) == (7, 1)
    assert sim.reqs["b"].num_computed_tokens == 9 and sim.reqs["b"].num_tokens == 10


def test_without_chunking_a_prompt_over_the_budget_waits() -> None:
    sim = Sim(max_num_tokens=8, enable_chunked_context=False)
    sim.add("big", 9)
    sim.add("small", 3)
    assert not sim.s.schedule()  # the head does not fit: nothing behind it jumps the queue
    assert [r.request_id for r in sim.s.waiting] == ["big", "small"]


def test_max_batch_size_caps_running() -> None:
    sim = Sim(max_batch_size=2)
    for rid in "abc":
        sim.add(rid, 3)
    assert [s[0] for s in plan(sim.step())] == ["a", "b"]
    assert [r.request_id for r in sim.s.running] == ["a", "b"] and sim.s.num_waiting == 1
    sim.drain()


def test_priority_orders_the_queue_but_never_displaces_running() -> None:
    sim = Sim(max_batch_size=1)
    sim.add("low", 3, priority=0)
    sim.step()
    sim.add("mid", 3, priority=5)
    sim.add("high", 3, priority=9)
    sim.add("mid2", 3, priority=5)
    assert [r.request_id for r in sim.s.waiting] == ["high", "mid", "mid2"]
    assert plan(sim.step()) == [("low", 3, 1)]  # running low keeps its slot
    order = []
    while sim.s.has_work():
        order += [s[0] for s in plan(sim.step()) if s[1] == 0]
    assert order == ["high", "mid", "mid2"]


def test_max_utilization_preempts_the_newest_and_loses_no_token() -> None:
    sim = Sim(num_blocks=4, max_num_tokens=64, batch_scheduler_policy="max_utilization")
    a, b = sim.add("a", 4, max_tokens=8), sim.add("b", 4, max_tokens=8)
    assert plan(sim.step()) == [("a", 0, 4), ("b", 0, 4)]  # one block each
    for start in range(4, 8):  # decoding into their second blocks fills the pool
        assert plan(sim.step()) == [("a", start, 1), ("b", start, 1)]
    out = sim.step()  # a needs a third block: b (the newest) is preempted
    assert [r.request_id for r in out.preempted] == ["b"] and plan(out) == [("a", 8, 1)]
    assert b.status is RequestStatus.PREEMPTED and b.num_preemptions == 1
    assert b.num_computed_tokens == 0 and "b" not in sim.kv.req_blocks
    assert sim.s.core_state(b)[1:] == (0, "preempted", 1)
    before = list(b.token_ids)
    while b.status is not RequestStatus.RUNNING:
        out = sim.step()
    assert ("b", 0, len(before)) in plan(out)  # recomputes every token it had, no more
    assert b.token_ids[: len(before)] == before
    sim.drain()
    assert a.num_output_tokens == b.num_output_tokens == 8


def test_the_oldest_request_always_progresses() -> None:
    # four requests that cannot all fit: preemption churns the juniors, never the senior
    sim = Sim(num_blocks=6, max_num_tokens=64, batch_scheduler_policy="max_utilization")
    reqs = [sim.add(r, 4, max_tokens=12) for r in "abcd"]
    finished: list[str] = []
    for _ in range(200):
        if not sim.s.has_work():
            break
        sim.step()
        finished += [r.request_id for r in reqs if r.is_finished and r.request_id not in finished]
    assert finished == ["a", "b", "c", "d"]
    assert reqs[0].num_preemptions == 0


def test_preempted_requests_go_first_by_seniority() -> None:
    sim = Sim(max_num_tokens=64)
    reqs = [sim.add(r, 2, max_tokens=50) for r in "abc"]
    sim.step()
    sim.s.preempt(reqs[2])
    sim.s.preempt(reqs[1])
    sim.add("urgent", 2, priority=100)
    assert [r.request_id for r in sim.s.waiting] == ["b", "c", "urgent"]
    assert [r.status for r in reqs] == [RequestStatus.RUNNING, RequestStatus.PREEMPTED, RequestStatus.PREEMPTED]
    assert [s[0] for s in plan(sim.step())] == ["a", "b", "c", "urgent"]
    assert [r.request_id for r in sim.s.running] == ["a", "b", "c", "urgent"]


def test_guaranteed_no_evict_reserves_room_to_finish() -> None:
    sim = Sim(num_blocks=5, max_num_tokens=64)  # guaranteed_no_evict
    sim.add("a", 4, max_tokens=8)  # needs 3 blocks at most
    sim.add("b", 4, max_tokens=8)  # 3 more: only 2 left after a's reservation
    assert [s[0] for s in plan(sim.step())] == ["a"]
    while sim.reqs["a"].status is RequestStatus.RUNNING:
        assert all(s[0] == "a" for s in plan(sim.step()))
    sim.drain()
    assert sim.reqs["b"].num_preemptions == 0 and sim.reqs["b"].num_output_tokens == 8


def test_prefix_reuse_through_the_scheduler() -> None:
    sim = Sim(reuse=True, max_num_tokens=64)
    prompt = list(range(10, 31))  # 21 tokens: 5 full blocks
    sim.add("first", prompt, max_tokens=2)
    sim.drain()
    again = sim.add("again", prompt, max_tokens=2)
    out = sim.step()
    assert plan(out) == [("again", 20, 1)]  # 5 cached blocks, one token left to compute
    assert again.num_cached_prompt_tokens == 20
    assert sim.kv.request_block_counts("again") == (5, 1, 6)
    sim.drain()
    assert sim.kv.stats().hit_rate > 0


def test_context_logits_requests_compute_the_whole_prompt() -> None:
    sim = Sim(reuse=True, max_num_tokens=64)
    prompt = list(range(10, 31))
    sim.add("first", prompt, max_tokens=1)
    sim.drain()
    req = Request("ctx", prompt, SamplingParams(max_tokens=1, return_context_logits=True), 1,
                  frozenset())
    sim.s.add(req)
    assert plan(sim.s.schedule()) == [("ctx", 0, 21)]  # no prefix hit: logits for every position
    assert req.num_cached_prompt_tokens == 0


def test_abort_at_any_point() -> None:
    sim = Sim(max_num_tokens=64)
    w = sim.add("waiting", 3)
    sim.s.finish(w, RequestStatus.FINISHED_ABORTED)  # before it ever ran
    assert w.status is RequestStatus.FINISHED_ABORTED and w.times.finished is not None
    r = sim.add("running", 3, max_tokens=10)
    other = sim.add("other", 3, max_tokens=10)
    out = sim.s.schedule()
    sim.s.finish(r, RequestStatus.FINISHED_ABORTED)  # between planning and advance
    sim.s.advance(out.scheduled)  # skips it
    assert other.num_computed_tokens == 3 and "running" not in sim.kv.req_blocks
    sim.s.finish(r, RequestStatus.FINISHED_ABORTED)  # twice: harmless
    sim.s.check_integrity()
    other.append_token(1)
    sim.drain()
    assert not sim.s.has_work()


def test_core_reads_appended_and_cut_tokens() -> None:
    sim = Sim(max_num_tokens=64)
    r = sim.add("r", 3, max_tokens=10)
    sim.s.advance(sim.s.schedule().scheduled)
    r.append_token(77)
    r.append_token(78)
    assert sim.s.core_state(r)[0] == [1, 2, 3]  # picked up when next planned
    assert plan(sim.s.schedule()) == [("r", 3, 2)]
    assert sim.s.core_state(r)[0] == [1, 2, 3, 77, 78]
    del r.token_ids[-1]  # a stop sequence cut before finishing
    sim.s.schedule()
    assert sim.s.core_state(r)[0] == [1, 2, 3, 77]


def test_advance_with_a_hand_made_list_takes_the_generic_path() -> None:
    sim = Sim(max_num_tokens=64)
    r = sim.add("r", 5)
    out = sim.s.schedule()
    sim.s.advance(list(out.scheduled))  # not the planned list object
    assert r.num_computed_tokens == 5 and sim.s.core_state(r)[1] == 5


def test_scheduled_request_type() -> None:
    sim = Sim()
    r = sim.add("r", 3)
    s = ScheduledRequest(r, 3, 0)
    assert (s.request, s.num_new_tokens, s.start) == (r, 3, 0)
    assert s.samples  # computed on access for a hand-made one
    r.append_token(9)
    assert not s.samples
    assert s == ScheduledRequest(request=r, num_new_tokens=3, start=0) and s != ScheduledRequest(r, 2, 0)
    assert "request='r'" in repr(s)
    planned = sim.s.schedule().scheduled[0]
    assert (planned.num_new_tokens, planned.samples) == (4, True)
    r.append_token(10)
    assert planned.samples  # planned: the answer as of planning
    planned.num_new_tokens = 5  # edited: computed again
    assert planned.samples and not ScheduledRequest(r, 4, 0).samples
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        ScheduledRequest(r, "x", 0)


def test_bad_configuration_and_duplicates() -> None:
    sim = Sim()
    sim.add("a", 3)
    with pytest.raises(ValueError, match="already scheduled"):
        sim.add("a", 3)
    with pytest.raises(KeyError):
        sim.s.preempt(Request("ghost", [1], SamplingParams(), 1, frozenset()))
