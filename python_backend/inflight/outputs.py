"""What the engine hands back: per-sequence deltas while running, aggregated outputs for the
Python API."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RequestMetrics:
    """Wall-clock-free timings (seconds, time.monotonic) and counts of one sequence."""

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    finished_time: float | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    num_preemptions: int
    kv_reused_blocks: int = 0
    kv_new_blocks: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def queue_time(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class SequenceUpdate:
    """Engine -> consumer, once per step in which a sequence made progress (or finished).

    Deltas: concatenating ``text`` / ``token_ids`` of every update gives the whole output.
    """

    request_id: str  # the client's id (the parent of n sequences)
    index: int  # sequence index in [0, n)
    token_ids: list[int]
    text: str
    logprobs: list[dict[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort | error
    stop_reason: int | str | None = None
    error: str | None = None
    cumulative_logprob: float | None = None
    metrics: RequestMetrics | None = None  # on the final update
    context_logits: torch.Tensor | None = None  # [prompt_len, V], final update only
    generation_logits: torch.Tensor | None = None  # [num_output, V], final update only


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None
    metrics: RequestMetrics | None = None
    context_logits: torch.Tensor | None = None
    generation_logits: torch.Tensor | None = None

    def apply(self, u: SequenceUpdate) -> None:
        self.text += u.text
        self.token_ids.extend(u.token_ids)
        if u.logprobs is not None:
            self.logprobs = (self.logprobs or []) + u.logprobs
        if u.finished:
            self.finish_reason = u.finish_reason
            self.stop_reason = u.stop_reason
            self.cumulative_logprob = u.cumulative_logprob
            self.metrics = u.metrics
            self.context_logits = u.context_logits
            self.generation_logits = u.generation_logits


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    error: str | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text
