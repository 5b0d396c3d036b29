"""Front-end side of the step boundary: turns the core's step events into per-sequence deltas.

Incremental detokenization, stop strings, the hold-back of tokens that may still start a
stop sequence, logprobs formatting and the final update's metrics. It reads only
:class:`StepEvents` and the sampler's host output, never scheduler state, so it can run in
another process than the step loop. It keeps, per sequence, only the output tokens not yet
emitted (at most the hold-back window plus one step), never a copy of the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inflight.engine.detokenizer import IncrementalDetokenizer
from inflight.engine.request import RequestHandle
from inflight.outputs import RequestMetrics, SequenceUpdate

UpdateCallback = Callable[[SequenceUpdate], None]


@dataclass
class SequenceOutput:
    """Output-side state of one sequence."""

    req: RequestHandle
    detok: IncrementalDetokenizer | None
    callback: UpdateCallback | None
    hold: int = 0  # tokens held back while they may start a stop-word sequence
    num_output: int = 0  # output tokens the core reported so far
    base: int = 0  # output index of tail[0]
    tail: list[int] = field(default_factory=list)  # output tokens [base, num_output)
    emitted: int = 0  # output tokens sent in deltas
    fed: int = 0  # output tokens fed to the detokenizer
    logprobs: list[dict[int, float]] | None = None  # of output tokens [lp_base, num_output)
    lp_base: int = 0
    cumulative_logprob: float = 0.0
    context_logits: list[torch.Tensor] | None = None
    generation_logits: list[torch.Tensor] | None = None
    stop_reason: int | str | None = None

    def apply(self, start: int, tokens: list[int], output_len: int,
              logprob: tuple[float, list[tuple[int, float]]] | None) -> None:
        """The core's event: output is now [0, output_len), ``tokens`` from ``start`` on."""
        assert start >= self.base, "a stop cut reached into tokens already emitted"
        new = output_len - max(start, self.num_output)  # tokens not seen before
        self.tail[start - self.base:] = tokens
        if self.logprobs is not None:
            if logprob is not None and new > 0:
                chosen, top = logprob
                tok = tokens[len(tokens) - new]
                lp = {tok: chosen}
                lp.update(dict(top))
                self.logprobs.append(lp)
                self.cumulative_logprob += chosen
            del self.logprobs[max(output_len - self.lp_base, 0):]
        self.num_output = output_len

    def feed(self, finished: bool, drop_last: bool) -> None:
        """Detokenize output tokens that can no longer be part of a stop-word sequence."""
        if self.detok is None:
            return
        end = self.num_output - (1 if drop_last else 0) - (0 if finished else self.hold)
        if end > self.fed:
            self.detok.add(self.tail[self.fed - self.base:end - self.base])
            self.fed = end

    def delta(self, final: bool) -> SequenceUpdate:
        n = self.num_output
        limit = n if final else max(n - self.hold, self.emitted)
        new_ids = self.tail[self.emitted - self.base:limit - self.base]
        self.emitted = limit
        lps = None
        if self.logprobs is not None:
            lps = self.logprobs[: limit - self.lp_base]
            del self.logprobs[: limit - self.lp_base]
            self.lp_base = limit
        keep = min(self.emitted, self.fed if self.detok is not None else self.emitted)
        del self.tail[: keep - self.base]
        self.base = keep
        text = self.detok.take_delta(final) if self.detok is not None else ""
        r = self.req
        return SequenceUpdate(r.parent_id, r.seq_index, new_ids, text, lps)

    def final(self, reason: str, state: dict[str, Any], blocks: tuple[int, int, int],
              emit: bool) -> SequenceUpdate:
        """The last update: releases held-back tokens (aborts), flushes the text, adds metrics."""
        if emit:
            self.feed(True, False)
        if self.detok is not None and reason != "stop":
            self.detok.flush()
        u = self.delta(final=True)
        r = self.req
        u.finished, u.finish_reason, u.stop_reason, u.error = True, reason, self.stop_reason, r.error
        u.cumulative_logprob = self.cumulative_logprob if r.params.logprobs is not None else None
        t = r.times
        reused, fresh, _total = blocks
        u.metrics = RequestMetrics(t.arrival, t.first_scheduled, t.first_token, t.finished,
                                   r.num_prompt_tokens, self.num_output, int(state["num_cached"]),
                                   int(state["num_preemptions"]), reused, fresh)
        if self.context_logits:
            u.context_logits = torch.cat(self.context_logits)[: r.num_prompt_tokens]
        if self.generation_logits:
            u.generation_logits = torch.stack(self.generation_logits[: self.num_output])
        return u


def new_output(req: RequestHandle, tokenizer: Any, prompt_ids: list[int],
               callback: UpdateCallback | None) -> SequenceOutput:
    p = req.params
    detok = (IncrementalDetokenizer(tokenizer, prompt_ids, p.skip_special_tokens, p.stop,
                                    p.include_stop_str_in_output) if p.detokenize else None)
    hold = max((len(w) for w in p.stop_words_ids), default=1) - 1
    return SequenceOutput(req, detok, callback, hold=hold,
                          logprobs=[] if p.logprobs is not None else None,
                          context_logits=[] if p.return_context_logits else None,
                          generation_logits=[] if p.return_generation_logits else None)


__all__ = ["SequenceOutput", "UpdateCallback", "new_output"]
