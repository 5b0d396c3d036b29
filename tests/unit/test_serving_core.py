"""The Triton serving core without a server: a fake ``pb`` whose response sender fails the
way tritonserver does when its response factory is touched after the FINAL flag (the
SIGSEGV in ``TRITONBACKEND_ResponseFactoryIsCancelled``), and a fake engine loop."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.convert import ItemRequest
from inflight.frontends.triton.serving import ServingCore, TritonCall
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams

FINAL = 1


class FakePb:
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL

    class TritonError:
        CANCELLED = "CANCELLED"
        INTERNAL = "INTERNAL"

        def __init__(self, msg: str, code: str = "INTERNAL") -> None:
            self.msg, self.code = msg, code

    class InferenceResponse:
        def __init__(self, output_tensors: list[Any], error: Any = None) -> None:
            self.output_tensors, self.error = output_tensors, error


class FakeSender:
    """Records sends; any use after FINAL is a use-after-free in real Triton."""

    def __init__(self) -> None:
        self.responses: list[tuple[Any, int]] = []
        self.violations: list[str] = []
        self.cancel = False
        self.polls = 0
        self._final = False
        self._busy = threading.Lock()

    def _enter(self, what: str) -> None:
        if self._final:
            self.violations.append(f"{what} after FINAL")
        if not self._busy.acquire(blocking=False):
            self.violations.append(f"{what} concurrently with another call")
            return
        time.sleep(0)  # widen the window for a racing thread
        self._busy.release()

    def send(self, response: Any = None, flags: int = 0) -> None:
        self._enter("send")
        self.responses.append((response, flags))
        self._final = self._final or bool(flags & FINAL)

    def is_cancelled(self) -> bool:
        self._enter("is_cancelled")
        self.polls += 1
        return self.cancel

    @property
    def finals(self) -> int:
        return sum(1 for _, f in self.responses if f & FINAL)


class FakeRequest:
    def __init__(self) -> None:
        self.sender = FakeSender()

    def get_response_sender(self) -> FakeSender:
        return self.sender


class FakeLoop:
    """submit() refuses prompts starting with 'bad'; abort() finishes every open sequence."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[SequenceUpdate], None]] = {}
        self.open: dict[str, set[int]] = {}  # engine id -> sequences not finished
        self.aborted: list[str] = []
        self.lock = threading.Lock()

    def submit(self, engine_id: str, prompt: Any, params: SamplingParams,
               callback: Callable[[SequenceUpdate], None]) -> list[int]:
        if str(prompt).startswith("bad"):
            raise InvalidRequestError("max_tokens", "must be in [1, 512], got 900")
        with self.lock:
            self.callbacks[engine_id] = callback
            self.open[engine_id] = set(range(params.n))
        return [1, 2, 3]

    def emit(self, engine_id: str, index: int, finished: bool, reason: str = "length") -> None:
        with self.lock:
            if index not in self.open.get(engine_id, ()):
                return
            if finished:
                self.open[engine_id].discard(index)
            cb = self.callbacks[engine_id]
        cb(SequenceUpdate(engine_id, index, [7], "x", finished=finished,
                          finish_reason=reason if finished else None))

    def live(self) -> list[str]:
        with self.lock:
            return [eid for eid, idx in self.open.items() if idx]

    def abort(self, engine_id: str) -> None:
        with self.lock:
            self.aborted.append(engine_id)
            indices = sorted(self.open.get(engine_id, ()))
        for i in indices:
            self.emit(engine_id, i, finished=True, reason="abort")


def make_core(loop: FakeLoop, stream_interval: int = 1) -> ServingCore:
    return ServingCore(loop, FakePb(), lambda s, m: [m.text], stream_interval)  # type: ignore[arg-type]


def item(prompt: str, n: int = 1, stream: bool = True) -> ItemRequest:
    return ItemRequest(prompt=prompt, params=SamplingParams(max_tokens=4, n=n), stream=stream)


def submit(core: ServingCore, request: FakeRequest, items: list[ItemRequest]) -> TritonCall:
    """What EngineModel.submit_items does."""
    call = core.new_call(request, items)
    for it in items:
        try:
            core.submit(call, it, "client")
        except InvalidRequestError as e:
            core.fail_item(call, it, FakePb.TritonError(str(e)))
    return call


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_call_sends_nothing_after_final() -> None:
    req = FakeRequest()
    call = TritonCall(req.sender, req, remaining=2)
    assert call.send(FakePb, "a", finishes=1)
    assert call.send(FakePb, "b", finishes=1)  # the last sequence: FINAL
    assert not call.send(FakePb, "late", finishes=0)
    assert not call.poll_cancelled()
    assert [f for _, f in req.sender.responses] == [0, FINAL]
    assert req.sender.polls == 0 and req.sender.violations == []


def test_refused_item_of_a_batch_never_polled_after_its_final() -> None:
    loop = FakeLoop()
    core = make_core(loop)
    try:
        req = FakeRequest()
        submit(core, req, [item("bad 900")])
        core._poll_cancelled()
        assert req.sender.finals == 1 and req.sender.violations == []
        assert req.sender.responses[0][0].error.msg.startswith("max_tokens")
        assert core._live == {} and core._by_client_id == {}
    finally:
        core.shutdown()


@pytest.mark.parametrize("stream", [True, False])
def test_n_sequences_forget_the_stream_once_all_finished(stream: bool) -> None:
    """n=2: sequence 0 finishes while sequence 1 still has an unsent partial update."""
    loop = FakeLoop()
    core = make_core(loop, stream_interval=4)
    try:
        req = FakeRequest()
        submit(core, req, [item("p", n=2, stream=stream)])
        (eid,) = loop.live()
        loop.emit(eid, 1, finished=False)
        loop.emit(eid, 0, finished=True)
        wait_until(lambda: len(req.sender.responses) >= 1)
        loop.emit(eid, 1, finished=True)
        wait_until(lambda: req.sender.finals == 1)
        wait_until(lambda: core._live == {})
        core._poll_cancelled()
        assert req.sender.violations == [] and req.sender.polls == 0
    finally:
        core.shutdown()


def test_client_cancel_aborts_every_item_once_and_ends_with_one_cancelled_final() -> None:
    loop = FakeLoop()
    core = make_core(loop)
    try:
        req = FakeRequest()
        submit(core, req, [item("a"), item("b")])
        req.sender.cancel = True
        core._poll_cancelled()
        core._poll_cancelled()
        wait_until(lambda: req.sender.finals == 1)
        assert len(loop.aborted) == 2 and set(loop.aborted) == set(loop.callbacks)
        errors = [r.error for r, _ in req.sender.responses]
        assert all(e is not None and e.code == "CANCELLED" for e in errors)
        assert req.sender.violations == []
    finally:
        core.shutdown()


def test_storm_of_finishes_refusals_and_cancels_never_touches_a_closed_sender() -> None:
    """Three threads as in the stub: execute (submits, refusals), engine (updates), and the
    sender thread polling cancellation; clients cancel at random moments."""
    loop = FakeLoop()
    core = make_core(loop)
    rng = random.Random(0)
    requests: list[FakeRequest] = []
    try:
        for i in range(300):
            req = FakeRequest()
            requests.append(req)
            items = [item("bad" if rng.random() < 0.2 else f"p{i}", n=rng.choice([1, 2]))
                     for _ in range(rng.choice([1, 2]))]
            submit(core, req, items)
            if rng.random() < 0.3:
                req.sender.cancel = True
            live = loop.live()
            for eid in rng.sample(live, k=min(len(live), 3)):
                for idx in (0, 1):
                    loop.emit(eid, idx, finished=rng.random() < 0.5)
            if i % 10 == 0:
                core._poll_cancelled()
        # end everything still running
        for eid in loop.live():
            loop.abort(eid)
        wait_until(lambda: all(r.sender.finals == 1 for r in requests))
        wait_until(lambda: core._live == {})
        core._poll_cancelled()
        assert [v for r in requests for v in r.sender.violations] == []
    finally:
        core.shutdown()


class GoneSwitch:
    """A ServerLink whose answer the test flips."""

    def __init__(self) -> None:
        self.up = True

    def alive(self, fresh: bool = False) -> bool:
        return self.up


class HangingSender(FakeSender):
    """Once the server is gone every call blocks for good, as in the 2.51 stub (no timeout)."""

    def __init__(self, server: GoneSwitch) -> None:
        super().__init__()
        self.server = server
        self.after_gone: list[str] = []
        self.forever = threading.Event()

    def send(self, response: Any = None, flags: int = 0) -> None:
        if not self.server.up:
            self.after_gone.append("send")
            self.forever.wait()
        super().send(response, flags)

    def is_cancelled(self) -> bool:
        if not self.server.up:
            self.after_gone.append("is_cancelled")
            self.forever.wait()
        return super().is_cancelled()


def test_sender_stops_without_touching_triton_once_the_server_is_gone() -> None:
    """The engine process ends when tritonserver does and every live request gets a final
    error; sending it (or polling, or the metrics of on_final) would wait forever for the
    dead server. The sender thread stops instead, keeping the unfinished call referenced
    (dropping a sender whose FINAL did not go out is itself a message to the server)."""
    loop, server = FakeLoop(), GoneSwitch()
    finals_seen: list[str] = []
    core = ServingCore(loop, FakePb(), lambda s, m: [m.text], 1,  # type: ignore[arg-type]
                       on_final=lambda s, m: finals_seen.append(s.engine_id),
                       server=server)  # type: ignore[arg-type]
    req = FakeRequest()
    req.sender = HangingSender(server)
    try:
        submit(core, req, [item("p")])
        (eid,) = loop.live()
        loop.emit(eid, 0, finished=False)
        wait_until(lambda: len(req.sender.responses) == 1)
        core._poll_cancelled()
        assert req.sender.polls == 1
        server.up = False
        loop.emit(eid, 0, finished=True, reason="error")  # what EngineClient._die delivers
        core._thread.join(5)
        assert not core._thread.is_alive(), "the sender thread is stuck or still running"
        assert req.sender.after_gone == [] and finals_seen == []
        assert list(core._live.values())[0].call.sender is req.sender  # still referenced
    finally:
        req.sender.forever.set()
        core.shutdown()
