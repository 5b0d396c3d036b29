"""One sequence being generated. Progress is counters, not phases.

``num_computed_tokens`` counts tokens whose KV is in the cache; ``num_tokens`` counts prompt +
generated tokens. A step computes ``num_tokens - num_computed_tokens`` (or a chunk of it);
a token is sampled when the step brings the two counters level. Chunked prefill, prefix
hits and preemption (which resets ``num_computed_tokens`` to 0) only move counters.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"  # cancelled by the client
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
    RequestStatus.FINISHED_ERROR,
}


@dataclass
class RequestTimes:
    """Monotonic timestamps (time.monotonic()), filled by the engine."""

    arrival: float = 0.0
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never None
    eos_token_ids: frozenset[int]
    priority: int = 0
    seq_index: int = 0  # which of the parent's n sequences
    parent_id: str | None = None
    arrival_order: int = 0
    # filled by the engine
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    num_cached_prompt_tokens: int = 0  # prefix-cache hit on first schedule
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    context_logits: list[torch.Tensor] | None = None
    generation_logits: list[torch.Tensor] | None = None
    generator: torch.Generator | None = None
    times: RequestTimes = field(default_factory=RequestTimes)
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if not self.times.arrival:
            self.times.arrival = time.monotonic()
        if self.params.logprobs is not None:
            self.logprobs = []
        if self.params.return_context_logits:
            self.context_logits = []
        if self.params.return_generation_logits:
            self.generation_logits = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def max_total_tokens(self) -> int:
        """Tokens the request may hold at most: prompt + max_tokens."""
        return len(self.prompt_token_ids) + self.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_token(self, token: int) -> None:
        self.token_ids.append(token)
