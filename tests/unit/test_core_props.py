"""Property-based test of the C++ batch-manager core: hypothesis drives random sequences of
add / step / finish / abort / preempt against a small Python model of what must hold, and
checks the core's own check_integrity() after every operation.

The model keeps, per live request, the tokens the engine gave it and how many of them the
model has computed since the request last lost its KV (admission or preemption). A step must
feed the model exactly the next tokens (no token duplicated or skipped, except a prefix
cache hit, which starts at a block boundary), inside the token budget and batch size, with
slots that point into the request's own blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from inflight.config import EngineConfig
from inflight.kv_cache_manager import KVCacheManager
from inflight.request import Request, RequestStatus
from inflight.sampling_params import SamplingParams
from inflight.scheduler import Scheduler, StepBuffers

BS = 4
PREFIXES = ([], [7, 7, 7, 7], [7, 7, 7, 7, 8, 8, 8, 8], [9, 9, 9, 9, 9, 9])


@dataclass
class Expect:
    req: Request
    computed: int = 0  # model's count of tokens with KV, since the request last lost its KV
    ever_scheduled: bool = False


class CoreMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["guaranteed_no_evict", "max_utilization"]),
                reuse=st.booleans(), chunked=st.booleans(),
                num_blocks=st.integers(8, 24), budget=st.integers(4, 32), batch=st.integers(1, 5))
    def setup(self, policy: str, reuse: bool, chunked: bool, num_blocks: int, budget: int,
              batch: int) -> None:
        self.cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=budget,
                                max_batch_size=batch, enable_chunked_context=chunked,
                                batch_scheduler_policy=policy, enable_kv_cache_reuse=reuse)
        self.kv = KVCacheManager(num_blocks, BS, reuse)
        self.s = Scheduler(self.cfg, self.kv)
        self.bufs = StepBuffers(BS, 8, 2, 4)
        self.live: dict[str, Expect] = {}
        self.n = 0

    # ---- operations ----------------------------------------------------------------------
    @rule(prefix=st.sampled_from(PREFIXES), tail=st.lists(st.integers(0, 3), min_size=1, max_size=14),
          max_tokens=st.integers(1, 6), priority=st.integers(0, 2))
    def add(self, prefix: list[int], tail: list[int], max_tokens: int, priority: int) -> None:
        prompt = prefix + tail
        if -(-(len(prompt) + max_tokens) // BS) > self.kv.num_blocks:
            return  # the engine rejects what can never fit
        if not self.cfg.enable_chunked_context and len(prompt) + max_tokens > self.cfg.max_num_tokens:
            return  # likewise: without chunking, a (re)prefill must fit one step
        req = Request(f"r{self.n}", prompt, SamplingParams(max_tokens=max_tokens), max_tokens,
                      frozenset(), priority=priority, arrival_order=self.n)
        self.n += 1
        self.s.add(req)
        self.live[req.request_id] = Expect(req)

    @rule()
    def step(self) -> None:
        out = self.s.schedule()
        assert out.num_tokens <= self.cfg.max_num_tokens
        assert len(self.s.running) <= self.cfg.max_batch_size
        if self.cfg.batch_scheduler_policy == "guaranteed_no_evict":
            assert not out.preempted, "guaranteed_no_evict must never preempt"
        for req in out.preempted:
            self.live[req.request_id].computed = 0
        if out:
            self._check_metadata(out)
        self.s.advance(out.scheduled)
        for sr in out.scheduled:
            e = self.live[sr.request.request_id]
            e.computed = sr.start + sr.num_new_tokens
            if sr.samples:
                req = sr.request
                req.append_token(req.num_tokens % 4)
                if req.num_output_tokens >= req.max_tokens:
                    self._finish(req, RequestStatus.FINISHED_LENGTH)

    def _check_metadata(self, out: object) -> None:
        lay = self.bufs.build(out, [])  # type: ignore[arg-type]
        a = self.bufs.arrays
        assert lay.num_tokens == out.num_tokens  # type: ignore[attr-defined]
        seen: set[str] = set()
        for i, sr in enumerate(out.scheduled):  # type: ignore[attr-defined]
            rid = sr.request.request_id
            assert rid not in seen
            seen.add(rid)
            e = self.live[rid]
            if sr.start != e.computed:  # only a (re)admission with a prefix hit may skip ahead
                assert e.computed == 0 and sr.start % BS == 0 and self.cfg.enable_kv_cache_reuse
            assert 0 < sr.num_new_tokens and sr.start + sr.num_new_tokens <= sr.request.num_tokens
            q0, q1 = lay.query_start_loc[i], lay.query_start_loc[i + 1]
            toks = sr.request.token_ids[sr.start:sr.start + sr.num_new_tokens]
            assert a["input_ids"][q0:q1].tolist() == toks
            assert a["positions"][q0:q1].tolist() == list(range(sr.start, sr.start + len(toks)))
            table = self.kv.block_table(rid)
            slots = [table[p // BS] * BS + p % BS for p in range(sr.start, sr.start + len(toks))]
            assert a["slot_mapping"][q0:q1].tolist() == slots
        assert sum(1 for s in out.scheduled if s.samples) == lay.num_samples  # type: ignore[attr-defined]

    def _finish(self, req: Request, status: RequestStatus) -> None:
        self.s.finish(req, status)
        self.kv.forget(req.request_id)
        del self.live[req.request_id]

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)))
        self._finish(self.live[rid].req, RequestStatus.FINISHED_ABORTED)

    @precondition(lambda self: bool(self.s.running))
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        req = data.draw(st.sampled_from(self.s.running))
        self.s.preempt(req)
        self.live[req.request_id].computed = 0
        assert req.request_id not in self.kv.req_blocks

    @rule()
    def drain(self) -> None:
        """Finish everything by stepping: the engine always gets there, and leaks nothing."""
        for _ in range(400):
            if not self.s.has_work():
                break
            self.step()
        assert not self.live and not self.s.has_work()
        self.kv.assert_all_free()

    # ---- invariants ----------------------------------------------------------------------
    @invariant()
    def core_is_consistent(self) -> None:
        if not hasattr(self, "s"):
            return
        self.s.check_integrity()  # the core's own: queues, tables, ref counts, free queue
        running = {r.request_id for r in self.s.running}
        waiting = {r.request_id for r in self.s.waiting}
        assert not running & waiting and running | waiting == set(self.live)
        assert set(self.kv.req_blocks) == running  # waiting requests hold no blocks
        for rid in running:
            req = self.live[rid].req
            assert req.status is RequestStatus.RUNNING
            assert len(self.kv.block_table(rid)) * BS >= req.num_computed_tokens
            assert self.s.core_state(req)[1] == req.num_computed_tokens
        for rid in waiting:
            assert self.live[rid].req.num_computed_tokens == 0
        used = self.kv.num_blocks - self.kv.num_free_blocks
        assert used == len({b for rid in running for b in self.kv.block_table(rid)})


CoreMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=50, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_core_state_machine = CoreMachine.TestCase
