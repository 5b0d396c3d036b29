"""The typed step boundary between the engine core and the worker (model runner + sampler).

``Scheduler.schedule()`` -> :class:`StepPlan`: flat arrays only (token ids, positions, slot
mapping, block tables, sequence lengths, per-row sampling arguments, row -> request handle),
no Python request objects, so a plan can cross a process boundary as bytes
(:meth:`StepPlan.to_bytes`; no pickle). The worker answers with a :class:`StepResult` (0..k
tokens per sampling row, optional logprobs); ``Scheduler.update(plan, result)`` turns it into
:class:`StepEvents`.

Shapes: T tokens, B scheduled requests, S sampling requests, N logits rows, W table width.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inflight import _core

# Arrays of a plan, in serialization order: (name, dtype)
_LAYOUT = (("input_ids", np.int64), ("positions", np.int64), ("slot_mapping", np.int64),
           ("logits_indices", np.int64), ("query_start_loc", np.int32), ("seq_lens", np.int32),
           ("sample_rows", np.int32), ("block_tables", np.int32))
_ROWS = (("handles", np.int64), ("sample_handles", np.int64), ("num_output", np.int64),
         ("input_pending", np.bool_), ("min_tokens", np.int32), ("temperature", np.float32),
         ("top_k", np.int32), ("top_p", np.float32), ("min_p", np.float32),
         ("repetition_penalty", np.float32), ("presence_penalty", np.float32),
         ("frequency_penalty", np.float32), ("logprobs", np.int32))
_SCALARS = ("step", "num_tokens", "num_reqs", "num_decodes", "num_logits", "num_samples",
            "table_width", "max_query_len", "max_seq_len")
_MAGIC = b"IFSP1"


@dataclass
class StepPlan:
    """Scheduler -> worker: one step. Filled by the C++ core (``build_step``).

    input_ids, positions, slot_mapping [T] int64; logits_indices [N] int64 (token rows whose
    logits are computed); query_start_loc [B+1], seq_lens [B] int32; block_tables [B, W]
    int32; sample_rows [S] int32 (logits row of each sampling request). ``rows``: handles [B]
    and, per sampling row, sample_handles, num_output (output tokens before this one),
    input_pending (its input token is still being sampled by the step in flight), min_tokens
    and the sampling arguments (temperature, top_k, top_p, min_p, the three penalties,
    logprobs: -1 none). ``ctx_rows``: handle -> logits rows [a, b) of its context logits.
    """

    step: int
    num_tokens: int
    num_reqs: int
    num_decodes: int
    num_logits: int
    num_samples: int
    table_width: int
    max_query_len: int
    max_seq_len: int
    arrays: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    ctx_rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    admitted: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    buffers: StepBuffers | None = None  # the host buffers the arrays view (live plans only)

    def __bool__(self) -> bool:
        return self.num_reqs > 0

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def sample_handles(self) -> list[int]:
        return self.rows["sample_handles"].tolist()  # type: ignore[no-any-return]

    # ---- bytes -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A self-describing copy: a JSON header (scalars, array dtypes and shapes) + raw arrays."""
        parts: list[bytes] = []
        meta: dict[str, Any] = {k: int(getattr(self, k)) for k in _SCALARS}
        meta["ctx_rows"] = [[h, a, b] for h, (a, b) in self.ctx_rows.items()]
        meta["admitted"], meta["preempted"] = list(self.admitted), list(self.preempted)
        shapes = []
        for group, spec in (("arrays", _LAYOUT), ("rows", _ROWS)):
            src = getattr(self, group)
            for name, dtype in spec:
                a = np.ascontiguousarray(src[name], dtype=dtype)
                shapes.append([group, name, list(a.shape)])
                parts.append(a.tobytes())
        meta["shapes"] = shapes
        head = json.dumps(meta).encode()
        return _MAGIC + struct.pack("<I", len(head)) + head + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> StepPlan:
        if data[:5] != _MAGIC:
            raise ValueError("not a StepPlan (bad magic)")
        (n,) = struct.unpack_from("<I", data, 5)
        meta = json.loads(data[9:9 + n])
        dtypes = dict(_LAYOUT) | dict(_ROWS)
        groups: dict[str, dict[str, np.ndarray]] = {"arrays": {}, "rows": {}}
        off = 9 + n
        for group, name, shape in meta["shapes"]:
            if group not in groups or name not in dtypes:
                raise ValueError(f"unknown StepPlan array {group}.{name}")
            dt = np.dtype(dtypes[name])
            count = int(np.prod(shape)) if shape else 1
            groups[group][name] = np.frombuffer(data, dt, count, off).reshape(shape).copy()
            off += count * dt.itemsize
        if off != len(data):
            raise ValueError("StepPlan bytes have trailing data")
        return cls(**{k: meta[k] for k in _SCALARS}, arrays=groups["arrays"], rows=groups["rows"],
                   ctx_rows={h: (a, b) for h, a, b in meta["ctx_rows"]},
                   admitted=meta["admitted"], preempted=meta["preempted"])


@dataclass
class StepResult:
    """Worker -> scheduler: the k-th sampling row's tokens are tokens[offsets[k]:offsets[k+1]]
    (0..n per row). logprobs (when any row asked): the chosen token's logprob per token, and
    per token the (token, logprob) top list."""

    step: int
    tokens: np.ndarray  # [sum] int64
    offsets: np.ndarray  # [S + 1] int64
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    @classmethod
    def one_per_row(cls, step: int, tokens: list[int], logprobs: list[float] | None = None,
                    top_logprobs: list[list[tuple[int, float]]] | None = None) -> StepResult:
        return cls(step, np.asarray(tokens, dtype=np.int64), np.arange(len(tokens) + 1, dtype=np.int64),
                   logprobs, top_logprobs)


FINISH_NAMES = {0: None, 1: "stop", 2: "length"}


@dataclass
class StepEvents:
    """update() -> the front end: one entry per sampled row whose request is still here.

    For event i: its request ``handles[i]`` has output tokens [0, output_len[i]) now;
    ``tokens[offsets[i]:offsets[i+1]]`` are those from ``start[i]`` on (a stop-sequence cut can
    reach back before tokens reported earlier). finish[i]: 0 running, 1 stop, 2 length;
    stop_token / stop_sequence: what stopped it (-1: not that)."""

    handles: np.ndarray
    rows: np.ndarray
    start: np.ndarray
    output_len: np.ndarray
    finish: np.ndarray
    stop_token: np.ndarray
    stop_sequence: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.handles)


class StepBuffers:
    """Host buffers the C++ core writes a step's layout into, reused every step.

    Capacity grows on demand. Pinned when ``pin`` (a CUDA worker) so that the worker's
    ``.to(device, non_blocking=True)`` is a real async copy; the worker calls
    :meth:`record_copies` after enqueuing them and the next build waits for those copies
    before it overwrites the buffers.
    """

    def __init__(self, max_tokens: int, max_reqs: int, max_table_width: int, pin: bool = False) -> None:
        self.pin = pin
        self._copied: Any = None  # torch.cuda.Event of the last step's copies
        self._alloc(max_tokens, max_reqs, max_table_width)

    def _alloc(self, tokens: int, reqs: int, width: int) -> None:
        self.capacity = (tokens, reqs, width)
        sizes = {"query_start_loc": reqs + 1, "seq_lens": reqs, "sample_rows": reqs,
                 "block_tables": reqs * width}
        self.tensors: dict[str, torch.Tensor] = {}
        for name, dtype in _LAYOUT:
            tdtype = torch.int64 if dtype is np.int64 else torch.int32
            self.tensors[name] = torch.zeros(max(sizes.get(name, tokens), 1), dtype=tdtype,
                                             pin_memory=self.pin)
        self.arrays: dict[str, np.ndarray] = {k: t.numpy() for k, t in self.tensors.items()}
        self.views = _core.StepBufferViews(*(self.arrays[name] for name, _ in _LAYOUT))

    def ensure(self, tokens: int, reqs: int, width: int) -> None:
        cap = self.capacity
        if tokens > cap[0] or reqs > cap[1] or width > cap[2]:
            self._alloc(max(tokens, cap[0]), max(reqs, cap[1]), max(width, cap[2]))

    def wait_copies(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None

    def record_copies(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()

    def load(self, plan: StepPlan) -> StepPlan:
        """A received plan (``from_bytes``) copied into these buffers, for a tensor-parallel
        worker rank: its ``prepare`` then copies to the device asynchronously from pinned memory
        as rank 0 does, instead of synchronous pageable copies that wait for the step the GPU
        is still running (which kept the worker a whole CPU preparation behind rank 0)."""
        self.wait_copies()
        b, w = plan.num_reqs, plan.table_width
        self.ensure(plan.num_tokens, b, w)
        arrays: dict[str, np.ndarray] = {}
        for name, _ in _LAYOUT:
            src = plan.arrays[name].reshape(-1)
            dst = self.arrays[name][:src.size]
            dst[:] = src
            arrays[name] = dst.reshape(b, w) if name == "block_tables" else dst
        plan.arrays, plan.buffers = arrays, self
        return plan

    def plan(self, step: int, lay: Any, rows: dict[str, np.ndarray], admitted: list[int],
             preempted: list[int]) -> StepPlan:
        """Views of the buffers as a StepPlan (valid until the next build)."""
        a = self.arrays
        t, b, n, w = lay.num_tokens, lay.num_reqs, lay.num_logits, lay.table_width
        arrays = {"input_ids": a["input_ids"][:t], "positions": a["positions"][:t],
                  "slot_mapping": a["slot_mapping"][:t], "logits_indices": a["logits_indices"][:n],
                  "query_start_loc": a["query_start_loc"][:b + 1], "seq_lens": a["seq_lens"][:b],
                  "sample_rows": a["sample_rows"][:lay.num_samples],
                  "block_tables": a["block_tables"][:b * w].reshape(b, w)}
        return StepPlan(step, t, b, lay.num_decodes, n, lay.num_samples, w, lay.max_query_len,
                        lay.max_seq_len, arrays, rows, dict(lay.ctx_rows), admitted, preempted,
                        buffers=self)


__all__ = ["StepPlan", "StepResult", "StepEvents", "StepBuffers", "FINISH_NAMES"]
