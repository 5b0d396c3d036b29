"""One response per request: what a non-decoupled (unary) model must send.

The serving core sends one response per finished sequence (batch items x n), the FINAL flag on
the last. A non-decoupled model may send exactly one response, so for `decoupled_mode=false`
the engine model's sender is wrapped in a :class:`GatheringSender`, which keeps every
response's tensors and sends their stack with the FINAL flag. :func:`stack_parts` is the pure
part (unit-tested without a server): rows ordered by (batch_index, sequence_index), ragged
trailing dims padded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Part = dict[str, np.ndarray]


def _pad_value(name: str, arr: np.ndarray, pad_id: int) -> Any:
    if arr.dtype.kind == "O":
        return b""
    if name == "output_ids":
        return pad_id
    return 0


def stack_parts(parts: list[Part], pad_id: int = 0) -> Part:
    """Per-sequence outputs (each [1, ...]) -> one set of [rows, ...] outputs.

    Rows follow (batch_index, sequence_index) when the parts carry them, else arrival order.
    A tensor some parts lack (a flag asked on one batch item only cannot happen: flags are per
    request) is left out. Trailing dims are padded to the largest (output_ids with ``pad_id``).
    """
    if not parts:
        return {}

    def key(p: Part) -> tuple[int, int]:
        b = p.get("batch_index")
        s = p.get("sequence_index")
        return (int(b.reshape(-1)[0]) if b is not None else 0,
                int(s.reshape(-1)[0]) if s is not None else 0)

    ordered = sorted(parts, key=key)
    out: Part = {}
    names = [n for n in ordered[0] if all(n in p for p in ordered)]
    for name in names:
        arrs = [np.asarray(p[name]) for p in ordered]
        ndim = max(a.ndim for a in arrs)
        arrs = [a.reshape((1,) * (ndim - a.ndim) + a.shape) for a in arrs]
        shape = [max(a.shape[d] for a in arrs) for d in range(1, ndim)]
        rows = []
        for a in arrs:
            if list(a.shape[1:]) != shape:
                padded = np.full([a.shape[0], *shape], _pad_value(name, a, pad_id), dtype=a.dtype)
                padded[tuple(slice(0, n) for n in a.shape)] = a
                a = padded
            rows.append(a)
        out[name] = np.concatenate(rows, axis=0)
    return out


class GatheringSender:
    """Stands in for a request's response sender: keeps each response, sends one at FINAL.

    The first error of any sequence becomes the request's error (a unary client gets one
    answer: the error, not a partial batch).
    """

    def __init__(self, pb: Any, sender: Any, pad_id: int = 0,
                 finish: Any = None) -> None:
        self.pb = pb
        self.sender = sender
        self.pad_id = pad_id
        self.parts: list[Part] = []
        self.error: Any = None
        self.finish = finish  # optional: Part -> list[Tensor] (e.g. text_output shaping)

    def is_cancelled(self) -> bool:
        return bool(self.sender.is_cancelled())

    def send(self, response: Any = None, flags: int = 0) -> None:
        pb = self.pb
        if response is not None:
            if response.has_error():
                if self.error is None:
                    self.error = response.error()
            else:
                tensors = response.output_tensors()
                if tensors:
                    self.parts.append({t.name(): t.as_numpy() for t in tensors})
        if not flags & pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            return
        if self.error is not None:
            final = pb.InferenceResponse(output_tensors=[], error=self.error)
        else:
            stacked = stack_parts(self.parts, self.pad_id)
            final = pb.InferenceResponse(output_tensors=[pb.Tensor(n, a) for n, a in stacked.items()])
        self.parts = []
        self.sender.send(final, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class GatheringRequest:
    """A request whose response sender gathers (what ServingCore.new_call asks for)."""

    def __init__(self, request: Any, sender: GatheringSender) -> None:
        self._request = request
        self._sender = sender

    def get_response_sender(self) -> GatheringSender:
        return self._sender

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)
