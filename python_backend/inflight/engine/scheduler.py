"""In-flight batching: each step mixes decodes and prefill chunks under a token budget.

The C++ core (``backend/src/scheduler.cpp`` via ``inflight._core``) plans the steps AND owns
every request's tokens, counters, status and token stop rules; Python holds a handle (an
int) per sequence and never a copy of that state. A step:

    plan = scheduler.schedule()          # StepPlan: flat arrays, no Python request objects
    ... the worker runs plan ...
    scheduler.launched(plan)             # counters move; each sampling row gets a pending slot
    events = scheduler.update(plan, result)  # tokens filled, stops applied, events out

An overlapped engine plans and launches step N+1 before it calls update() for step N.

Policies (TensorRT-LLM names):
- ``guaranteed_no_evict``: admit a request only if the pool can hold every running request
  to its ``max_tokens`` plus this one; a running request never loses its blocks.
- ``max_utilization``: admit whatever fits now; when blocks run out, preempt the newest
  running request by recompute (its blocks are freed, its tokens kept, and it goes back to
  the front of the queue).

Priority: new requests wait in (-priority, arrival) order behind preempted ones, which go
first by seniority (first admission). Admitted requests are never preempted in favour of a
waiting one and the victim is always the most junior, so nothing admitted starves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inflight import _core
from inflight.config import EngineConfig
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.step_plan import StepBuffers, StepEvents, StepPlan, StepResult


@dataclass(frozen=True)
class SequenceSpec:
    """What the core needs to own one sequence: its tokens, limits and token stop rules."""

    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int
    priority: int = 0
    arrival_order: int = 0
    context_logits: bool = False
    extra_key: str = ""  # goes into its KV block keys (e.g. an adapter id)
    end_ids: tuple[int, ...] = ()  # eos (unless ignored) + stop token ids
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    min_tokens: int = 0
    keep_stop_sequence: bool = False
    # (temperature, top_k, top_p, min_p, repetition, presence, frequency, logprobs or -1)
    sampling: tuple[float, int, float, float, float, float, float, int] = (
        0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0, -1)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv: KVCacheManager, max_table_width: int = 1,
                 pin: bool = False) -> None:
        self.cfg = cfg
        self.kv = kv
        self.policy = cfg.batch_scheduler_policy
        self._core = _core.Scheduler(kv, cfg.max_num_tokens, cfg.max_batch_size,
                                     cfg.enable_chunked_context, cfg.batch_scheduler_policy)
        self.buffers = StepBuffers(cfg.max_num_tokens, cfg.max_batch_size, max_table_width, pin=pin)

    # ---- requests --------------------------------------------------------------------------
    def add(self, spec: SequenceSpec) -> int:
        """Queue a sequence; returns its handle."""
        n = len(spec.prompt_token_ids)
        return int(self._core.add(spec.request_id, list(spec.prompt_token_ids), n, n + spec.max_tokens,
                                  spec.priority, spec.arrival_order, spec.context_logits,
                                  spec.extra_key, list(spec.end_ids),
                                  [list(s) for s in spec.stop_sequences], spec.min_tokens,
                                  spec.keep_stop_sequence, spec.sampling))

    def finish(self, handle: int) -> bool:
        """Remove a sequence from wherever it is and free its blocks (abort at any point)."""
        return bool(self._core.finish(handle))

    def stop_at(self, handle: int, output_len: int) -> None:
        """Finish 'stop' by a rule the core does not see (a stop string), keeping output_len tokens."""
        self._core.stop_at(handle, output_len)

    def preempt(self, handle: int) -> int:
        """Send a running sequence back to the front of the queue, by recompute."""
        return int(self._core.preempt(handle))

    def has_work(self) -> bool:
        return bool(self._core.num_waiting or self._core.num_running)

    def __contains__(self, handle: int) -> bool:
        return handle in self._core

    @property
    def num_waiting(self) -> int:
        return int(self._core.num_waiting)

    @property
    def num_running(self) -> int:
        return int(self._core.num_running)

    @property
    def waiting(self) -> list[int]:
        """Waiting handles in admission order."""
        return list(self._core.waiting())

    @property
    def running(self) -> list[int]:
        """Running handles, most senior first."""
        return list(self._core.running())

    def tokens(self, handle: int, start: int = 0) -> np.ndarray:
        """A sequence's known tokens (prompt + output) from ``start`` on."""
        return self._core.tokens(handle, start)  # type: ignore[no-any-return]

    def state(self, handle: int) -> dict[str, Any]:
        """The core's view: num_tokens, num_prompt, num_computed, pending, status, finish,
        num_preemptions, num_cached, max_total."""
        return self._core.state(handle)  # type: ignore[no-any-return]

    # ---- steps -----------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """Plan a step; its arrays are views of host buffers valid until the next schedule()."""
        step, n, _tokens, _decodes, admitted, preempted = self._core.schedule()
        bufs = self.buffers
        if n == 0:
            lay = _EmptyLayout()
            return bufs.plan(step, lay, {}, list(admitted), list(preempted))
        bufs.wait_copies()
        out = self._core.build_step(step, bufs.views)
        if len(out) == 3:  # too small for this step: grow once, write again
            bufs.ensure(*out)
            out = self._core.build_step(step, bufs.views)
        lay, rows = out
        return bufs.plan(step, lay, rows, list(admitted), list(preempted))

    def entries(self, plan: StepPlan) -> list[tuple[int, int, int, bool]]:
        """(handle, start, num_new, samples) per scheduled row (-1: the request left since)."""
        return [tuple(e) for e in self._core.entries(plan.step)]  # type: ignore[misc]

    def launched(self, plan: StepPlan) -> None:
        self._core.launched(plan.step)

    def update(self, plan: StepPlan, result: StepResult) -> StepEvents:
        return StepEvents(*self._core.update(plan.step, result.tokens, result.offsets))

    def check_integrity(self) -> None:
        """Queues vs request states vs block tables, plus the KV manager's checks."""
        self._core.check_integrity()


class _EmptyLayout:
    num_tokens = num_reqs = num_logits = num_samples = table_width = num_decodes = 0
    max_query_len = max_seq_len = 0
    ctx_rows: dict[int, tuple[int, int]] = {}


__all__ = ["Scheduler", "SequenceSpec"]
