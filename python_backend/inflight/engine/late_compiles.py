"""OpenAI-Triton kernels that compile after warm-up: each one stalled a serving step.

A server must compile every kernel specialization it will need before it reports ready
(engine/warmup.py); the H200 profile of issue 13 saw Triton compiling 8 s into serving, and
a shape the warm-up misses costs one step 0.1-1 s (a TTFT p99 outlier). ``watch()``, called
once warm-up is done, installs Triton's ``jit_cache_hook`` (Triton >= 3.4; called on every
specialization this process has not loaded yet, before it is compiled or read from the disk
cache) so that each such event is counted and logged as a warning naming the kernel and its
argument types: the shape to add to the warm-up. Nothing is skipped or changed: the hook
returns False and Triton compiles as before. Under ``TRITON_INTERPRET=1`` nothing compiles,
so nothing is reported.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class LateCompiles:
    """Counts specializations compiled while serving, per kernel; logs the first of each."""

    def __init__(self) -> None:
        self.kernels: dict[str, int] = {}  # kernel name -> late compiles
        self._lock = threading.Lock()  # Triton may compile from several threads

    def __call__(self, *, repr: str, fn: Any, **_: Any) -> bool:  # noqa: A002 (Triton's name)
        name = getattr(fn, "name", None) or str(repr).split("[", 1)[0]
        with self._lock:
            first = name not in self.kernels
            self.kernels[name] = self.kernels.get(name, 0) + 1
        if first:
            log.warning("OpenAI-Triton compiled %s after warm-up: that step stalled while it "
                        "compiled. The warm-up (engine/warmup.py) does not cover this shape; "
                        "please report it with this line: %s", name, " ".join(str(repr).split())[:2000])
        return False  # compile as usual


_WATCH = LateCompiles()


def watch() -> LateCompiles | None:
    """Install the hook once per process; returns the counter (None: this Triton has no
    ``knobs.runtime.jit_cache_hook``)."""
    try:
        from triton import knobs
        runtime = knobs.runtime
        runtime.jit_cache_hook  # noqa: B018 (present since Triton 3.4)
    except (ImportError, AttributeError):
        return None
    if runtime.jit_cache_hook is not _WATCH:
        if runtime.jit_cache_hook is not None:  # someone else's hook: keep theirs
            log.info("Triton's jit_cache_hook is already set; late compiles are not watched")
            return None
        runtime.jit_cache_hook = _WATCH
    return _WATCH
