"""Python's cyclic garbage collector in the engine process: the pauses it puts into steps.

A full (generation 2) collection walks every object the collector tracks, and once the
engine process has started it holds a few hundred thousand of them (torch, transformers,
Triton's compiled-kernel caches, the model's modules): ~0.1 s per full collection on the
2-core CI VM, taken inside whichever step happened to allocate the object that triggered it.
Nothing of that start-up state ever becomes garbage, so walking it is pure stall.

``settle()``, once warm-up is done: one full collection, then ``gc.freeze()``, which moves
every object alive at that moment into the permanent generation that later collections
skip (the cure vLLM's and SGLang's engine processes use too). What serving allocates is
still collected as before. Only for a process that owns its whole heap (the engine process):
freezing a user's objects inside their own Python (the in-process ``LLM``) is not ours to do.

``watch()``: a ``gc.callbacks`` hook that times every collection; a pause of at least
``threshold_ms`` is counted and logged as a warning with its generation, its length and the
objects it collected, so a first-token outlier can be told apart from a GC pause in the
server's log.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def settle() -> int:
    """Collect once, then freeze what is left; returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class GcPauses:
    """Times each collection (``gc.callbacks`` start / stop); counts and logs the long ones."""

    threshold_ms: float = 50.0
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # per generation
    long_pauses: int = 0
    longest_ms: float = 0.0
    total_ms: float = 0.0
    _start: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        ms = (time.perf_counter() - self._start) * 1e3
        gen = int(info.get("generation", 2))
        with self._lock:
            self.collections[gen] += 1
            self.total_ms += ms
            self.longest_ms = max(self.longest_ms, ms)
            long = ms >= self.threshold_ms
            if long:
                self.long_pauses += 1
        if long:
            log.warning("garbage collection (generation %d) paused the engine for %.0f ms "
                        "(%d objects collected, %d frozen)", gen, ms, info.get("collected", 0),
                        gc.get_freeze_count())


_WATCH: GcPauses | None = None


def watch(threshold_ms: float = 50.0) -> GcPauses:
    """Install the timing hook once per process (later calls return the same one)."""
    global _WATCH
    if _WATCH is None:
        _WATCH = GcPauses(threshold_ms)
        gc.callbacks.append(_WATCH)
    return _WATCH


def unwatch() -> None:
    """Remove the hook (tests)."""
    global _WATCH
    if _WATCH is not None:
        gc.callbacks.remove(_WATCH)
        _WATCH = None
