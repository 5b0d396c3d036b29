"""Property-based test of the scheduler core, the one owner of request state: hypothesis drives
random sequences of add / step / abort / preempt / drain, plain or overlapped (step N+1
planned and launched before step N's tokens arrive), with 0, 1 or k sampled tokens per row,
against a small Python model of what must hold; the core's own check_integrity() and the KV
checks run after every operation.

The model keeps, per live sequence, the tokens it must hold (prompt + accepted outputs, with
the token stop rules applied: end id, a stop sequence cut, min_tokens, the length limit) and
how many of them have KV since it last lost its blocks. A step must feed exactly the next
tokens (a prefix-cache hit may start later, at a block boundary) inside the token budget and
batch size, with slots in the sequence's own blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from inflight.config import EngineConfig
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.scheduler import Scheduler, SequenceSpec
from inflight.engine.step_plan import StepPlan, StepResult

BS = 4
PREFIXES = ([], [7, 7, 7, 7], [7, 7, 7, 7, 8, 8, 8, 8], [9, 9, 9, 9, 9, 9])
END, STOP_SEQ = 3, (1, 2)


@dataclass
class Expect:
    handle: int
    tokens: list[int]  # known tokens the core must hold
    num_prompt: int
    max_tokens: int
    min_tokens: int
    keep_stop: bool
    computed: int = 0  # tokens with KV, since it last lost its blocks
    pending: int = 0
    finished: str | None = None
    events: list[int] = field(default_factory=list)

    def accept(self, new: list[int]) -> None:
        """The token stop rules, token by token (the oracle of Scheduler::update)."""
        for t in new:
            self.tokens.append(t)
            n_out = len(self.tokens) - self.num_prompt
            if n_out >= self.min_tokens:
                if t == END:
                    self.finished = "stop"
                    return
                if n_out >= len(STOP_SEQ) and tuple(self.tokens[-len(STOP_SEQ):]) == STOP_SEQ:
                    self.finished = "stop"
                    if not self.keep_stop:
                        del self.tokens[-len(STOP_SEQ):]
                    return
            if n_out >= self.max_tokens:
                self.finished = "length"
                return


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["guaranteed_no_evict", "max_utilization"]),
                reuse=st.booleans(), chunked=st.booleans(), overlap=st.booleans(),
                num_blocks=st.integers(8, 24), budget=st.integers(4, 32), batch=st.integers(1, 5))
    def setup(self, policy: str, reuse: bool, chunked: bool, overlap: bool, num_blocks: int,
              budget: int, batch: int) -> None:
        self.cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=budget,
                                max_batch_size=batch, enable_chunked_context=chunked,
                                batch_scheduler_policy=policy, enable_kv_cache_reuse=reuse)
        self.kv = KVCacheManager(num_blocks, BS, reuse)
        self.s = Scheduler(self.cfg, self.kv, max_table_width=2)
        self.overlap = overlap
        self.inflight: tuple[StepPlan, list[int]] | None = None  # (plan, its sampled tokens)
        self.live: dict[int, Expect] = {}
        self.n = 0

    # ---- operations ----------------------------------------------------------------------
    @rule(prefix=st.sampled_from(PREFIXES), tail=st.lists(st.integers(0, 3), min_size=1, max_size=14),
          max_tokens=st.integers(1, 6), priority=st.integers(0, 2), min_tokens=st.integers(0, 2),
          keep_stop=st.booleans())
    def add(self, prefix: list[int], tail: list[int], max_tokens: int, priority: int,
            min_tokens: int, keep_stop: bool) -> None:
        prompt = prefix + tail
        if -(-(len(prompt) + max_tokens) // BS) > self.kv.num_blocks:
            return  # the engine rejects what can never fit
        if not self.cfg.enable_chunked_context and len(prompt) + max_tokens > self.cfg.max_num_tokens:
            return  # likewise: without chunking, a (re)prefill must fit one step
        min_tokens = min(min_tokens, max_tokens)
        spec = SequenceSpec(f"r{self.n}", prompt, max_tokens, priority, self.n, end_ids=(END,),
                            stop_sequences=(STOP_SEQ,), min_tokens=min_tokens,
                            keep_stop_sequence=keep_stop)
        self.n += 1
        h = self.s.add(spec)
        self.live[h] = Expect(h, list(prompt), len(prompt), max_tokens, min_tokens, keep_stop)

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        plan = self.s.schedule()
        assert plan.num_tokens <= self.cfg.max_num_tokens
        assert len(self.s.running) <= self.cfg.max_batch_size
        if self.cfg.batch_scheduler_policy == "guaranteed_no_evict":
            assert not plan.preempted, "guaranteed_no_evict must never preempt"
        for h in plan.preempted:
            self.live[h].computed = 0
        if plan:
            self._check_plan(plan)
            self.s.launched(plan)
            for h, start, n, samples in self.s.entries(plan):
                e = self.live[h]
                e.computed = start + n
                e.pending += 1 if samples else 0
        sampled = [data.draw(st.lists(st.integers(0, 3), min_size=0 if not self.overlap else 1,
                                      max_size=1 if self.overlap else 3))
                   for _ in range(plan.num_samples)]
        if self.overlap:  # update the step before, then keep this one in flight
            prev, self.inflight = self.inflight, ((plan, sampled) if plan else None)
            if prev is not None:
                self._update(*prev)
        elif plan:
            self._update(plan, sampled)

    def _update(self, plan: StepPlan, sampled: list[list[int]]) -> None:
        toks = [t for row in sampled for t in row]
        offs = np.cumsum([0] + [len(r) for r in sampled]).astype(np.int64)
        ev = self.s.update(plan, StepResult(plan.step, np.asarray(toks, dtype=np.int64), offs))
        handles = plan.rows["sample_handles"].tolist() if plan.num_samples else []
        reported = ev.handles.tolist()
        assert reported == [h for h in handles if h in self.live], "one event per live sampled row"
        for i, h in enumerate(reported):
            e = self.live[h]
            row = sampled[int(ev.rows[i])]
            e.pending -= 1
            if row:
                e.accept(row)
            else:  # nothing accepted: the last position is computed again
                e.computed = min(e.computed, len(e.tokens) - 1)
            if e.finished:
                e.pending = 0
            out = e.tokens[e.num_prompt:]
            assert int(ev.output_len[i]) == len(out)
            a, b = int(ev.offsets[i]), int(ev.offsets[i + 1])
            assert ev.tokens[a:b].tolist() == out[int(ev.start[i]):]
            assert {0: None, 1: "stop", 2: "length"}[int(ev.finish[i])] == e.finished
        for h in reported:
            if self.live[h].finished:
                self._finish(h)

    def _check_plan(self, plan: StepPlan) -> None:
        assert StepPlan.from_bytes(plan.to_bytes()).to_bytes() == plan.to_bytes()
        qsl = plan.query_start_loc.tolist()
        k = 0
        for i, (h, start, n, samples) in enumerate(self.s.entries(plan)):
            e = self.live[h]
            if start != e.computed:  # only a (re)admission with a prefix hit may skip ahead
                assert e.computed == 0 and start % BS == 0 and self.cfg.enable_kv_cache_reuse
            held = e.tokens + [-1] * e.pending  # pending slots are fed from the step in flight
            assert 0 < n and start + n <= len(held)
            assert samples == (start + n == len(held))
            assert plan.input_ids[qsl[i]:qsl[i + 1]].tolist() == held[start:start + n]
            assert plan.positions[qsl[i]:qsl[i + 1]].tolist() == list(range(start, start + n))
            table = self.kv.req_blocks[self.s.state(h)["id"]]
            slots = [table[p // BS] * BS + p % BS for p in range(start, start + n)]
            assert plan.slot_mapping[qsl[i]:qsl[i + 1]].tolist() == slots
            if samples:
                assert int(plan.rows["sample_handles"][k]) == h
                assert int(plan.rows["num_output"][k]) == len(held) - e.num_prompt
                k += 1
        assert k == plan.num_samples

    def _finish(self, h: int) -> None:
        rid = self.s.state(h)["id"]
        assert self.s.finish(h)
        self.kv.forget(rid)
        del self.live[h]

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        self._finish(data.draw(st.sampled_from(sorted(self.live))))

    @precondition(lambda self: bool(self.s.running) and not self.overlap)
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.s.running))
        self.s.preempt(h)
        self.live[h].computed = 0
        assert self.s.state(h)["id"] not in self.kv.req_blocks

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """Finish everything by stepping: the engine always gets there, and leaks nothing."""
        for _ in range(400):
            if not self.s.has_work() and self.inflight is None:
                break
            self.step(data)
        assert not self.live and not self.s.has_work()
        self.kv.assert_all_free()

    # ---- invariants ----------------------------------------------------------------------
    @invariant()
    def core_is_the_one_owner(self) -> None:
        if not hasattr(self, "s"):
            return
        self.s.check_integrity()  # the core's own: queues, tables, ref counts, free queue
        running, waiting = set(self.s.running), set(self.s.waiting)
        assert not running & waiting and running | waiting == set(self.live)
        ids = {h: self.s.state(h)["id"] for h in self.live}
        assert set(self.kv.req_blocks) == {ids[h] for h in running}  # waiting ones hold none
        for h, e in self.live.items():
            st_ = self.s.state(h)
            assert self.s.tokens(h).tolist() == e.tokens
            assert st_["pending"] == e.pending
            assert st_["num_computed"] == (e.computed if h in running else 0)
        used = self.kv.num_blocks - self.kv.num_free_blocks
        assert used == len({b for h in running for b in self.kv.req_blocks[ids[h]]})


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_scheduler_state_machine = SchedulerMachine.TestCase
