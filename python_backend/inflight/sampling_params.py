"""Per-request sampling parameters, validated at construction.

Every rule raises ``InvalidRequestError`` naming the field and the allowed range, so the
Triton adapters can hand the message to the client unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from inflight.errors import InvalidRequestError

# Hard ceilings; the engine applies its configured (lower) caps on top in `validate_for`.
MAX_N = 1024
MAX_LOGPROBS = 1024


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise InvalidRequestError(name, msg)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class SamplingParams:
    """What and how much to generate for one prompt.

    ``max_tokens`` is None only in the Python API, where it means "until max_seq_len";
    the Triton contract requires it explicitly (no silent default of 16).
    """

    max_tokens: int | None = None  # None: until eos or max_seq_len (never a silent 16)
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0 = disabled
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    end_id: int | None = None  # None: the model's eos ids
    pad_id: int | None = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    stop_words_ids: list[list[int]] = field(default_factory=list)  # token sequences
    bad_words: list[str] = field(default_factory=list)
    bad_words_ids: list[list[int]] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    n: int = 1
    logprobs: int | None = None  # None: none; 0: chosen token only; k: + top-k
    return_context_logits: bool = False
    return_generation_logits: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    # additive logit bias {token id: bias} (TensorRT-LLM `embedding_bias`), applied before
    # penalties and sampling
    embedding_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        self._validate()

    def _validate(self) -> None:
        mt = self.max_tokens
        _check(mt is None or (isinstance(mt, int) and mt >= 1), "max_tokens",
               f"must be an integer >= 1, got {mt!r}")
        _check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens",
               f"must be an integer >= 0, got {self.min_tokens!r}")
        _check(mt is None or self.min_tokens <= mt, "min_tokens",
               f"must be <= max_tokens ({mt}), got {self.min_tokens}")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature",
               f"must be finite and >= 0, got {self.temperature!r}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k",
               f"must be an integer >= 0 (0 disables), got {self.top_k!r}")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p",
               f"must be in (0, 1], got {self.top_p!r}")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p",
               f"must be in [0, 1], got {self.min_p!r}")
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", f"must be finite and > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            _check(_finite(v) and -2 <= v <= 2, name, f"must be in [-2, 2], got {v!r}")
        _check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**64), "seed",
               f"must be an integer in [0, 2^64), got {self.seed!r}")
        _check(isinstance(self.n, int) and 1 <= self.n <= MAX_N, "n",
               f"must be an integer in [1, {MAX_N}], got {self.n!r}")
        lp = self.logprobs
        _check(lp is None or (isinstance(lp, int) and 0 <= lp <= MAX_LOGPROBS), "logprobs",
               f"must be None or an integer in [0, {MAX_LOGPROBS}], got {lp!r}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop",
               "must be a list of non-empty strings")
        for name in ("stop_words_ids", "bad_words_ids"):
            seqs = getattr(self, name)
            _check(all(isinstance(s, (list, tuple)) and len(s) > 0 for s in seqs), name,
                   "must be a list of non-empty token-id lists")

    def validate_for(self, *, vocab_size: int, max_n: int, max_logprobs: int,
                     max_stop_words: int, max_bad_words: int) -> None:
        """Checks that depend on the model and the engine's configured caps."""
        _check(self.n <= max_n, "n", f"must be <= max_num_return_sequences ({max_n}), got {self.n}")
        _check(self.logprobs is None or self.logprobs <= max_logprobs, "logprobs",
               f"must be <= max_logprobs ({max_logprobs}), got {self.logprobs}")
        n_stop = len(self.stop) + len(self.stop_words_ids) + len(self.stop_token_ids)
        _check(n_stop <= max_stop_words, "stop_words",
               f"at most {max_stop_words} stop sequences allowed, got {n_stop}")
        n_bad = len(self.bad_words) + len(self.bad_words_ids)
        _check(n_bad <= max_bad_words, "bad_words",
               f"at most {max_bad_words} bad-word sequences allowed, got {n_bad}")
        for name, ids in (("end_id", [self.end_id]), ("pad_id", [self.pad_id]),
                          ("stop_token_ids", self.stop_token_ids),
                          ("stop_words", [t for s in self.stop_words_ids for t in s]),
                          ("bad_words", [t for s in self.bad_words_ids for t in s]),
                          ("embedding_bias", list(self.embedding_bias))):
            for t in ids:
                if t is None:
                    continue
                _check(isinstance(t, int) and 0 <= t < vocab_size, name,
                       f"token id must be in [0, {vocab_size}), got {t!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
