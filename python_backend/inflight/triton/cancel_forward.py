"""Client cancellation forwarded to the engine by the models in front of it.

`ensemble`: postprocessing forwards it (`CancelForwarder`); `bls`: the bls model polls its
own sender and stops its engine request (`stop_engine_request`).

Triton (2.51 and later) does not cancel an ensemble's step that is already running when the
client cancels (gRPC stream cancel or client exit, HTTP `generate_stream` disconnect): the
decoupled `engine` would generate up to `max_tokens` for nobody (measured: 480 of 480 tokens
after a cancel). It does mark every *later* step request as cancelled, and each engine
response reaches `postprocessing` as such a step. So postprocessing asks
``request.is_cancelled()`` (one IPC round trip; at most every `poll_s` per engine request,
the first response always) and, once it is true, sends the engine a `stop` carrying the
response's `engine_request_key` (a BLS call) and answers CANCELLED; later responses of that
request are refused without asking again. The engine then aborts the request within a step
and frees its KV blocks.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
POLL_S = 0.1  # the serving core polls its own senders at the same interval
MAX_TRACKED = 4096  # keys remembered (oldest forgotten first); far above any live batch


class CancelForwarder:
    """Per postprocessing instance: which engine requests to poll, which were stopped."""

    def __init__(self, pb: Any, engine_model: str, poll_s: float = POLL_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.pb = pb
        self.engine_model = engine_model
        self.poll_s = poll_s
        self._now = now
        self._polled: OrderedDict[int, float] = OrderedDict()  # key -> last poll time
        self._stopped: OrderedDict[int, None] = OrderedDict()

    def cancelled(self, request: Any, tensors: dict[str, np.ndarray]) -> bool:
        """True if this step's ensemble was cancelled (the engine request is stopped then)."""
        arr = tensors.get("engine_request_key")
        if arr is None:  # postprocessing called on its own, not behind the engine
            return False
        key = int(arr.reshape(-1)[0])
        if key in self._stopped:
            return True
        if "finish_reason" in tensors:  # the sequence's last response: nothing left to stop
            self._polled.pop(key, None)
            return False
        now = self._now()
        last = self._polled.get(key)
        if last is not None and now - last < self.poll_s:
            return False
        _remember(self._polled, key, now)
        if not request.is_cancelled():
            return False
        _remember(self._stopped, key, None)
        stop_engine_request(self.pb, self.engine_model, key=key)
        return True


def stop_engine_request(pb: Any, engine_model: str, *, key: int | None = None,
                        request_id: str = "") -> None:
    """Send the engine model a `stop`: for the request with `engine_request_key` ``key``, else
    for every request with client id ``request_id``. Never raises: the client is gone anyway."""
    inputs = [pb.Tensor("stop", np.array([[True]], dtype=bool)),
              pb.Tensor("input_ids", np.zeros((1, 1), dtype=np.int32))]
    if key is not None:
        inputs.append(pb.Tensor("engine_request_key", np.array([[key]], dtype=np.uint64)))
    stop = pb.InferenceRequest(model_name=engine_model, request_id=request_id, inputs=inputs,
                               requested_output_names=[])
    try:
        for resp in stop.exec(decoupled=True):
            if resp.has_error():
                log.warning("stopping engine request %s: %s", key if key is not None else
                            request_id, resp.error().message())
    except Exception:  # noqa: BLE001 - never fail the caller's step over it
        log.warning("stopping engine request %s failed", key if key is not None else request_id,
                    exc_info=True)


def _remember(d: OrderedDict[int, Any], key: int, value: Any) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > MAX_TRACKED:
        d.popitem(last=False)
