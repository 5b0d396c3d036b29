"""In-flight batching: each step mixes decodes and prefill chunks under a token budget.

Policies (TensorRT-LLM names):
- ``guaranteed_no_evict``: admit a request only if the pool can hold every running request
  to its ``max_tokens`` plus this one; a running request never loses its blocks.
- ``max_utilization``: admit whatever fits now; when blocks run out, preempt the newest
  running request by recompute (its blocks are freed, its tokens kept, and it goes back to
  the front of the queue).

Priority: the waiting queue is ordered by (-priority, arrival); admitted requests are never
preempted in favour of a waiting one, so nothing admitted starves.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import EngineConfig
from .kv_cache_manager import KVCacheManager
from .request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    start: int  # num_computed_tokens when scheduled: first position computed this step

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the known tokens: a token is sampled."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    """Scheduler -> model runner. Decodes (one new token) come first, then prefill chunks."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_decodes(self) -> int:
        return sum(1 for s in self.scheduled if s.num_new_tokens == 1)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv: KVCacheManager) -> None:
        self.cfg = cfg
        self.kv = kv
        self.waiting: list[Request] = []  # sorted by (-priority, arrival_order)
        self.running: list[Request] = []  # admission order: newest last
        self.policy = cfg.batch_scheduler_policy

    # ---- queue ---------------------------------------------------------------------------
    @staticmethod
    def _key(r: Request) -> tuple[int, int]:
        return (-r.priority, r.arrival_order)

    def add(self, req: Request) -> None:
        keys = [self._key(r) for r in self.waiting]
        self.waiting.insert(bisect.bisect_right(keys, self._key(req)), req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Remove a request from wherever it is and free its blocks."""
        req.status = status
        req.times.finished = time.monotonic()
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req.request_id)

    # ---- planning ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.cfg.max_num_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        out.scheduled.sort(key=lambda s: s.num_new_tokens != 1)  # decodes first, stable
        return out

    def _num_new(self, req: Request, start: int, budget: int) -> int:
        n = req.num_tokens - start
        if n > budget:
            return budget if self.cfg.enable_chunked_context else 0
        return n

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        scheduled: set[str] = set()
        for req in list(self.running):
            if budget <= 0:
                break
            if req.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            n = self._num_new(req, req.num_computed_tokens, budget)
            if n == 0:
                continue
            while not self.kv.allocate(req.request_id, req.num_computed_tokens + n):
                victim = self._pick_victim(scheduled)
                self._preempt(victim, out)
                if victim is req:
                    break
            if req.status is RequestStatus.RUNNING:
                out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens))
                scheduled.add(req.request_id)
                budget -= n
        return budget

    def _pick_victim(self, scheduled: set[str]) -> Request:
        """Newest running request not yet scheduled this step (else the newest overall)."""
        for r in reversed(self.running):
            if r.request_id not in scheduled:
                return r
        return self.running[-1]  # pragma: no cover - the current request is always unscheduled

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.waiting.insert(0, req)
        out.preempted.append(req)

    def _reserved_blocks(self) -> int:
        """Blocks the running requests may still claim until they reach max_tokens."""
        kv = self.kv
        return sum(max(kv.blocks_needed(r.max_total_tokens) - len(kv.block_table(r.request_id)), 0)
                   for r in self.running)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        reserved = self._reserved_blocks() if self.policy == "guaranteed_no_evict" else 0
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_batch_size:
            req = self.waiting[0]
            prefix = self.kv.prefix_hit(req.request_id, req.token_ids)
            start = len(prefix) * self.kv.block_size
            n = self._num_new(req, start, budget)
            if n == 0:
                break
            if self.policy == "guaranteed_no_evict":
                need = self.kv.blocks_needed(req.max_total_tokens) - len(prefix)
                evictable = sum(1 for b in prefix if self.kv.ref_cnt[b] == 0)
                if need > self.kv.num_free_blocks - evictable - reserved:
                    break
                reserved += need - (self.kv.blocks_needed(start + n) - len(prefix))
            if not self.kv.allocate(req.request_id, start + n, prefix):
                break
            self.waiting.pop(0)
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = start
            if req.times.first_scheduled is None:
                req.times.first_scheduled = time.monotonic()
                req.num_cached_prompt_tokens = start
            out.scheduled.append(ScheduledRequest(req, n, start))
            budget -= n

    # ---- after the step ------------------------------------------------------------------
    def advance(self, scheduled: Iterable[ScheduledRequest]) -> None:
        """Move counters after the model ran; register newly full blocks for reuse."""
        for s in scheduled:
            req = s.request
            req.num_computed_tokens = s.start + s.num_new_tokens
            self.kv.cache_full_blocks(req.request_id, req.token_ids, req.num_computed_tokens)
