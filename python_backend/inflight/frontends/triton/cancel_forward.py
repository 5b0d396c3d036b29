"""Client cancellation forwarded to the engine by the models in front of it.

`ensemble`: postprocessing forwards it (`CancelForwarder`); `bls`: the bls model polls its
own sender. Both stop the engine request over a local datagram socket that the engine
model reads (`StopSocket`, `send_stop`), not through Triton: BLS `stop` requests sent while
BLS streams from the engine were in flight deadlocked tritonserver 2.51 (the cancellation
storm hung after ~50 bls requests). The engine ends such a request quietly (a normal final,
finish_reason "abort"): the front model answers its own client.

Triton (2.51 and later) does not cancel an ensemble's step that is already running when the
client cancels (gRPC stream cancel or client exit, HTTP `generate_stream` disconnect): the
decoupled `engine` would generate up to `max_tokens` for nobody (measured: 480 of 480 tokens
after a cancel). It does mark every *later* step request as cancelled, and each engine
response reaches `postprocessing` as such a step. So postprocessing asks
``request.is_cancelled()`` (one IPC round trip to tritonserver; the first response of an
engine request always, then at most every `poll_s` per engine request while up to
`POLL_ALL` requests stream, and with more of them a share of that budget so that each is
still asked at least every `POLL_CYCLE_S`: the `engine` / `llm` models' own sender polls
the same way, `ServingCore._poll_share`) and, once it is true, sends the engine's stop socket the
response's `engine_request_key` and answers CANCELLED; later responses of that request are
refused without asking again. The engine reads the socket at its next cancellation poll
(0.1 s), aborts the request within a step and frees its KV blocks.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
POLL_S = 0.1  # the serving core polls its own senders at the same interval
POLL_ALL = 64  # streaming requests polled every POLL_S; more: a share (as serving.POLL_ALL)
POLL_CYCLE_S = 1.0  # ... so that each is still polled at least this often
MAX_TRACKED = 4096  # keys remembered (oldest forgotten first); far above any live batch


class CancelForwarder:
    """Per postprocessing instance: which engine requests to poll, which were stopped."""

    def __init__(self, engine_model: str, poll_s: float = POLL_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.engine_model = engine_model
        self.poll_s = poll_s
        self._now = now
        self._polled: OrderedDict[int, float] = OrderedDict()  # key -> last poll time
        self._stopped: OrderedDict[int, None] = OrderedDict()
        # requests seen streaming in the current / the last POLL_CYCLE_S window: the load
        # that sets the poll interval (keys of requests that ended unseen age out with it)
        self._seen: set[int] = set()
        self._window_end = 0.0
        self._interval = poll_s

    def interval(self) -> float:
        """Seconds between two polls of one engine request at the current load."""
        return self._interval

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
        self._seen.add(key)
        if now >= self._window_end:  # the last window's load sets the next one's interval
            self._interval = min(max(self.poll_s, self.poll_s * len(self._seen) / POLL_ALL),
                                 max(self.poll_s, POLL_CYCLE_S))
            self._seen = {key}
            self._window_end = now + POLL_CYCLE_S
        last = self._polled.get(key)
        if last is not None and now - last < self._interval:
            return False
        _remember(self._polled, key, now)
        if not request.is_cancelled():
            return False
        _remember(self._stopped, key, None)
        self._polled.pop(key, None)
        send_stop(self.engine_model, key)
        return True


def stop_address(engine_model: str) -> bytes:
    """The engine model's stop socket: an abstract UNIX name per tritonserver (every stub
    of a server is its child, so ``getppid()`` is the server's pid in all of them)."""
    return f"\0inflight-stop-{engine_model}-{os.getppid()}".encode()


_KEY = struct.Struct("<Q")
_send_sock: socket.socket | None = None


def send_stop(engine_model: str, key: int | str) -> None:
    """Ask the engine model to stop the request with engine_request_key ``key`` (int) or
    every request with client id ``key`` (str); fire and forget, never raises."""
    global _send_sock
    data = b"k" + _KEY.pack(key) if isinstance(key, int) else b"c" + key.encode()
    try:
        if _send_sock is None:
            _send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _send_sock.sendto(data, stop_address(engine_model))
    except OSError:
        log.warning("cannot reach %s's stop socket for request %s", engine_model, key,
                    exc_info=True)


class StopSocket:
    """In the engine model: the bound stop socket, read without blocking by the serving
    core's sender thread at its cancellation poll (no thread of its own). A datagram is
    b"k" + an 8-byte engine_request_key or b"c" + a UTF-8 client id (tagged: a client id of
    8 bytes, such as "unary--0", once read as a key and stopped nothing)."""

    def __init__(self, engine_model: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(stop_address(engine_model))
        self._sock.setblocking(False)

    def drain(self) -> list[int | str]:
        out: list[int | str] = []
        while True:
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, OSError):
                return out
            tag, body = data[:1], data[1:]
            if tag == b"k" and len(body) == _KEY.size:
                out.append(_KEY.unpack(body)[0])
            elif tag == b"c":
                out.append(body.decode("utf-8", "replace"))
            else:
                log.warning("stop socket: malformed datagram %r ignored", data[:32])

    def close(self) -> None:
        self._sock.close()


def _remember(d: OrderedDict[int, Any], key: int, value: Any) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > MAX_TRACKED:
        d.popitem(last=False)
