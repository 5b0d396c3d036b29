"""The engine thread: owns an LLMEngine, takes adds/aborts from any thread between steps,
delivers each sequence's updates through its callback (from the engine thread: callbacks
must be cheap, e.g. put into a queue).

If a step raises, every in-flight request gets a final error update and the loop stops;
``alive`` turns False and further submits raise EngineDeadError (readiness goes red).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine, UpdateCallback
from inflight.engine.kv_cache import KVStats
from inflight.engine.warmup import should_warm_up, warm_up
from inflight.errors import EngineDeadError
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams

log = logging.getLogger(__name__)

HEALTH_TICK_S = 0.5  # an idle tensor-parallel engine checks its ranks this often


@dataclass(frozen=True)
class EngineStats:
    """A snapshot the metrics reporter reads (written by the engine thread once per step)."""

    num_waiting: int
    num_running: int
    num_steps: int
    kv: KVStats
    step_tokens: int
    timestamp: float


class EngineLoop:
    def __init__(self, cfg: EngineConfig, engine: LLMEngine | None = None,
                 warmup: str = "off") -> None:
        """``warmup`` auto/on: dummy steps before the loop takes requests (engine/warmup.py;
        the Triton models pass their ``warmup`` parameter, auto = on for CUDA)."""
        self.engine = engine or LLMEngine(cfg)
        if should_warm_up(warmup, self.engine.runner.device.type):
            warm_up(self.engine)
        self._cv = threading.Condition()
        self._inbox: list[Callable[[], None]] = []
        self._live: set[str] = set()  # client request ids accepted and not yet final
        self._inbox_seqs = 0  # sequences submitted but not yet in the scheduler
        # submitted, not yet enqueued: a fault fails them too (they are in no engine registry)
        self._pending: dict[str, list[Any]] = {}
        self._stopping = False
        self.dead_reason: str | None = None
        self.stats = self._snapshot(0)
        self._fault_hook: Callable[[], None] | None = None  # tests inject step faults here
        self._thread = threading.Thread(target=self._run, name="inflight-engine", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.dead_reason is None and self._thread.is_alive()

    def submit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
               callback: UpdateCallback, priority: int = 0) -> list[int]:
        """Validate (raising InvalidRequestError / QueueFullError at once) and queue."""
        if not self.alive:
            raise EngineDeadError(f"engine is not running: {self.dead_reason or 'stopped'}")
        prompt_ids, seqs = self.engine.make_request(request_id, prompt, params, self._wrap(callback),
                                                    priority)
        with self._cv:  # the engine's admission rules, with what waits in the inbox counted
            if self.dead_reason is not None:  # died since the check above: nothing queued
                raise EngineDeadError(f"engine is not running: {self.dead_reason}")
            self.engine.check_admission(request_id, len(seqs), self._inbox_seqs,
                                        live=request_id in self._live)
            self._live.add(request_id)
            self._pending[request_id] = seqs
            self._inbox_seqs += len(seqs)
            self._inbox.append(lambda: self._enqueue(request_id, seqs))
            self._cv.notify()
        return prompt_ids

    def _enqueue(self, request_id: str, seqs: list) -> None:  # type: ignore[type-arg]
        with self._cv:
            self._inbox_seqs -= len(seqs)
            self._pending.pop(request_id, None)
        self.engine.enqueue(request_id, seqs)

    def _wrap(self, callback: UpdateCallback) -> UpdateCallback:
        def cb(u):  # type: ignore[no-untyped-def]
            try:
                callback(u)
            except Exception:  # noqa: BLE001 - a consumer's fault must not kill the engine
                log.exception("output callback of %s failed; dropping its update", u.request_id)
            if u.finished:
                self._maybe_release(u.request_id)
        return cb

    def _maybe_release(self, request_id: str) -> None:
        # the final update of a request's last sequence is delivered as that sequence is
        # dropped: the id is free once no sequence of it is left
        hs = self.engine.children.get(request_id, [])
        if sum(1 for h in hs if h in self.engine.seqs) <= 1:
            with self._cv:
                self._live.discard(request_id)

    def abort(self, request_id: str) -> None:
        """Cancel; a no-op for unknown or finished ids. The request gets a final 'abort'."""
        with self._cv:
            self._inbox.append(lambda: self.engine.abort(request_id))
            self._cv.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the engine thread ended (shutdown or fault); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cv:
                if not self._inbox and not self._live:
                    return True
            time.sleep(0.005)
        return False

    def fresh_stats(self) -> EngineStats:
        """The state now (any thread): a finished request's KV blocks are already free when
        its final update is delivered, so this is exact right after the last one."""
        return self._snapshot(self.stats.step_tokens)

    # ---- engine thread ---------------------------------------------------------------------
    def _snapshot(self, step_tokens: int) -> EngineStats:
        s = self.engine.scheduler
        return EngineStats(s.num_waiting, s.num_running, self.engine.num_steps,
                           self.engine.kv.stats(), step_tokens, time.monotonic())

    def _run(self) -> None:
        eng = self.engine
        # tensor parallel: wake up now and then while idle to see whether a rank died
        tick = HEALTH_TICK_S if eng.ranks is not None else None
        while True:
            idle_tick = False
            with self._cv:
                while not self._inbox and not eng.has_unfinished() and not self._stopping:
                    if not self._cv.wait(tick):
                        idle_tick = True
                        break
                ops, self._inbox = self._inbox, []
                stopping = self._stopping
            try:
                for op in ops:
                    op()
                if ops:
                    self.stats = self._snapshot(0)
                if stopping:
                    for rid in list(eng.children):
                        eng.abort(rid)
                    return
                eng.check_health()
                if idle_tick and not ops and not eng.has_unfinished():
                    continue
                if self._fault_hook is not None:
                    self._fault_hook()
                eng.step()
                self.stats = self._snapshot(eng.last_step_tokens)
            except Exception as e:  # noqa: BLE001 - any fault ends the engine
                log.exception("engine step failed")
                e = eng.explain_fault(e)
                reason = f"engine step failed: {type(e).__name__}: {e}"
                with self._cv:  # from here on submit() refuses; take what it queued already
                    self.dead_reason = reason
                    pending, self._pending, self._inbox = self._pending, {}, []
                eng.fail_all(reason)
                for rid, seqs in pending.items():  # accepted, never reached the scheduler
                    for ps in seqs:
                        if ps.callback is not None:
                            ps.callback(SequenceUpdate(rid, ps.seq_index, [], "", finished=True,
                                                       finish_reason="error", error=reason))
                with self._cv:
                    self._live.clear()
                return
