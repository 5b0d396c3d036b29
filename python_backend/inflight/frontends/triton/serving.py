"""The serving core shared by the `engine` and `llm` Triton models.

Engine thread -> (callback: append to a stream's pending list) -> sender thread -> Triton.
The sender merges every update that piled up for a stream into one response (adaptive
coalescing when IPC lags) and holds partial deltas until ``stream_interval`` tokens
accumulated. It also polls client cancellation a few times a second, off the token path.
One Triton request may carry B batch items x n sequences: the FINAL flag goes out once,
after the last of them finished. Once tritonserver is gone the sender thread stops without
touching Triton again (``ServerLink``, triton/health.py: such a call would never return and
could keep the stub from exiting); what it holds stays referenced, since dropping a sender
whose FINAL did not go out is itself a message to the server.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from inflight.engine.loop import EngineLoop
from inflight.frontends.triton.cancel_forward import StopSocket
from inflight.frontends.triton.convert import ItemRequest
from inflight.frontends.triton.health import ServerLink
from inflight.outputs import SequenceUpdate

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.1
POLL_ALL = 64  # live calls polled on every tick; more: a round-robin share (_poll_share)
POLL_CYCLE_S = 1.0  # ... so that each call is polled at least this often

# (stream, merged update, prompt ids) -> output tensors for one response
OutputBuilder = Callable[["ItemStream", SequenceUpdate], list[Any]]


class CallObserver(Protocol):
    """Told when a call opens and around the send of its FINAL response (the metrics use it
    to touch Triton only while a request is in flight: see triton/metrics.py)."""

    def call_opened(self) -> None: ...

    def call_closing(self) -> AbstractContextManager[None]: ...


class _NoObserver:
    def call_opened(self) -> None:
        return None

    def call_closing(self) -> AbstractContextManager[None]:
        return nullcontext()


@dataclass
class TritonCall:
    """One Triton request: its response sender and the sequences (batch x n) still running.

    The only door to the sender. Triton frees the request's response factory once the FINAL
    flag went out; touching the sender after that (``is_cancelled()`` included) makes
    tritonserver dereference freed memory (the SIGSEGV in
    ``TRITONBACKEND_ResponseFactoryIsCancelled``). So every send and every cancellation poll
    takes ``lock``, and once ``closed`` nothing reaches the sender again. Sends come from the
    sender thread and, for refused items, the execute thread.
    """

    sender: Any
    request: Any  # kept until FINAL: dropping it and the sender early frees the factory
    remaining: int  # sequences not yet finished, over all items
    cancelled: bool = False
    closed: bool = False  # the FINAL flag went out
    observer: CallObserver = field(default_factory=_NoObserver)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, pb: Any, response: Any | None, finishes: int = 0) -> bool:
        """Send ``response`` (None: no response unless it is the final one); ``finishes``
        sequences end with it. The FINAL flag rides on the send that ends the last
        sequence. Returns False when the call was already closed (nothing sent)."""
        with self.lock:
            if self.closed:
                return False
            self.remaining -= finishes
            final = finishes > 0 and self.remaining <= 0
            if response is None and not final:
                return True
            self.closed = final
            flags = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            if response is None:  # an empty response, never a bare send(flags=...): below
                response = pb.InferenceResponse(output_tensors=[])
            with self.observer.call_closing() if final else nullcontext():
                self.sender.send(response, flags=flags)
            return True

    def poll_cancelled(self) -> bool:
        """Whether the client cancelled; never asks Triton once the call is closed."""
        with self.lock:
            if self.cancelled or self.closed:
                return self.cancelled
            try:
                self.cancelled = bool(self.sender.is_cancelled())
            except Exception:  # noqa: BLE001 - older backends lack it on the sender
                log.debug("is_cancelled failed", exc_info=True)
            return self.cancelled


@dataclass
class ItemStream:
    """One batch item of a Triton call: an engine request with n sequences."""

    call: TritonCall
    item: ItemRequest
    engine_id: str
    key: int  # unique per model instance; the `engine_request_key` output and stop input
    client_id: str = ""
    finals: int = 0  # sequences whose final response went out
    prompt_ids: list[int] = field(default_factory=list)
    pending: dict[int, list[SequenceUpdate]] = field(default_factory=dict)
    sent_first: set[int] = field(default_factory=set)  # sequences that got a response already
    tokens_sent: dict[int, int] = field(default_factory=dict)


def merge(updates: list[SequenceUpdate]) -> SequenceUpdate:
    """Concatenate deltas of one sequence; the last update's final fields win."""
    if len(updates) == 1:
        return updates[0]
    last = updates[-1]
    lps = None
    if any(u.logprobs is not None for u in updates):
        lps = [lp for u in updates for lp in (u.logprobs or [])]
    return SequenceUpdate(
        last.request_id, last.index, [t for u in updates for t in u.token_ids],
        "".join(u.text for u in updates), lps, last.finished, last.finish_reason,
        last.stop_reason, last.error, last.cumulative_logprob, last.metrics,
        last.context_logits, last.generation_logits)


class ServerGone(Exception):
    """Raised in the sender thread when tritonserver is gone: it stops there."""


class ServingCore:
    def __init__(self, loop: EngineLoop, pb: Any, build_outputs: OutputBuilder,
                 stream_interval: int = 1,
                 on_final: Callable[[ItemStream, SequenceUpdate], None] | None = None,
                 observer: CallObserver | None = None,
                 server: ServerLink | None = None) -> None:
        """``server``: the stub's tritonserver (None: assumed alive, for tests)."""
        self.loop = loop
        self.server = server
        self.observer = observer or _NoObserver()
        self.stops: StopSocket | None = None  # the engine model's stop socket (quiet stops)
        self.pb = pb
        self.build_outputs = build_outputs
        self.stream_interval = max(1, stream_interval)
        self.on_final = on_final
        self._cv = threading.Condition()
        self._dirty: dict[str, ItemStream] = {}
        self._live: dict[str, ItemStream] = {}
        self._by_client_id: dict[str, list[str]] = {}
        self._ids = itertools.count()
        self._poll_next = 0  # round-robin position of the cancellation polls
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inflight-sender", daemon=True)
        self._thread.start()

    # ---- submission (Triton execute thread) ------------------------------------------------
    def new_call(self, request: Any, items: list[ItemRequest]) -> TritonCall:
        """A call for ``items`` (at least one); its FINAL goes out once all their sequences end."""
        assert items, "a call needs at least one item (batch_size refuses an empty batch)"
        self.observer.call_opened()
        return TritonCall(request.get_response_sender(), request,
                          remaining=sum(it.params.n for it in items), observer=self.observer)

    def fail_item(self, call: TritonCall, item: ItemRequest, err: Any) -> None:
        """An item the engine refused: its sequences count as finished with this error."""
        call.send(self.pb, self.pb.InferenceResponse(output_tensors=[], error=err),
                  finishes=item.params.n)

    def submit(self, call: TritonCall, item: ItemRequest, client_id: str) -> ItemStream:
        """Queue one item; raises the engine's validation errors (nothing is queued then)."""
        key = next(self._ids)
        engine_id = f"{client_id or 'req'}:{key}"
        stream = ItemStream(call, item, engine_id, key, client_id)
        with self._cv:
            self._live[engine_id] = stream
            self._by_client_id.setdefault(client_id, []).append(engine_id)
        try:
            stream.prompt_ids = self.loop.submit(engine_id, item.prompt, item.params,
                                                 lambda u, s=stream: self._on_update(s, u))
        except Exception:
            self._forget(stream, client_id)
            raise
        return stream

    def _forget(self, stream: ItemStream, client_id: str) -> None:
        with self._cv:
            self._live.pop(stream.engine_id, None)
            ids = self._by_client_id.get(client_id, [])
            if stream.engine_id in ids:
                ids.remove(stream.engine_id)
            if not ids:
                self._by_client_id.pop(client_id, None)

    def cancel_client_id(self, client_id: str, quiet: bool = False) -> int:
        """The `stop` input: abort every in-flight request with this client id; each ends
        with one CANCELLED response, or with a normal final (finish_reason "abort") when
        ``quiet`` (a front model that answers its own client: see cancel_key)."""
        with self._cv:
            ids = list(self._by_client_id.get(client_id, []))
            for eid in ids:
                self._live[eid].call.cancelled = not quiet
        for eid in ids:
            self.loop.abort(eid)
        return len(ids)

    def cancel_key(self, key: int) -> bool:
        """`stop` with `engine_request_key`: abort that one request, for a model in front of
        the engine that forwards its client's cancellation (postprocessing, bls) and answers
        that client itself. The request ends with a normal final response (finish_reason
        "abort"), not a CANCELLED error: a BLS caller never received that error (2.51).
        False if the request is no longer in flight."""
        with self._cv:
            stream = next((s for s in self._live.values() if s.key == key), None)
        if stream is not None:
            self.loop.abort(stream.engine_id)
        return stream is not None

    # ---- engine thread ---------------------------------------------------------------------
    def _on_update(self, stream: ItemStream, u: SequenceUpdate) -> None:
        with self._cv:
            stream.pending.setdefault(u.index, []).append(u)
            self._dirty[stream.engine_id] = stream
            self._cv.notify()

    # ---- sender thread ---------------------------------------------------------------------
    def _server_alive(self) -> None:
        """Before each call into Triton from the sender thread (a getppid, ServerLink)."""
        if self.server is not None and not self.server.alive():
            raise ServerGone

    def _run(self) -> None:
        try:
            self._serve()
        except ServerGone:  # nothing is dropped: _live keeps every unfinished call referenced
            log.warning("tritonserver is gone: the sender stops (%d requests unanswered)",
                        len(self._live))

    def _serve(self) -> None:
        next_poll = time.monotonic() + CANCEL_POLL_S
        while True:
            with self._cv:
                if not self._dirty and not self._stop:
                    self._cv.wait(timeout=max(next_poll - time.monotonic(), 0.0))
                if self._stop and not self._dirty:
                    return
                dirty, self._dirty = list(self._dirty.values()), {}
            for stream in dirty:
                self._flush(stream)
            if time.monotonic() >= next_poll:
                self._poll_cancelled()
                next_poll = time.monotonic() + CANCEL_POLL_S

    def _take(self, stream: ItemStream) -> list[SequenceUpdate]:
        """Merged updates ready to send; partial ones below stream_interval stay pending."""
        ready: list[SequenceUpdate] = []
        with self._cv:
            for idx, ups in list(stream.pending.items()):
                if not ups:
                    continue
                m = merge(ups)
                interval = self.stream_interval if stream.item.stream else None
                if m.finished or (interval is not None and len(m.token_ids) >= interval):
                    ready.append(m)
                    stream.pending[idx] = []
                else:  # below stream_interval, or non-streaming: keep accumulating
                    stream.pending[idx] = [m]
        return ready

    def _flush(self, stream: ItemStream) -> None:
        for m in self._take(stream):
            self._server_alive()  # on_final updates metrics, send() may too (call_closing)
            if m.finished and self.on_final is not None:
                self.on_final(stream, m)
            try:
                stream.call.send(self.pb, self._response(stream, m), finishes=int(m.finished))
            except Exception:  # noqa: BLE001 - client went away; the engine side is done
                log.debug("send failed for %s", stream.engine_id, exc_info=True)
            stream.sent_first.add(m.index)
            if m.finished:
                # a sequence's finished update is its last: the stream is done after n of them
                stream.finals += 1
                if stream.finals >= stream.item.params.n:
                    self._forget(stream, stream.client_id)

    def _response(self, stream: ItemStream, m: SequenceUpdate) -> Any | None:
        """The response for one merged update (None: nothing to send yet)."""
        pb = self.pb
        if m.finished and m.finish_reason == "abort" and stream.call.cancelled:
            err = pb.TritonError("request cancelled", pb.TritonError.CANCELLED)
            return pb.InferenceResponse(output_tensors=[], error=err)
        if m.finished and m.finish_reason == "error":
            err = pb.TritonError(m.error or "engine error", pb.TritonError.INTERNAL)
            return pb.InferenceResponse(output_tensors=[], error=err)
        if not stream.item.stream and not m.finished:
            return None
        if m.finished and m.finish_reason == "abort" and not m.token_ids:
            # nothing to say but FINAL (a quiet stop: the caller answers its client). No
            # zero-size tensors: a BLS caller's 2.51 stub corrupted its heap on them
            # ("malloc(): unaligned fastbin chunk detected" under the cancel storm).
            return None
        return pb.InferenceResponse(output_tensors=self.build_outputs(stream, m))

    def _poll_cancelled(self) -> None:
        for stop in self.stops.drain() if self.stops is not None else ():
            if isinstance(stop, int):
                self.cancel_key(stop)
            else:
                self.cancel_client_id(stop, quiet=True)
        with self._cv:
            streams = list(self._live.values())
        calls: dict[int, list[ItemStream]] = {}  # one poll per call, whatever its item count
        for s in streams:
            calls.setdefault(id(s.call), []).append(s)
        groups = list(calls.values())
        for group in self._poll_share(groups):
            call = group[0].call
            self._server_alive()
            was = call.cancelled
            if call.poll_cancelled() and not was:
                for s in group:
                    self.loop.abort(s.engine_id)

    def _poll_share(self, groups: list[list[ItemStream]]) -> list[list[ItemStream]]:
        """The calls to poll this tick. Each poll is an IPC round trip to tritonserver (8% of
        the stub's samples with ~1000 live calls polled every tick, issue 13): up to
        POLL_ALL calls are all polled every tick; beyond that a round-robin share, so every
        call is still polled at least once per POLL_CYCLE_S."""
        n = len(groups)
        if n <= POLL_ALL:
            return groups
        k = max(POLL_ALL, -(-n * CANCEL_POLL_S // POLL_CYCLE_S))
        start = self._poll_next % n
        self._poll_next = start + int(k)
        return (groups[start:] + groups[:start])[:int(k)]

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(5)
