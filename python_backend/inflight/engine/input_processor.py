"""Input processing: a request's prompt and parameters checked against the engine's limits,
and the admission rules — each in one place, for every path into the engine (the in-thread
``LLMEngine`` / ``EngineLoop`` and the engine process's client, which validates in the Triton
stub before anything is sent).

Safe from any thread: it reads only fixed limits and the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inflight.config import EngineConfig
from inflight.errors import InvalidRequestError, QueueFullError
from inflight.sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineLimits:
    """What validation reads of an engine; the engine process sends it in its Hello."""

    vocab_size: int
    max_seq_len: int
    num_kv_blocks: int
    block_size: int

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


class InputProcessor:
    def __init__(self, cfg: EngineConfig, tokenizer: Any, limits: EngineLimits) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.limits = limits

    def tokenize(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def prepare(self, prompt: str | list[int], params: SamplingParams) -> tuple[list[int], int]:
        """Tokenize, encode bad words, validate. -> (prompt ids, resolved max_tokens).
        Raises InvalidRequestError naming the field."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if params.bad_words:
            enc = [self.tokenizer.encode(w, add_special_tokens=False) for w in params.bad_words]
            params.bad_words_ids = params.bad_words_ids + [w for w in enc if w]
            params.bad_words = []
        return ids, self.resolve(ids, params)

    def resolve(self, prompt_ids: list[int], p: SamplingParams) -> int:
        """Validate against the model and engine caps; returns the resolved max_tokens."""
        lim, c = self.limits, self.cfg
        n, vocab, max_len = len(prompt_ids), lim.vocab_size, lim.max_seq_len
        if n == 0:
            raise InvalidRequestError("input_ids", "the prompt must contain at least one token")
        bad = next((t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab)), None)
        if bad is not None:
            raise InvalidRequestError("input_ids", f"token id must be in [0, {vocab}), got {bad!r}")
        if n >= max_len:
            raise InvalidRequestError(
                "input_ids", f"prompt has {n} tokens; max_seq_len is {max_len} "
                "and at least one token must be generated")
        max_tokens = p.max_tokens if p.max_tokens is not None else max_len - n
        if n + max_tokens > max_len:
            raise InvalidRequestError(
                "max_tokens", f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds "
                f"max_seq_len ({max_len}); allowed max_tokens <= {max_len - n}")
        if not c.enable_chunked_context:
            # without chunking a prompt (and, under max_utilization, a preempted request's
            # whole recompute) must fit into one step's token budget
            limit = n if c.batch_scheduler_policy == "guaranteed_no_evict" else n + max_tokens
            if limit > c.max_num_tokens:
                raise InvalidRequestError(
                    "input_ids", f"{limit} tokens exceed max_num_tokens ({c.max_num_tokens}) and "
                    "enable_chunked_context is false; shorten the prompt or enable chunking")
        p.validate_for(vocab_size=vocab, max_n=c.max_num_return_sequences,
                       max_logprobs=c.max_logprobs, max_stop_words=c.max_stop_words,
                       max_bad_words=c.max_bad_words)
        need = lim.blocks_needed(n + max_tokens)
        if need > lim.num_kv_blocks:
            raise InvalidRequestError(
                "max_tokens", f"prompt ({n}) + max_tokens ({max_tokens}) needs {need} KV blocks but "
                f"the pool holds {lim.num_kv_blocks} ({lim.num_kv_blocks * lim.block_size} "
                "tokens); lower max_tokens or raise max_tokens_in_paged_kv_cache")
        return max_tokens


def check_admission(cfg: EngineConfig, request_id: str, num_seqs: int, *, queued: int,
                    live: bool) -> None:
    """The admission rules: no second live request with the same id; at most
    ``max_queue_size`` sequences waiting (``queued``: those waiting or on their way)."""
    if live:
        raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")
    cap = cfg.max_queue_size
    if cap and queued + num_seqs > cap:
        # the first two phrases are the ones tensorrtllm_backend's clients look for
        raise QueueFullError(f"Exceeds maximum queue size: Maximum queue size of {cap} reached; "
                             f"request {request_id!r} exceeds maximum queue size ({cap})")


__all__ = ["EngineLimits", "InputProcessor", "check_admission"]
