"""The engine channel's messages: what crosses between the front end (a Triton python stub)
and the engine process (engine/process.py), as msgpack through msgspec.

Every message is a tagged ``msgspec.Struct``; decoding checks the tag and every field's type,
so malformed or foreign bytes raise ``WireError`` instead of building objects (no pickle:
request text and tensors come from the network). Arrays (returned logits) travel as raw
little-endian float32 bytes with their shape.

front end -> engine: ``Add`` (validated, tokenized request), ``Abort``, ``Shutdown``.
engine -> front end: ``Hello`` (the engine's limits, once loaded), ``Step`` (the updates of a
step or an intake plus the stats after it), ``Dead`` (a step raised: the reason).
"""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import torch

from inflight.outputs import RequestMetrics, SequenceUpdate
from inflight.sampling_params import SamplingParams


class WireError(ValueError):
    """Bytes that are not a well-formed channel message."""


class Array(msgspec.Struct, array_like=True):
    shape: list[int]
    data: bytes  # float32, C order

    @classmethod
    def of(cls, t: torch.Tensor) -> Array:
        a = np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())
        return cls(list(a.shape), a.tobytes())

    def tensor(self) -> torch.Tensor:
        n = int(np.prod(self.shape)) if self.shape else 1
        if len(self.data) != 4 * n:
            raise WireError(f"array of shape {self.shape} needs {4 * n} bytes, got {len(self.data)}")
        return torch.from_numpy(np.frombuffer(self.data, dtype=np.float32).reshape(self.shape).copy())


# ---- front end -> engine ------------------------------------------------------------------
class Add(msgspec.Struct, tag="add", array_like=True):
    seq: int  # the sender's running number (echoed in Step.acked)
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams  # a dataclass: msgspec checks each field's type, then __post_init__
    priority: int = 0


class Abort(msgspec.Struct, tag="abort", array_like=True):
    request_id: str


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


# ---- engine -> front end ------------------------------------------------------------------
class Hello(msgspec.Struct, tag="hello", array_like=True):
    pid: int
    vocab_size: int
    max_seq_len: int
    num_blocks: int
    block_size: int
    eos_token_ids: list[int]
    warmup_s: float = 0.0


class Stats(msgspec.Struct, array_like=True):
    num_waiting: int
    num_running: int
    num_steps: int
    step_tokens: int
    kv: list[int]  # KVStats fields in order


class Update(msgspec.Struct, array_like=True):
    request_id: str
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[dict[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    cumulative_logprob: float | None = None
    metrics: list[float | int | None] | None = None  # RequestMetrics fields in order
    context_logits: Array | None = None
    generation_logits: Array | None = None


class Step(msgspec.Struct, tag="step", array_like=True):
    updates: list[Update]
    stats: Stats
    acked: int  # the last Add.seq taken into the engine when ``stats`` was read


class Dead(msgspec.Struct, tag="dead", array_like=True):
    reason: str


ToEngine = Add | Abort | Shutdown
FromEngine = Hello | Step | Dead

_enc = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_from_engine = msgspec.msgpack.Decoder(FromEngine)
_METRICS = [f.name for f in dataclasses.fields(RequestMetrics)]


def encode(msg: ToEngine | FromEngine) -> bytes:
    return _enc.encode(msg)


def decode_to_engine(data: bytes) -> ToEngine:
    try:
        return _to_engine.decode(data)
    except msgspec.MsgspecError as e:
        raise WireError(f"malformed engine request: {e}") from None


def decode_from_engine(data: bytes) -> FromEngine:
    try:
        return _from_engine.decode(data)
    except msgspec.MsgspecError as e:
        raise WireError(f"malformed engine message: {e}") from None


def wire_update(u: SequenceUpdate) -> Update:
    m = u.metrics
    return Update(u.request_id, u.index, list(u.token_ids), u.text, u.logprobs, u.finished,
                  u.finish_reason, u.stop_reason, u.error, u.cumulative_logprob,
                  None if m is None else [getattr(m, k) for k in _METRICS],
                  None if u.context_logits is None else Array.of(u.context_logits),
                  None if u.generation_logits is None else Array.of(u.generation_logits))


def sequence_update(w: Update) -> SequenceUpdate:
    metrics = None
    if w.metrics is not None:
        if len(w.metrics) != len(_METRICS):
            raise WireError(f"metrics need {len(_METRICS)} values, got {len(w.metrics)}")
        metrics = RequestMetrics(*w.metrics)  # type: ignore[arg-type]
    return SequenceUpdate(w.request_id, w.index, w.token_ids, w.text, w.logprobs, w.finished,
                          w.finish_reason, w.stop_reason, w.error, w.cumulative_logprob, metrics,
                          None if w.context_logits is None else w.context_logits.tensor(),
                          None if w.generation_logits is None else w.generation_logits.tensor())
