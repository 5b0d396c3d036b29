"""The engine's handle on one sequence. Its tokens, counters and status live in the scheduler
core (C++); this record holds only what the core does not: the client's ids, the sampling
parameters, timestamps, and where its outputs go.

Progress is counters, not phases (in the core): ``num_computed`` counts tokens whose KV is in
the cache, ``num_tokens`` prompt + generated tokens; chunked prefill, prefix hits and
preemption only move counters.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from inflight.sampling_params import SamplingParams


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"


@dataclass
class RequestTimes:
    """Monotonic timestamps (time.monotonic()), filled by the engine."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


@dataclass
class RequestHandle:
    """One sequence of a client request (n > 1 fans out into n of these)."""

    handle: int  # the scheduler core's handle
    seq_id: str  # the core's id: the client's id, or "id#i" for sequence i of n
    parent_id: str  # the client's request id
    seq_index: int
    params: SamplingParams
    num_prompt_tokens: int
    times: RequestTimes = field(default_factory=RequestTimes)
    error: str | None = None


__all__ = ["FinishReason", "RequestHandle", "RequestTimes"]
