"""In-flight batching: each step mixes decodes and prefill chunks under a token budget.

The step planner is C++ (``backend/src/scheduler.cpp`` via ``inflight._core``); this module
keeps its Python API and mirrors progress onto the engine's :class:`Request` objects.

Policies (TensorRT-LLM names):
- ``guaranteed_no_evict``: admit a request only if the pool can hold every running request
  to its ``max_tokens`` plus this one; a running request never loses its blocks.
- ``max_utilization``: admit whatever fits now; when blocks run out, preempt the newest
  running request by recompute (its blocks are freed, its tokens kept, and it goes back to
  the front of the queue).

Priority: new requests wait in (-priority, arrival) order behind preempted ones, which go
first by seniority (first admission). Admitted requests are never preempted in favour of a
waiting one and the victim is always the most junior, so nothing admitted starves.

Ownership: the C++ core owns the planning state (token ids, counters, queues, block tables);
the engine owns the :class:`Request`. The engine appends sampled tokens to
``Request.token_ids`` as before; the core picks them up from that list when it next plans the
request. ``num_computed_tokens``, ``status``, ``num_preemptions`` and
``num_cached_prompt_tokens`` are mirrored onto the Request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from . import _core
from .config import EngineConfig
from .kv_cache_manager import KVCacheManager
from .request import Request, RequestStatus

IMPLEMENTATION = "cpp"
# ModelRunner.prepare() reads the block tables from the plan: callers may pass [].
PREPARE_READS_CORE_TABLES = True

# ScheduledRequest(request, num_new_tokens, start) with .samples: a C type (a step makes one
# per scheduled request). `samples` is the planning-time answer for the scheduler's objects.
ScheduledRequest = _core.ScheduledRequest


class SchedulerOutput:
    """Scheduler -> model runner. Decodes (one new token) come first, then prefill chunks.

    ``scheduled``: list of ScheduledRequest; ``preempted``: requests preempted this step.
    An output made by :meth:`Scheduler.schedule` also carries the plan, from which the
    C++ core writes the step metadata directly (:class:`StepBuffers`).
    """

    __slots__ = ("scheduled", "preempted", "_plan", "_totals")

    def __init__(self, scheduled: list[Any] | None = None, preempted: list[Request] | None = None,
                 *, _plan: tuple[Any, int] | None = None, _totals: tuple[int, int] | None = None) -> None:
        self.scheduled: list[Any] = scheduled if scheduled is not None else []
        self.preempted: list[Request] = preempted if preempted is not None else []
        self._plan = _plan  # (core scheduler, step number)
        self._totals = _totals  # (num_tokens, num_decodes) as planned

    @property
    def num_tokens(self) -> int:
        if self._totals is not None:
            return self._totals[0]
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_decodes(self) -> int:
        if self._totals is not None:
            return self._totals[1]
        return sum(1 for s in self.scheduled if s.num_new_tokens == 1)

    def __bool__(self) -> bool:
        return bool(self.scheduled)

    def __repr__(self) -> str:
        return f"SchedulerOutput(scheduled={self.scheduled!r}, preempted={self.preempted!r})"


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv: KVCacheManager) -> None:
        self.cfg = cfg
        self.kv = kv
        self.policy = cfg.batch_scheduler_policy
        self._core = _core.Scheduler(kv, cfg.max_num_tokens, cfg.max_batch_size,
                                     cfg.enable_chunked_context, cfg.batch_scheduler_policy)
        self._last: list[Any] | None = None  # scheduled list of the latest output
        self._last_step = 0

    # ---- queue ---------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Request]:
        """Waiting requests in admission order (a snapshot)."""
        return self._core.waiting()  # type: ignore[no-any-return]

    @property
    def running(self) -> list[Request]:
        """Running requests, most senior first (a snapshot)."""
        return self._core.running()  # type: ignore[no-any-return]

    @property
    def num_waiting(self) -> int:
        return int(self._core.num_waiting)

    @property
    def num_running(self) -> int:
        return int(self._core.num_running)

    def add(self, req: Request, extra_key: str = "") -> None:
        """Queue a request. ``extra_key`` goes into its KV block keys (e.g. an adapter id)."""
        self._core.add(req, req.request_id, req.token_ids, req.num_prompt_tokens,
                       req.max_total_tokens, req.priority, req.arrival_order,
                       req.context_logits is not None, extra_key)

    def has_work(self) -> bool:
        return bool(self._core.num_waiting or self._core.num_running)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Remove a request from wherever it is and free its blocks (abort at any point)."""
        req.status = status
        req.times.finished = time.monotonic()
        if not self._core.finish(req.request_id):
            self.kv.free(req.request_id)

    def preempt(self, req: Request) -> None:
        """Send a running request back to the front of the queue, by recompute."""
        self._core.preempt(req.request_id)
        self._mark_preempted(req)

    @staticmethod
    def _mark_preempted(req: Request) -> None:
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1

    # ---- planning ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        step, scheduled, admitted, preempted, num_tokens, num_decodes = self._core.schedule()
        if admitted:
            now = time.monotonic()
            for req, start in admitted:
                req.status = RequestStatus.RUNNING
                req.num_computed_tokens = start
                if req.times.first_scheduled is None:
                    req.times.first_scheduled = now
                    req.num_cached_prompt_tokens = start
        for req in preempted:
            self._mark_preempted(req)
        self._last, self._last_step = scheduled, step
        return SchedulerOutput(scheduled, preempted, _plan=(self._core, step),
                               _totals=(num_tokens, num_decodes))

    # ---- after the step ------------------------------------------------------------------
    def advance(self, scheduled: Iterable[Any]) -> None:
        """Move counters after the model ran; register newly full blocks for reuse."""
        if scheduled is self._last:  # the latest plan, as planned: one call into the core
            self._core.advance(self._last_step)
            return
        for s in scheduled:
            n = self._core.advance_one(s.request.request_id, s.start + s.num_new_tokens)
            if n >= 0:
                s.request.num_computed_tokens = n

    # ---- for tests -----------------------------------------------------------------------
    def check_integrity(self) -> None:
        """Queues vs request states vs block tables, plus the KV manager's checks."""
        self._core.check_integrity()

    def core_state(self, req: Request) -> tuple[list[int], int, str, int] | None:
        """The core's view of a request: (token_ids, num_computed, status, preemptions)."""
        return self._core.state(req.request_id)  # type: ignore[no-any-return]


class StepBuffers:
    """Host buffers the C++ core writes one step's metadata into, reused every step.

    Shapes (capacity; grown on demand): input_ids, positions, slot_mapping, logits_indices
    [max_tokens] int64; query_start_loc [max_reqs + 1], seq_lens, sample_rows [max_reqs],
    block_tables [max_reqs * max_blocks_per_seq] int32 (a step uses [B * W] as [B, W]).
    Pinned when ``pin`` (a CUDA runner) so ``.to(device, non_blocking=True)`` is a real async
    copy; :meth:`record_copies` after enqueuing those copies makes the next :meth:`build`
    wait for them before it overwrites the buffers.
    """

    _INT64 = ("input_ids", "positions", "slot_mapping", "logits_indices")
    _INT32 = ("query_start_loc", "seq_lens", "sample_rows", "block_tables")

    def __init__(self, block_size: int, max_tokens: int, max_reqs: int, max_table_width: int,
                 pin: bool = False) -> None:
        self.block_size = block_size
        self.pin = pin
        self._copied: Any = None  # torch.cuda.Event of the last step's copies
        self._alloc(max_tokens, max_reqs, max_table_width)

    def _alloc(self, tokens: int, reqs: int, width: int) -> None:
        self.capacity = (tokens, reqs, width)
        sizes = {"query_start_loc": reqs + 1, "seq_lens": reqs, "sample_rows": reqs,
                 "block_tables": reqs * width}
        self.tensors: dict[str, torch.Tensor] = {}
        for name in self._INT64 + self._INT32:
            dtype = torch.int64 if name in self._INT64 else torch.int32
            self.tensors[name] = torch.zeros(max(sizes.get(name, tokens), 1), dtype=dtype,
                                             pin_memory=self.pin)
        self.arrays: dict[str, np.ndarray] = {k: t.numpy() for k, t in self.tensors.items()}
        self.views = _core.StepBufferViews(*(self.arrays[k] for k in self._INT64 + self._INT32))

    def ensure(self, tokens: int, reqs: int, width: int) -> None:
        cap = self.capacity
        if tokens > cap[0] or reqs > cap[1] or width > cap[2]:
            self._alloc(max(tokens, cap[0]), max(reqs, cap[1]), max(width, cap[2]))

    def build(self, sched: SchedulerOutput, block_tables: list[list[int]]) -> Any:
        """Write ``sched``'s metadata; returns the core's StepLayout (sizes, ctx_rows).

        The scheduler's latest plan is read in C++ (its own tables; ``block_tables`` unused).
        Any other output (made by hand, or stale) takes the generic path with ``block_tables``.
        """
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None
        plan = getattr(sched, "_plan", None)
        if plan is not None:
            lay = plan[0].build_step(plan[1], self.views)
            if isinstance(lay, tuple):  # too small for this step: grow once, write again
                self.ensure(*lay)
                lay = plan[0].build_step(plan[1], self.views)
            if lay is not None:
                return lay
        entries = [(s.request.request_id, s.request.token_ids, s.start, s.num_new_tokens,
                    s.request.num_prompt_tokens, s.samples, s.request.context_logits is not None)
                   for s in sched.scheduled]
        self.ensure(sum(e[3] for e in entries), len(entries),
                    max((len(t) for t in block_tables), default=0))
        return _core.build_step_metadata(entries, [list(t) for t in block_tables],
                                         self.block_size, self.views)

    def record_copies(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()


__all__ = ["Scheduler", "SchedulerOutput", "ScheduledRequest", "StepBuffers"]
